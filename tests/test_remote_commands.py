"""Every command that reads shards/NAME takes its URL too (issue 11, item 1), checked over
HTTP from nginx on 127.0.0.1 against the same dataset on disk:

    sample-stats URL          the same table, and not one shard fetched (index files only)
    stats URL                 the same numbers, index files only
    extract --data URL        the same features
    evaluate MODEL --data URL the same scores, the URL recorded as given
"""
import csv
import json

import numpy as np
import pytest
import torch

from conftest import make_image_folder, run_cli
from lt_dist.cli import main
from lt_dist.engine.checkpoint import save_best_model
from lt_dist.models.resnet import build_model
from lt_dist.stage2.store import load_features
from servers import nginx_binary, nginx_serving
from test_remote_data import cache, serve  # noqa: F401 (cache: an autouse fixture, a node cache per test)

needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed: `make test` installs "
                                 "Debian's package nginx as root (apt-get install nginx)")
COUNTS = [9, 7, 5, 3]  # less --val-per-class 1: train 8, 6, 4, 2 in --shard-count 2 shards (10), val 4
TEST_COUNTS = [2, 2, 2, 2]  # 4 test shards
NAMES = ["ant", "bee", "cat", "dog"]
INDEX_FILES = {"ids.txt", "shards.parquet", "dataset.json", "manifest.parquet"}

pytestmark = needs_nginx


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """shards/ds with train, val and test on disk."""
    root = tmp_path_factory.mktemp("remote_commands")
    images = make_image_folder(root / "images", COUNTS, size=(20, 20))
    test_images = make_image_folder(root / "test_images", TEST_COUNTS, seed=1, size=(20, 20))
    names = ",".join(NAMES)
    assert main(["pack", str(images), "--out", str(root / "ds"), "--shard-count", "2", "--val-per-class", "1",
                 "--class-names", names, "--no-progress"]) == 0
    assert main(["pack", str(test_images), "--out", str(root / "ds"), "--split", "test", "--shard-count", "2",
                 "--class-names", names, "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """nginx serving a fresh folder; each test copies the dataset to www/<its name>/ds."""
    with nginx_serving(tmp_path_factory.mktemp("nginx")) as server:
        yield server


def gets(server, prefix: str) -> list[str]:
    """Paths of the successful GETs under prefix, in order."""
    return [path for method, path, status in server.requests()
            if method == "GET" and path.startswith(prefix) and status in (200, 206)]


def shard_gets(server, prefix: str) -> list[str]:
    return [path for path in gets(server, prefix) if path.endswith(".tar")]


def index_gets(server, prefix: str) -> set[str]:
    """(split, file) of every index file fetched under prefix."""
    return {tuple(path.rsplit("/", 2)[-2:]) for path in gets(server, prefix) if path.rsplit("/", 1)[-1] in INDEX_FILES}


@pytest.mark.parametrize("sampler", ["instance", "class"])
def test_sample_stats_over_http_fetches_no_shard_and_prints_the_local_table(packed, www, cache, sampler, capsys):
    url = serve(packed, www, f"sstats-{sampler}")
    args = ["--sampler", sampler, "--draws", "3000", "--seed", "5"]
    status, local, err = run_cli(["sample-stats", packed / "ds", *args], capsys)
    assert status == 0, err
    status, remote, err = run_cli(["sample-stats", url, *args], capsys)
    assert status == 0, err
    assert remote == local and "3,000 draws" in remote
    prefix = f"/sstats-{sampler}/"
    assert ("train", "manifest.parquet") in index_gets(www, prefix)  # the URL was read...
    assert shard_gets(www, prefix) == []  # ...and no shard of it
    assert not list(cache.rglob("*.tar"))


def test_stats_over_http_prints_the_local_numbers_and_fetches_no_shard(packed, www, tmp_path, capsys):
    url = serve(packed, www, "stats")
    for tail in ("", "/val"):  # the dataset (train, val, test found by trying) and one split
        for fmt in (["--json"], []):
            status, local, err = run_cli(["stats", f"{packed / 'ds'}{tail}", *fmt], capsys)
            assert status == 0, err
            status, remote, err = run_cli(["stats", f"{url}{tail}", *fmt, "--cache-dir", tmp_path / "given"], capsys)
            assert status == 0, err
            assert remote == local
    numbers = json.loads(run_cli(["stats", url, "--json"], capsys)[1])
    assert list(numbers) == ["train", "val", "test"] and numbers["train"]["images"] == sum(COUNTS) - len(COUNTS)
    assert index_gets(www, "/stats/") >= {(split, "manifest.parquet") for split in ("train", "val", "test")}
    assert shard_gets(www, "/stats/") == []
    assert len(list((tmp_path / "given").rglob("manifest.parquet"))) == 3  # --cache-dir was taken
    assert not list((tmp_path / "given").rglob("*.tar"))


@pytest.fixture(scope="module")
def run_dir(packed):
    """best_model.pt of a seeded, untrained small ResNet-10 for the packed classes."""
    torch.manual_seed(0)
    model = build_model("resnet10", len(COUNTS), small_input=True)
    run = packed / "run"
    run.mkdir()
    save_best_model(str(run), model, {"arch": "resnet10", "num_classes": len(COUNTS), "small_input": True,
                                      "epoch": 0, "train_counts": [c - 1 for c in COUNTS], "class_names": NAMES,
                                      "eval_preset": "small_eval", "image_size": 16})
    return run


EXTRACT = ["--decoder", "torchvision", "--workers", "0", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def local_features(packed, run_dir):
    out = packed / "features_local"
    assert main(["extract", "--ckpt", str(run_dir), "--data", str(packed / "ds"), "--out", str(out), *EXTRACT]) == 0
    return out


def test_extract_over_http_writes_the_local_features(packed, www, run_dir, local_features, tmp_path):
    url = serve(packed, www, "extract")
    out = tmp_path / "features_remote"
    assert main(["extract", "--ckpt", str(run_dir), "--data", url, "--out", str(out), *EXTRACT,
                 "--cache-dir", str(tmp_path / "given")]) == 0
    local, local_classifier = load_features(str(local_features))
    remote, remote_classifier = load_features(str(out))
    assert list(remote) == list(local) == ["train", "val", "test"]
    for split in local:
        assert remote[split].labels.tolist() == local[split].labels.tolist(), split
        assert np.array_equal(remote[split].features, local[split].features), split
    assert np.array_equal(remote_classifier["weight"], local_classifier["weight"])
    assert json.loads((out / "features.json").read_text())["data"] == url
    fetched = shard_gets(www, "/extract/")
    assert len(fetched) == len(set(fetched)) == 10 + 4 + 4  # every shard of every split, once
    assert len(list((tmp_path / "given").rglob("*.tar"))) == 18  # through the --cache-dir given


@pytest.fixture(scope="module")
def exported(packed, run_dir, local_features):
    """model/ written by `lt_dist export`: the NCM head fitted by the search's own code (the untrained
    backbone's own classifier would call every image one class: nothing to tell two reads apart)."""
    from lt_dist.report.results import write_results
    from lt_dist.stage2.search import run_trial

    results = packed / "results"
    results.mkdir()
    trials = [run_trial(str(local_features), "ncm", {"metric": "l2"}, 0, "val")]
    write_results(str(results), str(local_features), trials, 0, "val")
    out = packed / "model"
    assert main(["export", "--run", str(run_dir), "--results", str(results), "--method", "ncm",
                 "--out", str(out)]) == 0
    return out


def scores_text(numbers: dict) -> str:
    """evaluate's JSON less "data", as text: a group without classes scores NaN, which equals nothing."""
    return json.dumps({key: value for key, value in numbers.items() if key != "data"}, sort_keys=True)


def test_evaluate_over_http_gives_the_local_scores(packed, www, exported, tmp_path, capsys):
    url = serve(packed, www, "evaluate")
    common = ["--decoder", "torchvision", "--workers", "0", "--batch-size", "3"]
    results = {}
    for where, data in (("local", packed / "ds"), ("remote", url)):
        out = tmp_path / f"{where}.csv"
        flags = ["--cache-dir", tmp_path / "given"] if where == "remote" else []
        status, stdout, err = run_cli(["evaluate", exported, "--data", data, "--out", out, *common, *flags], capsys)
        assert status == 0, err
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
        results[where] = (stdout.splitlines()[:2], rows, json.loads((tmp_path / f"{where}.json").read_text()))
    (local_table, local_rows, local_scores), (remote_table, remote_rows, remote_scores) = results.values()
    assert remote_table == local_table and remote_rows == local_rows
    assert scores_text(remote_scores) == scores_text(local_scores)
    assert len({row["accuracy"] for row in local_rows}) > 1  # predictions that depend on the images read
    assert remote_scores["split"] == "test" and [r["class_name"] for r in remote_rows] == NAMES
    assert remote_scores["data"] == url and local_scores["data"] == str(packed / "ds")  # a URL is kept as given
    fetched = shard_gets(www, "/evaluate/")
    assert len(fetched) == len(set(fetched)) == 4  # the 4 test shards, once each
    assert all(path.startswith("/evaluate/ds/test/") for path in fetched)
    assert len(list((tmp_path / "given").rglob("*.tar"))) == 4  # through the --cache-dir given
