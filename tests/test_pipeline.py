"""The whole pipeline in miniature, as `make demo` runs it: pack -> deepspeed -> extract -> Ray -> report."""
import csv
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import browser
from conftest import REPO, free_port, write_idx

BIN = Path(sys.executable).parent


def synthetic_idx(folder: Path) -> Path:
    """A balanced 6-class 28x28 source whose classes differ by a bright block's position."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix, per_class in (("train", 160), ("t10k", 12)):
        labels = np.repeat(np.arange(6), per_class)
        images = rng.integers(0, 60, (len(labels), 28, 28))
        for i, label in enumerate(labels):
            row, col = divmod(int(label), 3)
            images[i, 4 + 12 * row: 12 + 12 * row, 2 + 9 * col: 9 + 9 * col] += 180
        write_idx(folder, prefix, np.clip(images, 0, 255), labels, gz=True)
    return folder


def run(*command, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    result = subprocess.run([str(c) for c in command], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def train_extract_search(root: Path, shards: Path) -> dict:
    """stage 1 (2 ranks under deepspeed, DALI), extract, the Ray search and the report, into root."""
    run_dir, features, results = root / "run", root / "features", root / "results"
    ds_json = root / "ds.json"
    ds_json.write_text(json.dumps({"train_batch_size": 32, "optimizer": {"type": "SGD", "params": {
        "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}}, "bf16": {"enabled": True},
        "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True}))
    run(BIN / "deepspeed", "--num_gpus", 2, "--master_port", free_port(), REPO / "launch" / "train_repr.py",
        "--ds_config", ds_json, "--data", shards, "--out", run_dir, "--arch", "resnet10", "--small-input",
        "--train-preset", "small_train", "--eval-preset", "small_eval", "--image-size", 28, "--epochs", 1,
        "--decoder", "dali", "--workers", 0)
    run(BIN / "lt_dist", "extract", "--ckpt", run_dir, "--data", shards, "--out", features, "--workers", 0)
    run(sys.executable, REPO / "tune" / "search_stage2.py", "--features", features, "--out", results,
        "--num-cpus", 2, "--taus", "0,1,2", "--lrs", "0.2")
    run(BIN / "lt_dist", "report", results)
    return {"shards": shards, "run": run_dir, "features": features, "results": results}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    source = synthetic_idx(root / "idx")
    shards = root / "shards"
    run(BIN / "lt_dist", "pack", "--idx", source, "--out", shards, "--profile", "exp", "--imbalance", 15,
        "--max-per-class", 150, "--val-per-class", 5, "--no-progress")
    return train_extract_search(root, shards)


def test_every_artefact_exists(pipeline):
    expected = {"shards": ["train/manifest.parquet", "val/manifest.parquet", "test/manifest.parquet"],
                "run": ["best_model.pt", "config.json", "log.jsonl", "test_metrics.json", "val_per_class.csv",
                        "checkpoints/latest"],
                "features": ["train.arrow", "val.arrow", "test.arrow", "classifier.arrow", "features.json"],
                "results": ["trials.parquet", "best.json", "table.md", "table.csv", "per_class.csv",
                            "tau_curve.png", "weight_norms.png", "class_counts.png", "accuracy_vs_size.png",
                            "table.png", "training_curves.png", "report.html", "search.json"]}
    for folder, names in expected.items():
        for name in names:
            assert (pipeline[folder] / name).exists(), f"{folder}/{name}"


def test_table_has_every_method_with_numbers_in_range(pipeline):
    with open(pipeline["results"] / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["method", "many", "medium", "few", "all"]
    assert {r["method"] for r in rows} == {"joint", "ncm", "crt", "tau_norm", "lws", "learned_tau", "cosine"}
    for row in rows:
        for key in ("many", "medium", "few", "all"):
            assert 0 <= float(row[key]) <= 100, (row["method"], key, row[key])
    taus = [t for t in json.loads((pipeline["results"] / "best.json").read_text()) if t == "tau_norm"]
    assert taus


@pytest.mark.skipif(browser.chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_report_opens_in_chromium_without_console_errors(pipeline, tmp_path, tmp_path_factory):
    page = pipeline["results"] / "report.html"
    text = page.read_text()
    assert "<table>" in text and text.count("data:image/png;base64,") >= 4
    # kept for a look after the run: under pytest's --basetemp (default /tmp/pytest-of-USER/pytest-N)
    screenshot = tmp_path_factory.getbasetemp() / "report.png"
    messages = browser.open_page(str(page), str(screenshot))
    assert messages == []
    assert screenshot.stat().st_size > 10_000
    # the check itself can fail: a page with a script error is caught
    probe = tmp_path / "probe.html"
    probe.write_text("<html><body><script>missingFunction();</script></body></html>")
    assert any("missingFunction" in m for m in browser.open_page(str(probe), str(tmp_path / "probe.png")))


def test_report_says_what_was_run(pipeline):
    """Curves from the run's log.jsonl, the provenance of every step, and the per-class table by name."""
    text = (pipeline["results"] / "report.html").read_text()
    assert "Stage 1: training loss and val accuracy" in text and "How this was made" in text
    facts = dict(re.findall(r"<tr><th>([^<]+)</th><td><code>([^<]*)</code></td></tr>", text))
    assert facts["stage-1 run"] == str(pipeline["run"]) and facts["data"] == str(pipeline["shards"])
    assert (facts["arch"], facts["epochs"], facts["sampler"], facts["loss"], facts["world size"]) == \
        ("resnet10", "1", "instance", "ce", "2")
    assert "launch/train_repr.py" in facts["stage 1"] and "--arch resnet10" in facts["stage 1"]
    assert "extract" in facts["extract"] and "search_stage2.py" in facts["search"]
    config = json.loads((pipeline["run"] / "config.json").read_text())
    if (REPO / ".git").exists():  # a checkout records its commit; a copy of the files records none
        assert facts["git commit (stage 1)"] == config["git_commit"] and len(config["git_commit"]) >= 40
    class_names = json.loads((pipeline["results"] / "search.json").read_text())["class_names"]
    assert f"{len(class_names)} classes</summary>" in text
    assert all(f"<tr><td>{html.escape(name)}</td>" in text for name in class_names)


def test_table_is_the_best_trials_with_their_test_scores(pipeline):
    """table.csv against best.json, best.json against trials.parquet (best val per method), and the
    joint row against test accuracy recomputed here from the stored features and classifier."""
    import pyarrow.parquet as pq

    from lt_dist.stage2.store import read_classifier, read_split

    results = pipeline["results"]
    with open(results / "table.csv") as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    best = json.loads((results / "best.json").read_text())
    assert set(table) == set(best)
    trials = pq.read_table(results / "trials.parquet").to_pylist()
    for method, chosen in best.items():
        for group in ("many", "medium", "few", "all"):
            assert float(table[method][group]) == pytest.approx(chosen[f"test_{group}"], abs=0.005), (method, group)
        scores = [t["selection_score"] for t in trials if t["method"] == method]
        assert chosen["selection_score"] == max(scores), method
    classifier, test = read_classifier(str(pipeline["features"])), read_split(str(pipeline["features"]), "test")
    logits = test.features.astype(np.float64) @ classifier["weight"].T.astype(np.float64) + classifier["bias"]
    predicted = logits.argmax(axis=1)
    assert float(table["joint"]["all"]) == pytest.approx(100 * np.mean(predicted == test.labels), abs=0.005)
    counts = classifier["train_counts"]
    few = [j for j in range(len(counts)) if counts[j] < 20]
    if few:  # the mean over few-shot classes of their own accuracy
        expected_few = 100 * np.mean([np.mean(predicted[test.labels == j] == j) for j in few])
        assert float(table["joint"]["few"]) == pytest.approx(expected_few, abs=0.005)


def test_exported_model_reproduces_the_search_on_test(pipeline, tmp_path):
    """As `make demo` ends: export the chosen cRT head with the DeepSpeed-trained backbone (and to ONNX),
    then `lt_dist evaluate` with extract's decoder (DALI) gives the search's test numbers."""
    model = tmp_path / "model"
    run(BIN / "lt_dist", "export", "--run", pipeline["run"], "--results", pipeline["results"], "--method", "crt",
        "--out", model, "--format", "onnx")
    assert (model / "model.onnx").stat().st_size > 1_000_000
    run(BIN / "lt_dist", "evaluate", model, "--data", pipeline["shards"], "--split", "test", "--workers", 0)
    scores = json.loads((model / "per_class_test.json").read_text())
    best = json.loads((pipeline["results"] / "best.json").read_text())["crt"]
    for group in ("many", "medium", "few", "all"):
        assert scores[group] == pytest.approx(best[f"test_{group}"], abs=1e-9, nan_ok=True), group


def test_the_same_commands_on_the_same_machine_and_world_give_the_same_numbers(pipeline, tmp_path):
    """What the README promises bit for bit: stage 1's weights, the features and every stage-2
    number of the table, when the same commands run again on this machine with 2 ranks."""
    import pyarrow as pa
    import torch

    again = train_extract_search(tmp_path, pipeline["shards"])
    first, second = (torch.load(p["run"] / "best_model.pt", map_location="cpu", weights_only=False)["state_dict"]
                     for p in (pipeline, again))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first), "stage-1 weights differ"
    for split in ("train", "test"):
        tables = [pa.ipc.open_file(str(p["features"] / f"{split}.arrow")).read_all() for p in (pipeline, again)]
        assert tables[0].equals(tables[1]), f"{split} features differ"
    assert (pipeline["results"] / "table.csv").read_text() == (again["results"] / "table.csv").read_text()
