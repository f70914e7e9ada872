"""The whole pipeline in miniature, as `make demo` runs it: pack -> deepspeed -> extract -> Ray -> report."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import browser
from conftest import REPO, write_idx

BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts"


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


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    source = synthetic_idx(root / "idx")
    shards, run_dir, features, results = root / "shards", root / "run", root / "features", root / "results"
    run(BIN / "lt_dist", "pack", "--idx", source, "--out", shards, "--profile", "exp", "--imbalance", 15,
        "--max-per-class", 150, "--val-per-class", 5, "--no-progress")
    ds_json = root / "ds.json"
    ds_json.write_text(json.dumps({"train_batch_size": 32, "optimizer": {"type": "SGD", "params": {
        "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}}, "bf16": {"enabled": True},
        "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True}))
    run(BIN / "deepspeed", "--num_gpus", 2, "--master_port", 29811, REPO / "launch" / "train_repr.py",
        "--ds_config", ds_json, "--data", shards, "--out", run_dir, "--arch", "resnet10", "--small-input",
        "--train-preset", "small_train", "--eval-preset", "small_eval", "--image-size", 28, "--epochs", 1,
        "--decoder", "dali", "--workers", 0)
    run(BIN / "lt_dist", "extract", "--ckpt", run_dir, "--data", shards, "--out", features, "--workers", 0)
    run(sys.executable, REPO / "tune" / "search_stage2.py", "--features", features, "--out", results,
        "--num-cpus", 2, "--taus", "0,1,2", "--lrs", "0.2")
    run(BIN / "lt_dist", "report", results)
    return {"shards": shards, "run": run_dir, "features": features, "results": results}


def test_every_artefact_exists(pipeline):
    expected = {"shards": ["train/manifest.parquet", "val/manifest.parquet", "test/manifest.parquet"],
                "run": ["best_model.pt", "config.json", "log.jsonl", "test_metrics.json", "val_per_class.csv",
                        "checkpoints/latest"],
                "features": ["train.arrow", "val.arrow", "test.arrow", "classifier.arrow", "features.json"],
                "results": ["trials.parquet", "best.json", "table.md", "table.csv", "per_class.csv",
                            "tau_curve.png", "weight_norms.png", "class_counts.png", "accuracy_vs_size.png",
                            "table.png", "report.html"]}
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
def test_report_opens_in_chromium_without_console_errors(pipeline, tmp_path):
    page = pipeline["results"] / "report.html"
    text = page.read_text()
    assert "<table>" in text and text.count("data:image/png;base64,") >= 4
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    messages = browser.open_page(str(page), str(screenshot))
    assert messages == []
    assert screenshot.stat().st_size > 10_000
    # the check itself can fail: a page with a script error is caught
    probe = tmp_path / "probe.html"
    probe.write_text("<html><body><script>missingFunction();</script></body></html>")
    assert any("missingFunction" in m for m in browser.open_page(str(probe), str(tmp_path / "probe.png")))


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
