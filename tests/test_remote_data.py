"""Datasets by URL end to end: nginx (HTTP, Range) and moto's S3 server on 127.0.0.1.

verify over HTTP and S3, a flipped byte and a missing shard named, a server killed
and restarted mid-epoch, a second epoch without requests, resume from a URL, and a
pack to s3:// trained from for one epoch."""
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from conftest import REPO, make_image_folder
from lt_dist.cli import main
from lt_dist.data.loader import BalancedLoader, LoaderConfig
from lt_dist.data.sampler import SamplerConfig
from lt_dist.dist import World
from lt_dist.errors import UserInputError
from lt_dist.shards.manifest import resolve_split
from servers import MotoS3, Nginx, nginx_binary, nginx_serving, publish

needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed: `make test` installs "
                                 "Debian's package nginx as root (apt-get install nginx)")
COUNTS = [8, 6, 4, 2]  # --shard-count 2: 4 + 3 + 2 + 1 = 10 shards


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    images = make_image_folder(root / "images", COUNTS, size=(24, 20))
    assert main(["pack", str(images), "--out", str(root / "ds"), "--shard-count", "2", "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def www(packed, tmp_path_factory):
    """nginx serving a fresh folder; tests copy the dataset to it with serve()."""
    if nginx_binary() is None:
        yield None
        return
    with nginx_serving(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_DIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_DIST_RETRIES", "8")
    return tmp_path / "cache"


def serve(packed, server, name: str) -> str:
    """The packed dataset under the server's root as NAME/ds; its URL."""
    return publish(packed / "ds", server, name)


def shard_gets(server, prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method, path, _ in server.requests():
        if method == "GET" and path.startswith(prefix) and path.endswith(".tar"):
            counts[path] = counts.get(path, 0) + 1
    return counts


def epoch(split_dir, workers=2, batch=2, strategy="instance", loader=None):
    loader = loader or BalancedLoader(LoaderConfig(split_dir, batch, None, SamplerConfig(strategy, seed=3),
                                                   "bytes", workers), World(0, 1))
    return [(list(data), labels) for data, labels in loader]


def flat(batches):
    return [item for data, _ in batches for item in data], torch.cat([labels for _, labels in batches]).tolist()


@needs_nginx
def test_verify_over_http_fetches_each_shard_once_then_epochs_make_no_requests(packed, www, capsys):
    url = serve(packed, www, "once")
    assert main(["verify", url]) == 0
    assert "once/ds/train: 10 shards, 20 samples: OK" in capsys.readouterr().out
    gets = shard_gets(www, "/once/")
    assert len(gets) == 10 and set(gets.values()) == {1}
    split = resolve_split(url, "train")
    before = len(www.requests())
    remote = [epoch(split) for _ in range(2)]
    assert len(www.requests()) == before  # the cache holds the dataset: no request at all
    local = [epoch(str(packed / "ds" / "train")) for _ in range(2)]
    assert [flat(e) for e in remote] == [flat(e) for e in local]


@needs_nginx
def test_flipped_byte_in_a_remote_shard_is_caught(packed, www, capsys):
    url = serve(packed, www, "flip")
    shard = www.root / "flip" / "ds" / "train" / "cls00001-00000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", url]) == 1
    out = capsys.readouterr().out
    assert "cls00001-00000.tar: " in out and "sha256 does not match shards.parquet" in out
    assert shard_gets(www, "/flip/")["/flip/ds/train/cls00001-00000.tar"] == 2  # fetched once more, then named


@needs_nginx
def test_missing_remote_shard_gives_the_url(packed, www, capsys):
    url = serve(packed, www, "gone")
    (www.root / "gone" / "ds" / "train" / "cls00002-00001.tar").unlink()
    assert main(["verify", url]) == 1
    assert f"cls00002-00001.tar: shard file is missing ({url}/train/cls00002-00001.tar not found)" \
        in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=r"gone/ds/train/cls00002-00001\.tar: not found \(404\)"):
        epoch(resolve_split(url, "train"), workers=0)


@needs_nginx
def test_access_denied_stops_at_once_naming_the_url(packed, www, capsys):
    """403 on the whole dataset: one line and exit 2; 401 on a shard: no retry, the shard's URL."""
    denied = serve(packed, www, "denied")
    assert main(["verify", denied]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{denied}/manifest.parquet: access denied (HTTP 403)" in err[0], err
    private = serve(packed, www, "private")  # index files readable, every .tar asks for a password
    with pytest.raises(PermissionError, match=r"private/ds/train/cls\d+-\d+\.tar: access denied \(HTTP 401\)"):
        epoch(resolve_split(private, "train"), workers=0)
    assert set(shard_gets(www, "/private/").values()) == {1}  # stopped at once: no retry of a 401


@needs_nginx
def test_a_cache_smaller_than_the_look_ahead_window_is_refused_up_front_naming_the_size_that_works(
        packed, www, monkeypatch):
    url = serve(packed, www, "small")
    split = resolve_split(url, "train")
    monkeypatch.setenv("LT_DIST_PREFETCH", "2")
    monkeypatch.setenv("LT_DIST_CACHE_LIMIT", "3000")
    with pytest.raises(UserInputError, match="is smaller than one look-ahead window") as refused:
        epoch(split)
    assert shard_gets(www, "/small/") == {}  # refused before any download
    needed = int(re.search(r"use --cache-limit (\d+) or more", str(refused.value)).group(1))
    monkeypatch.setenv("LT_DIST_CACHE_LIMIT", str(needed))  # the size it names is enough
    assert flat(epoch(split)) == flat(epoch(str(packed / "ds" / "train")))


def test_a_server_that_accepts_and_never_answers_is_a_retried_timeout_not_a_hang(monkeypatch, capsys):
    import socket
    import time

    monkeypatch.setenv("LT_DIST_STALL_SECONDS", "1")
    monkeypatch.setenv("LT_DIST_RETRIES", "2")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ds"
        started = time.monotonic()
        assert main(["verify", url]) == 2
        assert time.monotonic() - started < 60  # aiohttp's own default would wait 5 minutes per request
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed after 2 tries" in err[0] and "127.0.0.1" in err[0], err


@needs_nginx
def test_server_killed_and_restarted_mid_epoch_costs_time_not_the_run(packed, www, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LT_DIST_PREFETCH", "1")
    own = Nginx(www.root, tmp_path / "nginx-own").start()  # the shared server keeps running
    url = serve(packed, own, "outage").replace(www.url, own.url)
    restarted = threading.Event()

    def restart():
        own.start()
        restarted.set()
    try:
        loader = BalancedLoader(LoaderConfig(resolve_split(url, "train"), 2, None, SamplerConfig("instance", seed=3),
                                             "bytes", 0), World(0, 1))
        batches = iter(loader)
        first = next(batches)
        own.stop()  # at most the shards of batches 0 and 1 are in the cache
        timer = threading.Timer(1.0, restart)
        with caplog.at_level(logging.WARNING, logger="lt_dist.storage"):
            timer.start()
            rest = list(batches)
        timer.join()
        assert restarted.is_set()
        assert any("retrying" in record.message for record in caplog.records)
        assert flat([(list(first[0]), first[1]), *[(list(d), l) for d, l in rest]]) == \
            flat(epoch(str(packed / "ds" / "train"), workers=0))
    finally:
        own.stop()


@needs_nginx
def test_resume_from_a_url_yields_what_an_uninterrupted_epoch_would(packed, www):
    url = serve(packed, www, "resume")
    split = resolve_split(url, "train")

    def make():
        return BalancedLoader(LoaderConfig(split, 2, None, SamplerConfig("class", seed=9), "bytes", 2), World(0, 1))
    whole = epoch(split, loader=make())
    first = make()
    head = []
    for data, labels in first:
        head.append((list(data), labels))
        if len(head) == 3:
            break
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert flat(head + epoch(split, loader=resumed)) == flat(whole)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


def test_pack_to_s3_then_verify_and_train_one_epoch_from_it(s3, monkeypatch, tmp_path, capsys):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="lt-pack")
    images = make_image_folder(tmp_path / "images", [12, 6, 4], size=(20, 20))
    test_images = make_image_folder(tmp_path / "test_images", [2, 2, 2], seed=4, size=(20, 20))
    url = "s3://lt-pack/sets/tiny"
    assert main(["pack", str(images), "--out", url, "--val-per-class", "1", "--no-progress"]) == 0
    assert main(["pack", str(test_images), "--out", url, "--split", "test", "--no-progress"]) == 0
    puts = [path for method, path, _ in s3.requests() if method == "PUT" and "/sets/tiny/train/" in path]
    assert puts[-1].endswith("/train/manifest.parquet") and len(puts) == 3 + 4  # 3 shards, then the index
    capsys.readouterr()
    assert main(["verify", url]) == 0
    out = capsys.readouterr().out
    assert all(f"{url}/{split}: " in out and out.count("OK") == 3 for split in ("train", "val", "test"))
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_batch_size": 8, "optimizer": {"type": "SGD", "params": {"lr": 0.05}},
                                   "zero_optimization": {"stage": 0}, "steps_per_print": 10**6}))
    run = tmp_path / "run"
    command = [sys.executable, str(REPO / "launch" / "train_repr.py"), "--ds_config", str(ds_json),
               "--data", url, "--out", str(run), "--arch", "resnet10", "--small-input", "--train-preset",
               "small_train", "--eval-preset", "small_eval", "--image-size", "16", "--decoder", "torchvision",
               "--epochs", "1", "--workers", "1", "--eval-batch-size", "8", "--cache-dir", str(tmp_path / "c2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (run / "test_metrics.json").exists()
    assert any((tmp_path / "c2").rglob("cls00000-00000.tar"))  # the shards came through the given cache


@needs_nginx
def test_two_loader_processes_on_one_node_download_each_shard_once(packed, www, cache):
    url = serve(packed, www, "twice")
    script = textwrap.dedent(f"""
        import sys
        from lt_dist.data.loader import BalancedLoader, LoaderConfig
        from lt_dist.data.sampler import SamplerConfig
        from lt_dist.dist import World
        from lt_dist.shards.manifest import resolve_split
        split = resolve_split({url!r}, "train")
        sys.stdin.readline()  # both start their epoch together
        loader = BalancedLoader(LoaderConfig(split, 2, None, SamplerConfig("instance", seed=int(sys.argv[1])),
                                             "bytes", 2), World(0, 1))
        print(sum(len(data) for data, _ in loader))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the same LT_DIST_CACHE: one node
    procs = [subprocess.Popen([sys.executable, "-c", script, str(seed)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for seed in (1, 2)]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    samples = [int(proc.communicate(timeout=300)[0]) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0] and samples == [20, 20]
    gets = shard_gets(www, "/twice/")
    assert len(gets) == 10 and set(gets.values()) == {1}  # 2 processes x 2 workers, one download per shard
