"""tune/search_stage2.py: a real Ray Tune run on small features, and its start-up checks."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, sigkill_when
from lt_dist.stage2 import store

SCRIPT = REPO / "tune" / "search_stage2.py"
COUNTS = np.array([300, 120, 40, 12, 5])


def blobs(counts, rng, centers, spread=1.2):
    labels = np.repeat(np.arange(len(counts)), counts)
    return centers[labels] + spread * rng.standard_normal((len(labels), centers.shape[1])), labels


def write_features(folder, dim=12, seed=0):
    """Long-tailed train, balanced val/test; the stage-1 W has head-heavy norms as joint training gives."""
    rng = np.random.default_rng(seed)
    centers = 2.5 * rng.standard_normal((len(COUNTS), dim))
    os.makedirs(folder, exist_ok=True)
    for split, counts in (("train", COUNTS), ("val", [20] * 5), ("test", [40] * 5)):
        features, labels = blobs(np.asarray(counts), rng, centers)
        store.write_split(os.path.join(folder, f"{split}.arrow"), np.arange(len(labels)),
                          [f"{split}/{i}" for i in range(len(labels))], labels, features.astype(np.float32))
    weight = centers * (COUNTS[:, None] / COUNTS.max()) ** 0.5
    bias = np.log(COUNTS / COUNTS.sum()).astype(np.float32)
    store.write_classifier(folder, weight, bias, COUNTS, [f"c{j}" for j in range(5)])
    return folder


def search(*args, timeout=600):
    env = dict(os.environ)
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_ray_tune_search_picks_on_val_and_writes_the_table(tmp_path):
    features = write_features(tmp_path / "features")
    out = tmp_path / "results"
    result = search("--features", features, "--out", out, "--num-cpus", 2, "--taus", "0,0.5,1,1.5",
                    "--lrs", "0.2", "--methods", "joint,ncm,crt,tau_norm,lws")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 1 + 2 + 1 + 4 + 1
    assert not any(key.startswith("test_") for key in trials[0])  # trials never see test
    best = json.loads((out / "best.json").read_text())
    tau_trials = [t for t in trials if t["method"] == "tau_norm"]
    assert best["tau_norm"]["val_all"] == max(t["val_all"] for t in tau_trials)
    with open(out / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["method", "many", "medium", "few", "all"]
    assert [r["method"] for r in rows] == ["joint", "ncm", "crt", "tau_norm", "lws"]
    for row in rows:
        assert all(0 <= float(row[k]) <= 100 for k in ("many", "medium", "few", "all", "val_all"))
    by_method = {r["method"]: r for r in rows}
    assert float(by_method["crt"]["few"]) > float(by_method["joint"]["few"])  # the paper's shape
    assert (out / "tau_curve.png").stat().st_size > 0 and (out / "weight_norms.png").stat().st_size > 0
    assert "| cRT |" in (out / "table.md").read_text()
    # every chosen classifier is saved for `lt_dist export` (tests/test_export.py checks them)
    assert sorted(os.listdir(out / "heads")) == sorted(f"{m}.{ext}" for m in ("joint", "ncm", "crt", "tau_norm", "lws")
                                                       for ext in ("json", "safetensors"))


def test_select_on_train_uses_the_balanced_training_estimate(tmp_path):
    features = write_features(tmp_path / "features")
    result = search("--features", features, "--out", tmp_path / "r", "--num-cpus", 2, "--methods", "tau_norm",
                    "--taus", "0,1", "--select-on", "train")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pq.read_table(tmp_path / "r" / "trials.parquet").to_pylist()
    assert all(t["selection_score"] == t["train_balanced"] for t in trials)
    assert json.loads((tmp_path / "r" / "best.json").read_text())["tau_norm"]["selected_on"] == "train"


@pytest.mark.parametrize("case, message", [
    ("tau", "--taus: -0.5 must be a finite number >= 0"),
    ("method", "unknown method 'svm'"),
    ("no_classifier", "has no stage-1 classifier"),
    ("dimension", "val features are 7-d but the classifier is 12-d"),
    ("address", "Ray address '127.0.0.1:9' does not answer"),
    ("keep_best", "--set crt.keep_best=true keeps the best epoch on val, and"),
])
def test_bad_input_fails_at_start_up(tmp_path, case, message):
    features = write_features(tmp_path / "features")
    args = ["--features", features, "--out", tmp_path / "r"]
    if case == "tau":
        args += ["--taus=-0.5,1"]
    elif case == "method":
        args += ["--methods", "crt,svm"]
    elif case == "no_classifier":
        os.remove(features / "classifier.arrow")
    elif case == "dimension":
        store.write_split(str(features / "val.arrow"), np.arange(3), ["a", "b", "c"], np.zeros(3, int),
                          np.zeros((3, 7), np.float32))
    elif case == "address":
        args += ["--address", "127.0.0.1:9"]
    elif case == "keep_best":
        os.remove(features / "val.arrow")
        args += ["--methods", "crt", "--select-on", "train", "--set", "crt.keep_best=true"]
    result = search(*args, timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


@pytest.mark.slow  # ~1 min; test_search_interrupt covers resume after Ctrl-C in the default run
def test_interrupted_search_resumes(tmp_path):
    """SIGKILL the driver once some trials finished; --resume restores the experiment and completes it."""
    features = write_features(tmp_path / "features")
    out = tmp_path / "r"
    args = [sys.executable, str(SCRIPT), "--features", str(features), "--out", str(out), "--num-cpus", "1",
            "--methods", "crt", "--lrs", "0.01,0.02,0.05,0.1,0.2,0.4", "--set", "crt.epochs=300"]
    driver = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    experiment = out / "ray" / "stage2"
    sigkill_when(driver, lambda: any(p.stat().st_size > 0 for p in experiment.glob("_trial_*/result.json")), 0.1,
                 "the search finished before it could be interrupted", group=True)
    assert not (out / "table.csv").exists()
    result = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming the search in {experiment}" in result.stdout
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert sorted(json.loads(t["params"])["lr"] for t in trials) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    assert all(json.loads(t["params"])["epochs"] == 300 for t in trials)


def test_set_rejects_unknown_parameters(tmp_path):
    features = write_features(tmp_path / "features")
    result = search("--features", features, "--methods", "crt", "--set", "crt.epoch=3", timeout=120)
    assert result.returncode == 2 and "unknown parameter(s) 'epoch' for 'crt'" in result.stderr


def descendants(root: int) -> set[int]:
    """PIDs of every living process below `root` (children, their children, ...), from /proc."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'
                parent_of[int(entry)] = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def trial_actor_pids(driver: int) -> list[int]:
    """Processes of Ray Tune's function-trainable actors (title `ray::ImplicitFunc...`) started by
    `driver`: the driver's own Ray starts the raylet, which starts the workers, so they are its
    descendants; trials of any other search on this machine are never touched."""
    pids = []
    for pid in descendants(driver):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().startswith(b"ray::ImplicitFunc"):
                    pids.append(pid)
        except OSError:
            continue
    return pids


def test_a_crashed_trial_is_retried(tmp_path):
    """SIGKILL the worker process of a running trial: Ray Tune retries it and the search completes."""
    import signal
    import time

    features = write_features(tmp_path / "features")
    out = tmp_path / "r"
    # 2000 epochs: long enough to be seen running, short enough for a loaded CI machine (10000 timed out there)
    args = [sys.executable, str(SCRIPT), "--features", str(features), "--out", str(out), "--num-cpus", "1",
            "--methods", "crt", "--lrs", "0.05,0.2", "--set", "crt.epochs=2000", "--max-failures", "2"]
    driver = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, deadline = [], time.time() + 300
    while not killed and time.time() < deadline and driver.poll() is None:
        for pid in trial_actor_pids(driver.pid):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.05)
    output, _ = driver.communicate(timeout=600)
    assert killed, "no trial was running to be killed"
    assert driver.returncode == 0, output[-3000:]
    assert "errored" in output  # Ray saw the crash ...
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert sorted(json.loads(t["params"])["lr"] for t in trials) == [0.05, 0.2]  # ... and the retry finished it


def search_script():
    """tune/search_stage2.py as a module (no Ray needed for its tables and start-up checks)."""
    sys.path.insert(0, str(REPO / "tune"))
    try:
        import search_stage2
    finally:
        sys.path.pop(0)
    return search_stage2


def test_the_method_names_of_the_help_are_the_methods_table():
    from lt_dist.stage2.methods import METHODS

    script = search_script()
    later = script.LATER_METHODS.split(",")
    assert later == list(METHODS)[-len(later):]
    assert sorted(script.DEFAULT_METHODS.split(",") + later) == sorted(METHODS)
    help_text = " ".join(script.get_args_parser().format_help().split())
    assert f"after the paper: {script.LATER_METHODS.replace(',', ', ')} (docs/METHOD.md)" in help_text


def test_methods_all_runs_every_method_and_taus_set_both_tau_grids(tmp_path):
    script = search_script()
    features = write_features(tmp_path / "features")
    args = script.get_args_parser().parse_args(["--features", str(features), "--out", str(tmp_path / "r"),
                                                "--methods", "all", "--taus", "0,1.5"])
    trials, _ = script.prepare(args)
    from lt_dist.stage2.methods import METHODS

    assert [t["method"] for t in trials if t["method"] in ("tau_norm", "logit_adjust")] == ["tau_norm"] * 2 + [
        "logit_adjust"] * 2
    assert {t["method"] for t in trials} == set(METHODS)
    assert [t["params"] for t in trials if t["method"] == "logit_adjust"] == [{"tau": 0.0}, {"tau": 1.5}]
    default = script.prepare(script.get_args_parser().parse_args(["--features", str(features), "--out",
                                                                  str(tmp_path / "d")]))[0]
    assert {t["method"] for t in default} == set(script.DEFAULT_METHODS.split(","))  # the paper's, as before


def test_keep_best_chooses_the_epoch_on_val_in_the_trial_and_in_the_refit_for_test(tmp_path):
    from lt_dist.stage2.search import evaluate_chosen, run_trial

    features = write_features(tmp_path / "features")
    params = {"lr": 0.8, "epochs": 6, "keep_best": True}
    trial = run_trial(str(features), "crt", params, 0, "val")
    chosen = evaluate_chosen(str(features), "crt", params, 0)  # loads train and test: val must ride along
    assert trial["val_all"] >= run_trial(str(features), "crt", {**params, "keep_best": False}, 0, "val")["val_all"]
    os.remove(features / "val.arrow")
    with pytest.raises(ValueError, match="keep_best needs val features"):
        evaluate_chosen(str(features), "crt", params, 0)
    assert chosen["scores"]["test_all"] >= 0


def test_resume_with_other_methods_is_refused_before_ray_starts(tmp_path):
    # Ray restores the grid a search began with: --methods all on a default search would drop
    # the later methods without a word, so the plan is pinned and a different one refused
    script = search_script()
    features = write_features(tmp_path / "features")
    out = tmp_path / "r"
    args = script.get_args_parser().parse_args(["--features", str(features), "--out", str(out), "--methods", "joint"])
    trials, _ = script.prepare(args)
    out.mkdir()
    script.pin_plan(str(out), trials, 0, "val", resume=False)
    script.pin_plan(str(out), trials, 0, "val", resume=True)  # the same plan continues
    result = search("--features", features, "--out", out, "--methods", "joint,ncm", "--resume", timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("--resume continues the search as it began (1 trial of joint, seed 0, on val); this command asks for "
            "3 trials of joint, ncm, seed 0, on val") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
