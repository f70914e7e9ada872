"""Bad inputs of the run commands (stage 1, extract, the stage-2 search, report), each as a real process.

Every row of CASES is one mistake: the command must end with exit 2, print one line
naming the bad value (no traceback), and leave every file outside its output as it
was. A row is (id, command, arguments, what the message must contain, setup); the
arguments and setup work in a fresh copy W of the fixtures (data, run, features,
results). Adding a case is adding a row. Rows refused before DeepSpeed/Ray/torch start
cost well under a second; the few that need torch or Ray are marked.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_image_folder

TRAIN = [sys.executable, str(REPO / "launch" / "train_repr.py")]
CLI = [sys.executable, "-m", "lt_dist.cli"]
SEARCH = [sys.executable, str(REPO / "tune" / "search_stage2.py")]
PROGRAM = {"train": ("train_repr", TRAIN), "extract": ("lt_dist extract", [*CLI, "extract"]),
           "search": ("search_stage2", SEARCH), "report": ("lt_dist report", [*CLI, "report"])}
BASE = {  # arguments every row of a command starts from; W is the case's workspace
    "train": ["--ds_config", "W/ds.json", "--data", "W/data", "--out", "W/out", "--arch", "resnet10",
              "--small-input", "--train-preset", "small_train", "--eval-preset", "small_eval", "--image-size", "16",
              "--decoder", "torchvision", "--epochs", "1"],
    "extract": ["--ckpt", "W/run", "--data", "W/data", "--out", "W/out", "--decoder", "torchvision", "--workers", "0"],
    "search": ["--features", "W/features", "--out", "W/out", "--num-cpus", "1", "--methods", "tau_norm"],
    "report": ["W/results", "--out", "W/out.html"],
}
DS_CONFIG = {"train_batch_size": 8, "optimizer": {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}},
             "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True}
SLOW = pytest.mark.slow
TORCH = "torch"  # rows that import torch or start Ray: a few seconds each


def put(path: Path, data: bytes | str) -> None:
    """Replace a (possibly hard-linked) fixture file by new content without touching the shared copy."""
    path.unlink(missing_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def ds_json(**changes):
    return lambda w: put(w / "ds.json", json.dumps({**DS_CONFIG, **changes}))


def ds_text(text: bytes):
    return lambda w: put(w / "ds.json", text)


def run_with_checkpoints(with_manifest: bool, latest: str = "gs000000004-epoch0000-end"):
    """W/out as a stage-1 run whose only checkpoint is torn (no manifest) or missing."""
    def setup(w: Path) -> None:
        (w / "out" / "checkpoints").mkdir(parents=True)
        put(w / "out" / "config.json", json.dumps({"train": {"arch": "resnet10", "small_input": True},
                                                   "num_classes": 3}))
        if not with_manifest:
            tag = w / "out" / "checkpoints" / "gs000000004-epoch0000-end"
            tag.mkdir()
            put(tag / "mp_rank_00_model_states.pt", b"half a checkpoint")
        put(w / "out" / "checkpoints" / "latest", latest)
    return setup


def features_of_another_checkpoint(w: Path) -> None:
    index = json.loads((w / "features" / "features.json").read_text())
    index["splits"]["val"]["ckpt_sha256"] = "0" * 64
    put(w / "features" / "features.json", json.dumps(index))


def foreign_features_in_out(with_index: bool):
    def setup(w: Path) -> None:
        shutil.copytree(w / "features", w / "out")  # copies, so the fixture's files stay apart
        if with_index:
            index = json.loads((w / "out" / "features.json").read_text())
            put(w / "out" / "features.json", json.dumps({**index, "ckpt_sha256": "f" * 64}))
        else:
            (w / "out" / "features.json").unlink()
    return setup


# (id, command, extra arguments (replacing BASE's value of the same flag), message, setup, marks)
UNWRITABLE = "/sys/lt-dist-unwritable"  # sysfs: mkdir there fails with EPERM, root included

CASES = [
    # stage 1: numbers of the command line
    ("train-epochs-zero", "train", ["--epochs", "0"], "epochs must be in [1, 10000], got 0", None, ()),
    ("train-epochs-huge", "train", ["--epochs", "1000000000000"], "got 1000000000000", None, ()),
    ("train-epochs-fraction", "train", ["--epochs", "1.5"], "'1.5'", None, ()),
    ("train-epochs-text", "train", ["--epochs", "many"], "'many'", None, ()),
    ("train-workers-negative", "train", ["--workers", "-1"], "workers must be in [0, 64], got -1", None, ()),
    ("train-workers-huge", "train", ["--workers", "100000"], "got 100000", None, ()),
    ("train-seed-negative", "train", ["--seed", "-3"], "seed must be in [0, 4294967295], got -3", None, ()),
    ("train-eval-batch-huge", "train", ["--eval-batch-size", "1000000000"], "got 1000000000", None, ()),
    ("train-image-size-tiny", "train", ["--image-size", "2"], "image_size must be in [8, 4096], got 2", None, ()),
    ("train-keep-zero", "train", ["--keep-checkpoints", "0"], "keep_checkpoints must be in [1, 1000], got 0",
     None, ()),
    ("train-log-every-zero", "train", ["--log-every", "0"], "log_every must be in [1, 1000000000], got 0", None, ()),
    ("train-loss-param-nan", "train", ["--loss-param", "gamma=nan"], "'nan' is not a finite number", None, ()),
    # stage 1: ds.json
    ("train-ds-missing", "train", ["--ds_config", "W/nothing.json"], "nothing.json' does not exist", None, ()),
    ("train-ds-garbage", "train", [], "is not valid JSON", ds_text(b"\x00\xff garbage"), ()),
    ("train-ds-bom", "train", [], "is not valid JSON", ds_text(b"\xef\xbb\xbf" + json.dumps(DS_CONFIG).encode()), ()),
    ("train-ds-batch-zero", "train", [], "train_batch_size must be a whole number in [1, 1048576], got 0",
     ds_json(train_batch_size=0), ()),
    ("train-ds-batch-negative", "train", [], "got -16", ds_json(train_batch_size=-16), ()),
    ("train-ds-batch-fraction", "train", [], "got 16.5", ds_json(train_batch_size=16.5), ()),
    ("train-ds-batch-text", "train", [], "got '16'", ds_json(train_batch_size="16"), ()),
    ("train-ds-batch-nan", "train", [], "got nan", ds_text(b'{"train_batch_size": NaN, "optimizer": {}}'), ()),
    ("train-ds-batch-huge", "train", [], "got 1000000000000", ds_json(train_batch_size=10**12), ()),
    ("train-ds-micro-huge", "train", [], "train_micro_batch_size_per_gpu must be a whole number in [1, 65536]",
     ds_json(train_micro_batch_size_per_gpu=10**9), ()),
    ("train-ds-lr-negative", "train", [], "optimizer lr must be a finite number >= 0, got -0.1",
     ds_json(optimizer={"type": "SGD", "params": {"lr": -0.1}}), ()),
    # stage 1: data, output folder, resume
    ("train-data-missing", "train", ["--data", "W/nowhere"], "W/nowhere", None, (TORCH,)),
    ("train-out-is-file", "train", ["--out", "W/ds.json"], "ds.json' is a file, not a folder", None, (TORCH,)),
    ("train-out-holds-run", "train", [], "already holds a run (config.json): pass --resume",
     run_with_checkpoints(with_manifest=True), (TORCH,)),
    ("train-resume-torn-only", "train", ["--resume"],
     "no usable checkpoint in", run_with_checkpoints(with_manifest=False), (TORCH,)),
    ("train-resume-latest-missing", "train", ["--resume"], "no checkpoint found in",
     run_with_checkpoints(with_manifest=True, latest="gs000000009-epoch0001-end"), (TORCH,)),
    ("train-resume-garbage-config", "train", ["--resume"], "is not a readable run config",
     lambda w: (w / "out").mkdir() or put(w / "out" / "config.json", b"\xff{"), (TORCH,)),
    ("train-loss-param-unknown", "train", ["--loss-param", "bogus=1"],
     "loss 'ce' has no parameter 'bogus'; it takes no parameters", None, (TORCH,)),
    # extract
    ("extract-batch-zero", "extract", ["--batch-size", "0"], "--batch-size must be in [1, 65536], got 0", None, ()),
    ("extract-batch-huge", "extract", ["--batch-size", "4000000000"], "got 4000000000", None, ()),
    ("extract-workers-huge", "extract", ["--workers", "5000"], "--workers must be in [0, 64], got 5000", None, ()),
    ("extract-batch-fraction", "extract", ["--batch-size", "2.5"], "'2.5'", None, ()),
    ("extract-no-splits", "extract", ["--data", "W/nowhere"], "'W/nowhere' has no train, val or test split",
     None, ()),
    ("extract-ckpt-missing", "extract", ["--ckpt", "W/norun"], "best_model.pt' does not exist", None, (TORCH,)),
    ("extract-ckpt-garbage", "extract", [], "best_model.pt' is not a readable stage-1 model",
     lambda w: put(w / "run" / "best_model.pt", b"PK\x03\x04 torn"), (TORCH,)),
    ("extract-out-is-file", "extract", ["--out", "W/ds.json"], "ds.json' is a file, not a folder", None, (TORCH,)),
    ("extract-out-other-checkpoint", "extract", [], "features of different checkpoints are never mixed",
     foreign_features_in_out(with_index=True), (TORCH,)),
    ("extract-out-unknown-features", "extract", [], "holds classifier.arrow but no features.json",
     foreign_features_in_out(with_index=False), (TORCH,)),
    # the stage-2 search: numbers and resources
    ("search-num-cpus-zero", "search", ["--num-cpus", "0"], "--num-cpus must be in [1, 4096], got 0", None, ()),
    ("search-cpus-per-trial-too-many", "search", ["--cpus-per-trial", "4"],
     "--cpus-per-trial 4 is more than the local Ray's 1 CPUs", None, ()),
    ("search-cpus-per-trial-zero", "search", ["--cpus-per-trial", "0"], "--cpus-per-trial must be a number in (0",
     None, ()),
    ("search-cpus-per-trial-nan", "search", ["--cpus-per-trial", "nan"], "got nan", None, ()),
    ("search-gpus-per-trial-negative", "search", ["--gpus-per-trial", "-1"], "--gpus-per-trial must be a number in",
     None, ()),
    ("search-max-failures-negative", "search", ["--max-failures", "-1"], "--max-failures must be in [0, 100], got -1",
     None, ()),
    ("search-max-failures-huge", "search", ["--max-failures", "99999999"], "got 99999999", None, ()),
    ("search-seed-negative", "search", ["--seed", "-1"], "--seed must be in [0, 4294967295], got -1", None, ()),
    ("search-taus-empty", "search", ["--taus", ""], "--taus is empty", None, ()),
    ("search-taus-nan", "search", ["--taus", "0.5,nan"], "--taus: nan must be a finite number", None, ()),
    ("search-lrs-zero", "search", ["--lrs", "0"], "--lrs: 0.0 must be a finite number > 0", None, ()),
    ("search-methods-empty", "search", ["--methods", ","], "--methods is empty", None, ()),
    ("search-out-is-file", "search", ["--out", "W/ds.json"], "ds.json' is a file, not a folder", None, ()),
    ("search-out-holds-results", "search", ["--out", "W/results"], "already holds a search (table.csv)", None, ()),
    # the stage-2 search: features
    ("search-features-missing", "search", ["--features", "W/nothing"], "features folder 'W/nothing' does not exist",
     None, (TORCH,)),
    ("search-classifier-garbage", "search", [], "classifier.arrow' is not a readable Arrow features file",
     lambda w: put(w / "features" / "classifier.arrow", b"ARROW1 not really"), (TORCH,)),
    ("search-index-garbage", "search", [], "features.json' is not a readable features index",
     lambda w: put(w / "features" / "features.json", b"\xef\xbb\xbf{"), (TORCH,)),
    ("search-features-mixed", "search", [], "val.arrow comes from checkpoint sha256 000000000000",
     features_of_another_checkpoint, (TORCH,)),
    ("search-resume-other-features", "search", ["--resume"], "ran on features of sha256 000000000000",
     lambda w: (w / "out").mkdir() or put(w / "out" / "features_source.json", json.dumps({"identity": "0" * 64})),
     (TORCH,)),
    ("search-gpus-the-cluster-lacks", "search", ["--gpus-per-trial", "1000"],
     "--gpus-per-trial 1000 but the Ray cluster has", None, (TORCH,)),
    # report
    ("report-results-missing", "report", ["W/nothing"], "'W/nothing' has no table.csv", None, ()),
    ("report-table-garbage", "report", [], "table.csv' is malformed",
     lambda w: put(w / "results" / "table.csv", "method,many\ncrt,lots\n"), ()),
    ("report-table-invalid-utf8", "report", [], "table.csv' is malformed",
     lambda w: put(w / "results" / "table.csv", b"\xff\xfe\x00method"), ()),
    ("report-search-json-garbage", "report", [], "search.json' is malformed",
     lambda w: put(w / "results" / "search.json", '{"train_counts": [1e300, -4]}'), ()),
    ("report-out-is-folder", "report", ["--out", "W/data"], "'W/data' is a folder, not a file", None, ()),
    # a folder nobody may write: sysfs refuses new entries even to root, as a read-only mount would
    ("report-out-unwritable", "report", ["--out", f"{UNWRITABLE}/report.html"], UNWRITABLE, None, ()),
    ("search-out-unwritable", "search", ["--out", f"{UNWRITABLE}/results"], UNWRITABLE, None, ()),
    ("extract-out-unwritable", "extract", ["--out", f"{UNWRITABLE}/features"], UNWRITABLE, None, (TORCH,)),
    ("train-out-unwritable", "train", ["--out", f"{UNWRITABLE}/run"], UNWRITABLE, None, (TORCH,)),
    ("report-out-folder-missing", "report", ["--out", "W/no/such/report.html"], "does not exist", None, ()),
    ("report-out-would-overwrite", "report", ["--out", "W/ds.json"], "is not a report written by lt_dist report",
     None, ()),
]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """data/ (3 classes, train + val), run/best_model.pt, features/ (as extract writes them), results/, ds.json."""
    from lt_dist.cli import main
    from lt_dist.engine.checkpoint import file_sha256, save_best_model
    from lt_dist.models.resnet import build_model
    from lt_dist.report.tables import write_table_csv
    from lt_dist.stage2 import store

    root = tmp_path_factory.mktemp("bad_inputs_run")
    images = make_image_folder(root / "images", [6, 4, 3], size=(16, 16))
    assert main(["pack", str(images), "--out", str(root / "fixtures" / "data"), "--val-per-class", "1",
                 "--no-progress"]) == 0
    w = root / "fixtures"
    (w / "ds.json").write_text(json.dumps(DS_CONFIG))
    (w / "run").mkdir()
    torch.manual_seed(0)
    save_best_model(str(w / "run"), build_model("resnet10", 3, small_input=True),
                    {"arch": "resnet10", "num_classes": 3, "small_input": True, "epoch": 0, "train_counts": [5, 3, 2],
                     "class_names": ["a", "b", "c"], "eval_preset": "small_eval", "image_size": 16})
    sha = file_sha256(str(w / "run" / "best_model.pt"))
    (w / "features").mkdir()
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 10), ("val", 3)):
        store.write_split(str(w / "features" / f"{split}.arrow"), np.arange(n), [f"{split}/{i}" for i in range(n)],
                          np.arange(n) % 3, rng.standard_normal((n, 4)).astype(np.float32))
        splits[split] = {"num_samples": n, "ckpt": str(w / "run"), "ckpt_sha256": sha}
    store.write_classifier(str(w / "features"), rng.standard_normal((3, 4)), np.zeros(3), np.array([5, 3, 2]),
                           ["a", "b", "c"])
    store.write_index(str(w / "features"), {"ckpt": str(w / "run"), "ckpt_sha256": sha, "splits": splits})
    (w / "results").mkdir()
    write_table_csv([{"method": "crt", "many": 50.0, "medium": 40.0, "few": 30.0, "all": 45.0, "val_many": 1.0,
                      "val_medium": 1.0, "val_few": 1.0, "val_all": 1.0, "params": "{}"}],
                    str(w / "results" / "table.csv"))
    (w / "results" / "search.json").write_text(json.dumps({"train_counts": [5, 3, 2], "trials": 1}))
    return w


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (size, sha256)} of every file under root except those under skip."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not (path == skip or skip in path.parents):
            files[str(path.relative_to(root))] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


def command_line(command: str, extra: list[str], w: Path) -> list[str]:
    """BASE[command] with the flags in extra replacing BASE's values (positional extras replace BASE's first)."""
    base = list(BASE[command])
    if extra and not extra[0].startswith("--"):
        base[0], extra = extra[0], extra[1:]
    for index in range(0, len(extra), 2):
        flag = extra[index]
        value = extra[index + 1:index + 2]
        if flag in base and value and flag != "--loss-param":
            base[base.index(flag) + 1] = value[0]
        else:
            base += [flag, *value]
    return [str(w) + part[1:] if part.startswith("W/") else part for part in base]


def output_of(command: str, args: list[str], w: Path) -> Path:
    """What the command is asked to write: --out (report: the page), or W/out by default."""
    return Path(args[args.index("--out") + 1]) if "--out" in args else w / "out"


def params() -> list:
    return [pytest.param(command, extra, message, setup, id=case_id, marks=[SLOW] if case_id in SLOW_CASES else [])
            for case_id, command, extra, message, setup, marks in CASES]


# Rows that need torch or Ray cost a start-up each: the default run keeps one of each kind
# (a torch-side refusal per command, and the Ray resource check); `make test-all` walks them all.
SLOW_CASES = {case_id for case_id, _, _, _, _, marks in CASES if TORCH in marks} - {
    "train-resume-torn-only", "extract-out-other-checkpoint", "search-features-mixed",
    "search-gpus-the-cluster-lacks"}


@pytest.mark.parametrize("command, extra, message, setup", params())
def test_bad_input_is_one_line_and_touches_nothing(fixtures, tmp_path, command, extra, message, setup):
    w = tmp_path / "w"
    shutil.copytree(fixtures, w, copy_function=os.link)  # hard links: cheap; setups replace, never edit in place
    if setup is not None:
        setup(w)
    args = command_line(command, extra, w)
    output = output_of(command, args, w)
    before = snapshot(w, skip=output)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*PROGRAM[command][1], *args], cwd=w, env=env, capture_output=True, text=True,
                            timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert lines and lines[-1].startswith(f"{PROGRAM[command][0]}: error: "), result.stderr[-3000:]
    assert message.replace("W/", f"{w}/") in lines[-1], lines[-1]
    if command != "search" or "--gpus-per-trial" not in extra:  # Ray's start-up logs to stderr before the check
        assert len(lines) == 1, result.stderr[-3000:]
    assert snapshot(w, skip=output) == before, "a refused command changed files outside its output"
