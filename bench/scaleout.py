"""Benchmark the scale-out paths: pre-emption, resume (same and other world size), Ray 1 vs 2 nodes.

    python bench/scaleout.py --data shards/demo [--ranks 2 --epochs 2] [--features features/demo]

Stage 1 runs as one process per rank (the variables a launcher would set) with ZeRO
stage 1, the default (a resume on another world size goes through the checkpoint's
lt_full_zero_state.pt). It measures: seconds
from SIGTERM to the last rank's exit; seconds from starting `--resume` to the first
trained batch (log.jsonl's first new "train" line) on the same world and on half of
it, against the checkpoint's size. With --features it also times the stage-2 search on
a one-node Ray (2 CPUs) and on a two-node cluster (two raylets of 1 CPU each, the same
2 cores: expect about the same) and the per-trial overhead (wall time not spent
inside trials, per trial).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

try:
    from bench.common import markdown_table, write_results
except ImportError:  # run as a script: python bench/scaleout.py
    from common import markdown_table, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--arch", "resnet10", "--small-input", "--train-preset", "small_train", "--eval-preset", "small_eval",
        "--image-size", "28", "--decoder", "torchvision", "--log-every", "1", "--workers", "0"]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(args: list[str], world_size: int) -> list[subprocess.Popen]:
    """One train_repr.py process per rank."""
    port, processes = free_port(), []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, os.path.join(REPO, "launch", "train_repr.py"), *args],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return processes


def train_lines(run: str) -> list[dict]:
    """log.jsonl's "train" records so far."""
    path = os.path.join(run, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [r for r in (json.loads(line) for line in handle if line.endswith("}\n")) if r["kind"] == "train"]


def wait_until(condition, processes, timeout_s: float = 1800) -> None:
    """Poll condition() while the processes run."""
    deadline = time.time() + timeout_s
    while not condition():
        if any(p.poll() is not None for p in processes) or time.time() > deadline:
            raise RuntimeError("stage 1 ended or stalled before the measurement point")
        time.sleep(0.01)


def folder_bytes(path: str) -> int:
    """Total size of the files under path."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def preempt_and_resume(args, work: str) -> list[list]:
    """Rows: (what, world, seconds, checkpoint MB)."""
    ds_json = os.path.join(work, "ds.json")
    with open(ds_json, "w", encoding="utf-8") as handle:
        json.dump({"train_batch_size": args.batch, "zero_optimization": {"stage": 1}, "steps_per_print": 10**9,
                   "zero_allow_untested_optimizer": True,
                   "optimizer": {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}}},
                  handle)
    run = os.path.join(work, "run")
    common = ["--ds_config", ds_json, "--data", args.data, *TINY, "--epochs", str(args.epochs)]
    ranks = start_ranks([*common, "--out", run], args.ranks)
    wait_until(lambda: len(train_lines(run)) >= 3, ranks)
    signalled = time.perf_counter()
    for rank in ranks:
        rank.send_signal(signal.SIGTERM)
    for rank in ranks:
        rank.wait()
    rows = [["SIGTERM to exit", args.ranks, round(time.perf_counter() - signalled, 2), ""]]
    with open(os.path.join(run, "checkpoints", "latest"), encoding="utf-8") as handle:
        size_mb = folder_bytes(os.path.join(run, "checkpoints", handle.read().strip())) / 2**20
    shutil.copytree(run, run + "-other")
    for folder, world in ((run, args.ranks), (run + "-other", max(1, args.ranks // 2))):
        seen = len(train_lines(folder))
        started = time.perf_counter()
        resumed = start_ranks([*common, "--out", folder, "--resume"], world)
        wait_until(lambda: len(train_lines(folder)) > seen, resumed)
        rows.append(["--resume to first trained batch", world, round(time.perf_counter() - started, 2),
                     round(size_mb, 1)])
        for process in resumed:
            process.kill()
            process.wait()
    return rows


def ray_search(args, work: str) -> list[list]:
    """Rows: (cluster, wall s, trials, overhead s per trial)."""
    from ray.cluster_utils import Cluster

    import pyarrow.parquet as pq

    rows = []
    for label, node_cpus in (("1 node x 2 CPUs", [2]), ("2 nodes x 1 CPU", [1, 1])):
        temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0], "include_dashboard": False,
                                                                "temp_dir": temp_dir})
        try:
            for cpus in node_cpus[1:]:
                cluster.add_node(num_cpus=cpus, temp_dir=temp_dir)
            cluster.wait_for_nodes()
            out = os.path.join(work, f"search-{len(node_cpus)}")
            started = time.perf_counter()
            subprocess.run([sys.executable, os.path.join(REPO, "tune", "search_stage2.py"), "--features",
                            args.features, "--out", out, "--address", "auto"], check=True,
                           env={**os.environ, "RAY_ADDRESS": cluster.address}, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
        finally:
            cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
        trials = pq.read_table(os.path.join(out, "trials.parquet")).to_pylist()
        inside = sum(float(t.get("time_total_s", 0.0)) for t in trials)
        rows.append([label, round(wall, 1), len(trials), round((wall * sum(node_cpus) - inside) / len(trials), 2)])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="packed shards (e.g. shards/demo from `make demo`); needed for stage 1")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the interrupted run (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=32, help="train_batch_size (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the run (default: %(default)s)")
    parser.add_argument("--features", help="features/NAME: also time the Ray search on 1 and 2 nodes")
    parser.add_argument("--parts", choices=("all", "stage1", "search"), default="all",
                        help="what to measure (default: %(default)s; search needs --features)")
    args = parser.parse_args(argv)
    if args.parts != "search" and not args.data:
        parser.error("--data is needed to measure stage 1 (or pass --parts search)")
    if args.parts == "search" and not args.features:
        parser.error("--parts search needs --features")
    work = tempfile.mkdtemp(prefix="scaleout-")
    try:
        stage1 = preempt_and_resume(args, work) if args.parts != "search" else []
        if stage1:
            print(markdown_table(["what", "ranks", "seconds", "checkpoint MB"], stage1))
        search = ray_search(args, work) if args.features and args.parts != "stage1" else []
        if search:
            print(markdown_table(["Ray cluster", "wall s", "trials", "overhead s/trial"], search))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("scaleout", {"settings": vars(args), "stage1": stage1, "search": search})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
