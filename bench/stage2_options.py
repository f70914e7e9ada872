"""The stored-feature loop's options against the official loop's, on the demo's features.

For cRT and LWS on each seed's eval features (bench/fashion_lt.py's instance-balanced
runs, bench/data/fashion_lt/e<E>/instance-s<seed>/features; made by
bench/stage2_protocols.py or bench/fashion_lt.py), every combination of
    lr_schedule  step (lt-dist's default: cosine every optimizer step) | epoch (official)
    keep_best    off (the last epoch, lt-dist's default) | on (the best-on-val epoch, official)
runs the search's own trial functions in this process (the lr grid of SEARCH_SPACE, the
setting chosen on val, its refit scored on test once), so the rows differ only in the
two options. Test top-1 % All/Few, mean ± std over the seeds found; writes
bench/results/stage2_options.json. A few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

try:
    from bench.common import DATA_DIR, markdown_table, write_results
except ImportError:  # run as a script: python bench/stage2_options.py
    from common import DATA_DIR, markdown_table, write_results

METHODS = ("crt", "lws")
VARIANTS = [{"lr_schedule": schedule, "keep_best": keep} for schedule, keep in
            itertools.product(("step", "epoch"), (False, True))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="stage-1 epochs of the runs (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--work-dir", default=os.path.join(DATA_DIR, "fashion_lt"), help="bench/fashion_lt.py's runs")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def search_one(features: str, method: str, variant: dict, seed: int) -> dict:
    """The lr grid of one method with one variant, chosen on val; returns test scores and the chosen lr."""
    from lt_dist.stage2.methods import SEARCH_SPACE
    from lt_dist.stage2.search import best_per_method, evaluate_chosen, run_trial

    trials = [run_trial(features, method, {**grid, **variant}, seed, "val") for grid in SEARCH_SPACE[method]]
    best = best_per_method(trials)[method]
    params = json.loads(best["params"])
    scores = evaluate_chosen(features, method, params, seed)["scores"]
    return {"lr": params["lr"], "val_all": best["val_all"], "all": scores["test_all"], "few": scores["test_few"]}


def label(variant: dict) -> str:
    """A row name: the two options as written in --set."""
    return f"lr_schedule={variant['lr_schedule']}, keep_best={str(variant['keep_best']).lower()}"


def table(runs: dict) -> str:
    """Rows the variants, columns cRT/LWS All and Few: mean ± std over the seeds."""
    def cell(key: str, method: str, group: str) -> str:
        values = [r[key][method][group] for r in runs.values()]
        spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
        return f"{np.mean(values):.1f} ± {spread:.1f}"

    columns = [(m, g) for m in METHODS for g in ("all", "few")]
    rows = [[label(v), *(cell(label(v), m, g) for m, g in columns)] for v in VARIANTS]
    return markdown_table(["options", *(f"{'cRT' if m == 'crt' else 'LWS'} {g.title()}" for m, g in columns)], rows)


def main(argv: list[str] | None = None) -> int:
    """Every seed whose features exist, then the table and the JSON."""
    args = parse_args(argv)
    folders = {seed: os.path.join(args.work_dir, f"e{args.epochs}", f"instance-s{seed}", "features")
               for seed in args.seeds}
    missing = [f for f in folders.values() if not os.path.isfile(os.path.join(f, "features.json"))]
    if missing:
        print(f"stage2_options: error: no features at {missing[0]}: run bench/stage2_protocols.py "
              f"(or bench/fashion_lt.py) for that seed first", file=sys.stderr)
        return 2
    start = time.perf_counter()
    runs = {seed: {label(v): {m: search_one(folder, m, v, seed) for m in METHODS} for v in VARIANTS}
            for seed, folder in folders.items()}
    text = table(runs)
    print(f"test top-1 % over seeds {args.seeds} (mean ± std):\n\n{text}")
    path = write_results("stage2_options", {"epochs": args.epochs, "seeds": args.seeds, "table": text,
                                            "wall_s": round(time.perf_counter() - start, 1),
                                            "runs": {str(s): r for s, r in runs.items()}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
