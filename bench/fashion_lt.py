"""Decoupling on Fashion-MNIST-LT over seeds: the paper's Table 5 and Figure 1 on the demo's data.

Each stage-1 configuration (sampler / loss) is trained once per seed with exactly the
demo's command (deepspeed, 2 CPU processes, ResNet-10, 28 px), then `lt_dist extract` and
the stage-2 search (joint, NCM, cRT, tau-norm, LWS; every setting chosen on val, test
reported once). Two tables, mean ± std (sample std, ddof 1) over the seeds, test top-1 %:

    1. instance-balanced representation: rows Joint/NCM/cRT/tau-norm/LWS, Many/Medium/Few/All
    2. per stage-1 configuration: Joint/cRT/tau-norm/LWS All, Joint/cRT Few (Figure 1)

Configurations: instance (the demo's CE), class, sqrt, logit_adjusted (instance sampler,
logit-adjusted CE, tau 1), progressive, ldam (LDAM-DRW on a cosine head) and mixup (instance
sampler, mixup alpha 0.2, MiSLAS's stage 1); the last three are not run by default. --balanced
adds the balanced-data ceilings (stage 1 only, tested on the same test set). Runs live under
--work-dir/e<EPOCHS>/<config>-s<seed>/ (run/, features/, results/, logs); a run whose
results/table.csv exists is skipped, an interrupted one resumes. Writes
bench/results/fashion_lt.json and bench/results/fashion_lt.png. Long: ~7 min per run
on 2 CPU cores at 12 epochs.

    python bench/fashion_lt.py [--epochs 20] [--seeds 0,1,2] [--configs instance,class,sqrt,logit_adjusted]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

try:
    from bench.common import BENCH_DIR, DATA_DIR, RESULTS_DIR, markdown_table, write_results
except ImportError:  # run as a script: python bench/fashion_lt.py
    from common import BENCH_DIR, DATA_DIR, RESULTS_DIR, markdown_table, write_results

REPO = os.path.dirname(BENCH_DIR)
BIN = os.path.dirname(sys.executable)
SHARDS = "shards/fashion_mnist_lt"
FMNIST_DIR = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
# name -> (label, train_repr.py arguments beyond the demo's)
CONFIGS = {
    "instance": ("instance-balanced", ["--sampler", "instance"]),
    "class": ("class-balanced", ["--sampler", "class"]),
    "sqrt": ("square-root", ["--sampler", "sqrt"]),
    "logit_adjusted": ("logit-adjusted CE (instance, τ=1)",
                       ["--sampler", "instance", "--loss", "logit_adjusted", "--loss-param", "tau=1"]),
    "progressive": ("progressively-balanced", ["--sampler", "progressive"]),
    # LDAM-DRW on its cosine head (the default head for --loss ldam)
    "ldam": ("LDAM-DRW (instance, cosine head)", ["--sampler", "instance", "--loss", "ldam"]),
    # MiSLAS's stage 1: mixup on instance-balanced batches (alpha 0.2, its ImageNet-LT value)
    "mixup": ("instance-balanced + mixup α=0.2", ["--sampler", "instance", "--mixup", "0.2"]),
}
# --balanced: the ceilings, the same network, epochs and augmentation on balanced subsets of
# Fashion-MNIST's training images (tested on the same test set): (i) as many images as the
# long-tailed set (2,478 -> 248 per class), what imbalance alone costs; (ii) the head's 1000
# for every class, what the missing tail images cost on top.
BALANCED = {"balanced_equal": ("(i) balanced, as many images (248 per class)", 248),
            "balanced_full": ("(ii) balanced, 1000 per class", 1000)}
METHODS = {"joint": "Joint", "ncm": "NCM", "crt": "cRT", "tau_norm": "τ-norm", "lws": "LWS"}
GROUPS = ("many", "medium", "few", "all")
FIGURE_METHODS = ("joint", "crt", "tau_norm", "lws")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="stage-1 epochs (default: %(default)s, the demo's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--configs", default="instance,class,sqrt,logit_adjusted",
                        help=f"comma-separated, of {', '.join(CONFIGS)} (default: %(default)s)")
    parser.add_argument("--work-dir", default=os.path.join(DATA_DIR, "fashion_lt"),
                        help="run folders (default: bench/data/fashion_lt)")
    parser.add_argument("--balanced", action="store_true",
                        help="also train the balanced-data ceilings (i) and (ii) per seed (stage 1 only; "
                        "(ii) trains on 4x the images)")
    parser.add_argument("--ceilings", default=",".join(BALANCED),
                        help="with --balanced: which ceilings, comma-separated (default: %(default)s)")
    args = parser.parse_args(argv)
    args.ceilings = args.ceilings.split(",")
    if set(args.ceilings) - set(BALANCED):
        parser.error(f"unknown --ceilings {sorted(set(args.ceilings) - set(BALANCED))}; choose from {list(BALANCED)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.configs = args.configs.split(",")
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}; choose from {list(CONFIGS)}")
    return args


def free_port() -> int:
    """A TCP port nobody listens on now, for deepspeed's --master_port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_logged(cmd: list[str], log: str) -> None:
    """Run cmd in the repo root, output to log; on failure raise with the log's last lines."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": os.environ.get(
        "TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))}
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.call(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code:
        with open(log, encoding="utf-8", errors="replace") as handle:
            tail = "".join(handle.readlines()[-15:])
        raise RuntimeError(f"{os.path.basename(cmd[1] if 'python' in cmd[0] else cmd[0])} exit {code} "
                           f"(log {log}):\n{tail}")


def ensure_shards(out: str = SHARDS, imbalance: int = 100, max_per_class: int = 1000) -> str:
    """Pack Fashion-MNIST exactly as `make demo` does (idempotent); another imbalance and size
    give the balanced ceilings' subsets (imbalance 1). Returns the shards folder."""
    run_logged([os.path.join(BIN, "lt_dist"), "pack", "--idx", FMNIST_DIR, "--out", out,
                "--profile", "exp", "--imbalance", str(imbalance), "--max-per-class", str(max_per_class),
                "--val-per-class", "20", "--seed", "0", "--class-names", "@shards/fashion-mnist.classes",
                "--workers", "2"], os.path.join(DATA_DIR, f"{os.path.basename(out)}_pack.log"))
    return out


def run_ceilings(args: argparse.Namespace) -> dict[str, dict[int, float]]:
    """Stage 1 on each balanced subset per seed (the demo's command); {name: {seed: test All %}}."""
    ceilings: dict = {}
    for name in args.ceilings:
        per_class = BALANCED[name][1]
        data = ensure_shards(f"{SHARDS}_balanced{per_class}", imbalance=1, max_per_class=per_class)
        for seed in args.seeds:
            folder = os.path.join(args.work_dir, f"e{args.epochs}", f"{name}-s{seed}")
            os.makedirs(folder, exist_ok=True)
            began = time.perf_counter()
            train(folder, "instance", seed, args.epochs, data=data)
            with open(os.path.join(folder, "run", "test_metrics.json"), encoding="utf-8") as handle:
                ceilings.setdefault(name, {})[seed] = float(json.load(handle)["all"])
            print(f"{name} seed {seed}: test All {ceilings[name][seed]:.2f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    return ceilings


def ceiling_table(ceilings: dict[str, dict[int, float]]) -> str:
    """Rows the ceilings, test All mean ± std over the seeds."""
    rows = [[BALANCED[name][0], f"{np.mean(list(v.values())):.1f} ± "
             f"{np.std(list(v.values()), ddof=1) if len(v) > 1 else 0.0:.1f}"] for name, v in ceilings.items()]
    return markdown_table(["balanced-data ceiling (Joint)", "All"], rows)


def train(folder: str, config: str, seed: int, epochs: int, data: str = SHARDS) -> None:
    """Stage 1 with the demo's command; resumes from a checkpoint, skips a finished run."""
    run = os.path.join(folder, "run")
    if os.path.exists(os.path.join(run, "test_metrics.json")):
        return
    resume = os.path.exists(os.path.join(run, "checkpoints", "latest"))
    if not resume:
        shutil.rmtree(run, ignore_errors=True)
    run_logged([os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                "launch/train_repr.py", "--ds_config", "launch/ds_demo.json", "--data", data, "--out", run,
                "--arch", "resnet10", "--small-input", "--train-preset", "small_train",
                "--eval-preset", "small_eval", "--image-size", "28", "--epochs", str(epochs),
                *CONFIGS[config][1], "--decoder", "dali", "--workers", "1", "--seed", str(seed),
                *(["--resume"] if resume else [])], os.path.join(folder, "train.log"))


def stage2(folder: str) -> None:
    """Extract features (unless classifier.arrow, written last, exists), then the stage-2 search from scratch."""
    features, results = os.path.join(folder, "features"), os.path.join(folder, "results")
    if not os.path.exists(os.path.join(features, "classifier.arrow")):
        shutil.rmtree(features, ignore_errors=True)
        run_logged([os.path.join(BIN, "lt_dist"), "extract", "--ckpt", os.path.join(folder, "run"),
                    "--data", SHARDS, "--out", features, "--workers", "1"], os.path.join(folder, "extract.log"))
    shutil.rmtree(results, ignore_errors=True)
    run_logged([sys.executable, "tune/search_stage2.py", "--features", features, "--out", results,
                "--num-cpus", "2", "--methods", ",".join(METHODS)], os.path.join(folder, "stage2.log"))


def read_table(path: str) -> dict[str, dict[str, float]]:
    """method -> {many, medium, few, all} (test %) from a results table.csv."""
    with open(path, encoding="utf-8") as handle:
        return {row["method"]: {g: float(row[g]) for g in GROUPS} for row in csv.DictReader(handle)}


def run_all(args: argparse.Namespace) -> tuple[dict, dict]:
    """Every (config, seed): train, extract, stage 2. Returns ({config: {seed: table}}, {run: error})."""
    root = os.path.join(args.work_dir, f"e{args.epochs}")
    jobs = [(c, s) for c in args.configs for s in args.seeds]
    tables: dict = {c: {} for c in args.configs}
    failures: dict = {}
    start = time.perf_counter()
    for index, (config, seed) in enumerate(jobs, 1):
        folder = os.path.join(root, f"{config}-s{seed}")
        table_csv = os.path.join(folder, "results", "table.csv")
        began = time.perf_counter()
        status = "skipped (done)"
        if not os.path.exists(table_csv):
            os.makedirs(folder, exist_ok=True)
            try:
                train(folder, config, seed, args.epochs)
                stage2(folder)
                status = "done"
            except RuntimeError as error:
                failures[f"{config}-s{seed}"] = str(error)
                status = f"FAILED: {str(error).splitlines()[0]}"
        if os.path.exists(table_csv):
            tables[config][seed] = read_table(table_csv)
        print(f"[{index}/{len(jobs)}] {config} seed {seed}: {status} in {time.perf_counter() - began:.0f} s "
              f"(elapsed {(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    return tables, failures


def stats(tables: dict, config: str, method: str, group: str) -> tuple[float, float, int]:
    """Mean, sample std (0 with one seed) and seed count of one cell."""
    values = [t[method][group] for t in tables.get(config, {}).values() if method in t]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def cell(tables: dict, config: str, method: str, group: str) -> str:
    """'mean ± std' with one decimal; the seed count appended when some seeds are missing."""
    mean, std, count = stats(tables, config, method, group)
    if not count:
        return "-"
    expected = max(len(t) for t in tables.values())
    return f"{mean:.1f} ± {std:.1f}" + (f" (n={count})" if count < expected else "")


def method_table(tables: dict, config: str = "instance") -> str:
    """Table 5 shape: one representation, rows the stage-2 methods, Many/Medium/Few/All."""
    rows = [[label, *(cell(tables, config, m, g) for g in GROUPS)] for m, label in METHODS.items()]
    return markdown_table(["method", "Many", "Medium", "Few", "All"], rows)


def sampler_table(tables: dict) -> str:
    """Figure 1 shape: rows the stage-1 configurations, All per method and Few for Joint/cRT."""
    columns = [(m, "all") for m in FIGURE_METHODS] + [("joint", "few"), ("crt", "few")]
    rows = [[CONFIGS[c][0], *(cell(tables, c, m, g) for m, g in columns)] for c in tables]
    return markdown_table(["stage-1", *(f"{METHODS[m]} {g.title()}" for m, g in columns)], rows)


def plot(tables: dict, path: str, epochs: int) -> None:
    """Grouped bars per stage-1 configuration: Joint/cRT/tau-norm/LWS All, error bars = std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(tables)
    x, width = np.arange(len(configs)), 0.8 / len(FIGURE_METHODS)
    fig, ax = plt.subplots(figsize=(max(1.9 * len(configs) + 2, 7), 4))
    for i, method in enumerate(FIGURE_METHODS):
        cells = [stats(tables, c, method, "all") for c in configs]
        ax.bar(x + (i - (len(FIGURE_METHODS) - 1) / 2) * width, [c[0] for c in cells], width,
               yerr=[c[1] for c in cells], capsize=3, label=METHODS[method])
    ax.set_xticks(x, [CONFIGS[c][0].replace(" (", "\n(") for c in configs], fontsize=8)
    ax.set_ylabel("test top-1, All (%)")
    seeds = max((len(t) for t in tables.values()), default=0)
    ax.set_title(f"Fashion-MNIST-LT, ResNet-10, {epochs} epochs: mean ± std over {seeds} seeds", fontsize=10)
    finite = [stats(tables, c, m, "all")[0] for c in configs for m in FIGURE_METHODS]
    finite = [v for v in finite if np.isfinite(v)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 15), min(100.0, max(finite) + 8))
    ax.legend(ncol=4, fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run everything (skipping finished runs), print both tables, write the JSON and the figure."""
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.perf_counter()
    ensure_shards()
    tables, failures = run_all(args)
    ceilings = run_ceilings(args) if args.balanced else {}
    wall = time.perf_counter() - start
    first, second = method_table(tables), sampler_table(tables)
    seeds = ", ".join(map(str, args.seeds))
    notes = [f"Fashion-MNIST-LT (demo pack: 10 classes, 1000 to 10 images, imbalance 100), ResNet-10, "
             f"{args.epochs} epochs, demo command; seeds {seeds}; test top-1 %, every setting chosen on val; "
             "mean ± sample std over the seeds.",
             "Many > 100 / Medium 20..100 / Few < 20 training images: 5 / 3 / 2 classes."]
    print("\nInstance-balanced representation (paper's Table 5 shape):\n\n" + first)
    print("\nStage-1 sampler / loss, then stage 2 (paper's Figure 1 shape):\n\n" + second)
    if ceilings:
        print("\nBalanced-data ceilings (the same network, epochs and test set):\n\n" + ceiling_table(ceilings))
    print("\n" + "\n".join(notes))
    figure = os.path.join(RESULTS_DIR, "fashion_lt.png")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    plot(tables, figure, args.epochs)
    payload = {"epochs": args.epochs, "seeds": args.seeds, "configs": args.configs, "wall_s": round(wall, 1),
               "runs": {c: {str(s): t for s, t in runs.items()} for c, runs in tables.items()},
               "summary": {c: {m: {g: dict(zip(("mean", "std", "n"), stats(tables, c, m, g))) for g in GROUPS}
                               for m in METHODS} for c in tables if tables[c]},
               "table_methods": first, "table_samplers": second, "notes": notes, "failures": failures,
               "ceilings": {name: {str(s): v for s, v in seeds.items()} for name, seeds in ceilings.items()},
               "figure": os.path.relpath(figure, REPO)}
    print(f"\nwall {wall / 60:.1f} min; wrote {write_results('fashion_lt', payload)} and {figure}")
    for run, error in failures.items():
        print(f"FAILED {run}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
