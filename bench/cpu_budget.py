"""Stage 1 of the demo with the planned CPU budget against every rank taking the whole node.

Runs `deepspeed --num_gpus 2 launch/train_repr.py` for one epoch of the demo's Fashion-MNIST-LT
(ResNet-10 at 28 px, DALI on the CPU, the demo's flags) under each setting, alternating the
settings `--repeats` times, and reads the epoch's images/s from the run's log.jsonl.
"Whole node": `--torch-threads N --dali-threads 2` with N the node's cores (torch's own
default and DALI's), what every rank did before lt_dist/cpu_budget.py. "Planned": no flags.

    python bench/cpu_budget.py [--repeats 2]     # packs the demo set into bench/data first
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from common import DATA_DIR, machine_info, markdown_table, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
FMNIST = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")


def demo_shards() -> str:
    """The demo's pack of Fashion-MNIST-LT (cached under bench/data)."""
    out = os.path.join(DATA_DIR, "fashion_lt_demo")
    if not os.path.isfile(os.path.join(out, "train", "manifest.parquet")):
        subprocess.run([os.path.join(BIN, "lt_dist"), "pack", "--idx", FMNIST, "--out", out, "--profile", "exp",
                        "--imbalance", "100", "--max-per-class", "1000", "--val-per-class", "20", "--seed", "0",
                        "--no-progress"], check=True, cwd=REPO)
    return out


def one_epoch(shards: str, extra: list[str], port: int) -> float:
    """Images/s of the first epoch of a fresh 2-rank run."""
    with tempfile.TemporaryDirectory() as run:
        command = [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(port),
                   "launch/train_repr.py", "--ds_config", "launch/ds_demo.json", "--data", shards,
                   "--out", os.path.join(run, "r"), "--arch", "resnet10", "--small-input", "--train-preset",
                   "small_train", "--eval-preset", "small_eval", "--image-size", "28", "--epochs", "1",
                   "--sampler", "instance", "--decoder", "dali", "--workers", "1", "--log-every", "10",
                   "--no-progress", *extra]
        env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
        subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(run, "r", "log.jsonl"), encoding="utf-8") as handle:
            epochs = [json.loads(line) for line in handle if '"kind": "epoch"' in line]
        return float(epochs[0]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternating")
    args = parser.parse_args()
    shards = demo_shards()
    cores = len(os.sched_getaffinity(0))
    settings = {"whole node per rank": ["--torch-threads", str(cores), "--dali-threads", "2"], "planned": []}
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for repeat in range(args.repeats):
        for index, (name, extra) in enumerate(settings.items()):
            rates[name].append(one_epoch(shards, extra, 29500 + 10 * repeat + index))
            print(f"{name}: {rates[name][-1]:.1f} images/s", flush=True)
    base = statistics.median(rates["whole node per rank"])
    rows = [[name, ", ".join(f"{r:.1f}" for r in values), round(statistics.median(values) / base, 2)]
            for name, values in rates.items()]
    print(markdown_table(["setting (2 ranks, DALI on the CPU)", "images/s per run", "median / whole node"], rows))
    write_results("cpu_budget", {"machine": machine_info(), "cores": cores, "rates": rates})


if __name__ == "__main__":
    main()
