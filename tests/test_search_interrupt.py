"""Ctrl-C in the stage-2 search: one line, exit 130, no trials table; --resume finishes the rest."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from conftest import REPO
from test_search_stage2 import SCRIPT, write_features


def test_ctrl_c_keeps_finished_trials_and_resume_completes_the_table(tmp_path):
    features = write_features(tmp_path / "features")
    out = tmp_path / "results"
    lrs = ",".join(str(0.05 + 0.01 * i) for i in range(6))  # 6 crt trials: the search outlives the first
    args = [sys.executable, str(SCRIPT), "--features", str(features), "--out", str(out), "--num-cpus", "1",
            "--methods", "crt", "--lrs", lrs, "--set", "crt.epochs=2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    search = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = []  # stdout before the first trial's line: quiet by default, so nothing
    for first in search.stdout:
        if first.startswith("trial "):
            break
        before.append(first)
    assert first.startswith("trial 1/6: crt {"), (first, search.stderr.read()[-3000:] if not first else "")
    assert before == [], before
    assert " val all " in first and " few " in first
    search.send_signal(signal.SIGINT)
    rest, err = search.communicate(timeout=600)
    assert search.returncode == 130, err[-3000:]
    said = [line for line in err.splitlines() if "--resume" in line]
    assert said == [f"search_stage2: interrupted; finished trials are kept in {out / 'ray'}; the same command "
                    f"with --resume continues"], err[-3000:]
    assert "Traceback" not in err and "Failed to fetch metrics" not in err, err[-3000:]
    assert not (out / "trials.parquet").exists() and not list(out.glob(".trials.parquet.tmp-*"))

    started = time.time()
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env={**env, "RAY_TMPDIR": ray_tmp}, capture_output=True,
                             text=True, timeout=900)
    leftovers = [str(p) for p in Path(ray_tmp).rglob("session_*")]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert leftovers == []  # the search removed the session folder of the Ray it started
    assert resumed.returncode == 0, resumed.stderr[-3000:] + f" after {time.time() - started:.0f} s"
    assert resumed.stdout.startswith(f"resuming the search in {out / 'ray' / 'stage2'}"), resumed.stdout[:2000]
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert sorted(json.loads(t["params"])["lr"] for t in trials) == [0.05 + 0.01 * i for i in range(6)]
