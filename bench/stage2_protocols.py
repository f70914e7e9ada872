"""Stage 2 on cached eval features against stage 2 through the backbone (the official protocol).

On the demo's Fashion-MNIST-LT, per seed, from the instance-balanced stage-1 run of
bench/fashion_lt.py (trained here if missing, same folder layout):
    (a) eval features      lt_dist extract + tune/search_stage2.py (cRT, LWS; lr chosen on val)
    (d) through backbone   launch/train_classifier.py --method crt|lws, --bn update (official)
    (d') same, --bn frozen the stage-1 BN statistics kept
    (b) 10 augmented views  lt_dist extract --train-views 10, then the same search
    (c) (b) + BN recalibration   ... --train-views 10 --bn-recalibrate class
    (c') eval features after `lt_dist extract --bn-recalibrate class` (no augmented views)
Test top-1 % (Many/Medium/Few/All), mean ± std over the seeds, one table per method; writes
bench/results/stage2_protocols.json. Long: about 7 min of stage 1 per seed on 2 CPU
cores plus a few minutes per stage-2 run.

    python bench/stage2_protocols.py [--epochs 20] [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

try:
    from bench import fashion_lt
    from bench.common import markdown_table, write_results
except ImportError:  # run as a script: python bench/stage2_protocols.py
    import fashion_lt
    from common import markdown_table, write_results

GROUPS = ("many", "medium", "few", "all")
# row key -> (label, train_classifier.py arguments or None for the cached-feature search)
PROTOCOLS = {
    "features": ("(a) eval features", None),
    "views": ("(b) 10 augmented views", ["--train-views", "10"]),
    "views_bn": ("(c) (b) + BN recalibration", ["--train-views", "10", "--bn-recalibrate", "class"]),
    "recalibrated": ("(c') eval features, BN recalibrated", ["--bn-recalibrate", "class"]),
    "backbone": ("(d) through the backbone, BN update", ["--bn", "update"]),
    "backbone_frozen": ("(d') through the backbone, BN frozen", ["--bn", "frozen"]),
}
METHODS = ("crt", "lws")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="stage-1 epochs (default: %(default)s, the demo's)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--work-dir", default=os.path.join(fashion_lt.DATA_DIR, "fashion_lt"),
                        help="run folders, shared with bench/fashion_lt.py")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS),
                        help="comma-separated rows to run, of %(default)s; a row left out is still shown for the seeds "
                        "an earlier run finished it for (its cells then say n=)")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.protocols = args.protocols.split(",")
    unknown = sorted(set(args.protocols) - set(PROTOCOLS))
    if unknown:
        parser.error(f"unknown --protocols {unknown}; choose from {list(PROTOCOLS)}")
    return args


def through_backbone(folder: str, method: str, extra: list[str], seed: int) -> dict:
    """One train_classifier.py run from folder/run; returns its test metrics (skips a finished run)."""
    out = os.path.join(folder, f"stage2-{method}-{'-'.join(a.strip('-') for a in extra)}")
    metrics = os.path.join(out, "test_metrics.json")
    if not os.path.exists(metrics):
        resume = os.path.exists(os.path.join(out, "checkpoints", "latest"))
        if not resume:
            shutil.rmtree(out, ignore_errors=True)
        fashion_lt.run_logged(
            [os.path.join(fashion_lt.BIN, "deepspeed"), "--num_gpus", "2", "--master_port",
             str(fashion_lt.free_port()), "launch/train_classifier.py", "--ds_config", "launch/ds_demo.json",
             "--init", os.path.join(folder, "run"), "--data", fashion_lt.SHARDS, "--out", out, "--method", method,
             "--decoder", "dali", "--workers", "1", "--seed", str(seed), *extra, *(["--resume"] if resume else [])],
            out + ".log")
    with open(metrics, encoding="utf-8") as handle:
        values = json.load(handle)
    return {g: float(values[g]) for g in GROUPS}


def extracted(features: str) -> bool:
    """Whether `lt_dist extract` finished in this folder: its index lists every split (it is
    written before the first split too, with none)."""
    try:
        with open(os.path.join(features, "features.json"), encoding="utf-8") as handle:
            return {"train", "val", "test"} <= set(json.load(handle).get("splits", {}))
    except (OSError, ValueError):
        return False


def cached(folder: str, key: str, extract_args: list[str], seed: int) -> dict:
    """cRT and LWS on features extracted with extra `lt_dist extract` arguments (skips a finished run)."""
    features, results = os.path.join(folder, f"features-{key}"), os.path.join(folder, f"results-{key}")
    table_csv = os.path.join(results, "table.csv")
    if not os.path.exists(table_csv):
        if not extracted(features):
            shutil.rmtree(features, ignore_errors=True)
            fashion_lt.run_logged([os.path.join(fashion_lt.BIN, "lt_dist"), "extract",
                                   "--ckpt", os.path.join(folder, "run"), "--data", fashion_lt.SHARDS, "--out", features,
                                   "--workers", "1", "--seed", str(seed), *extract_args],
                                  os.path.join(folder, f"extract-{key}.log"))
        shutil.rmtree(results, ignore_errors=True)  # a failed search's leftovers: start it again
        fashion_lt.run_logged([sys.executable, "tune/search_stage2.py", "--features", features, "--out", results,
                               "--num-cpus", "2", "--methods", ",".join(METHODS)],
                              os.path.join(folder, f"stage2-{key}.log"))
    return {m: fashion_lt.read_table(table_csv)[m] for m in METHODS}


def finished(folder: str, key: str) -> bool:
    """Whether one protocol row of a seed has its results (both methods through the backbone)."""
    extra = PROTOCOLS[key][1]
    if key.startswith("backbone"):
        return all(os.path.exists(os.path.join(folder, f"stage2-{m}-{'-'.join(a.strip('-') for a in extra)}",
                                               "test_metrics.json")) for m in METHODS)
    return extra is None or os.path.exists(os.path.join(folder, f"results-{key}", "table.csv"))


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """{protocol: {method: {group: test %}}} for one seed."""
    folder = os.path.join(args.work_dir, f"e{args.epochs}", f"instance-s{seed}")
    os.makedirs(folder, exist_ok=True)
    fashion_lt.train(folder, "instance", seed, args.epochs)
    table_csv = os.path.join(folder, "results", "table.csv")
    if not os.path.exists(table_csv):
        fashion_lt.stage2(folder)
    plain = fashion_lt.read_table(table_csv)
    rows = {"features": {m: plain[m] for m in METHODS}}
    for key, (_, extra) in PROTOCOLS.items():
        if key not in args.protocols and not finished(folder, key):
            continue  # not asked for: shown only when an earlier run finished it
        if key.startswith("backbone"):
            rows[key] = {m: through_backbone(folder, m, extra, seed) for m in METHODS}
        elif extra is not None:
            rows[key] = cached(folder, key, extra, seed)
    return rows


def table(runs: dict, method: str) -> str:
    """One stage-2 method: rows the protocols, columns Many/Medium/Few/All, mean ± std over seeds."""
    import numpy as np

    def cell(key: str, group: str) -> str:
        values = [r[key][method][group] for r in runs.values() if key in r]
        if not values:
            return "-"
        text = f"{np.mean(values):.1f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}"
        return text + (f" (n={len(values)})" if len(values) < len(runs) else "")

    rows = [[label, *(cell(key, g) for g in GROUPS)] for key, (label, _) in PROTOCOLS.items()]
    return markdown_table(["protocol", *(g.title() for g in GROUPS)], rows)


def main(argv: list[str] | None = None) -> int:
    """Every seed, then the table and bench/results/stage2_protocols.json."""
    args = parse_args(argv)
    fashion_lt.ensure_shards()
    start = time.perf_counter()
    runs = {seed: run_seed(args, seed) for seed in args.seeds}
    wall = time.perf_counter() - start
    tables = {m: table(runs, m) for m in METHODS}
    for method, text in tables.items():
        print(f"\n{'cRT' if method == 'crt' else 'LWS'} (test top-1 %, mean ± std over seeds {args.seeds}):\n\n{text}")
    path = write_results("stage2_protocols", {"epochs": args.epochs, "seeds": args.seeds, "wall_s": round(wall, 1),
                                              "runs": {str(s): r for s, r in runs.items()}, "tables": tables})
    print(f"wall {wall / 60:.1f} min (finished runs skipped count as 0)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
