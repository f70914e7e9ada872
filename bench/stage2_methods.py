"""Every stage-2 method (the paper's and those after it) on the demo's features, over seeds,
with the share of the balanced-data gap each one closes.

For each seed, the instance-balanced representation of bench/fashion_lt.py
(bench/data/fashion_lt/e<E>/instance-s<seed>/features) is searched with every method in
lt_dist.stage2.methods.METHODS over its SEARCH_SPACE, in this process with the search's
own trial functions (setting chosen on val, its refit scored on test once; Ray only
schedules these). With `--representations instance,mixup` the mixup representation's
features (bench/fashion_lt.py --configs mixup) get the same search; the table shows its
Joint, cRT and best rows (every method is in the JSON).

The ceiling is bench/fashion_lt.py --balanced's (i): the same network trained on a
balanced subset of as many images as the long-tailed set. "gap closed" is
(method - Joint) / (ceiling (i) - Joint) on All, per seed, then averaged. Writes
bench/results/stage2_methods.json; a few minutes per seed on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

try:
    from bench.common import DATA_DIR, markdown_table, write_results
except ImportError:  # run as a script: python bench/stage2_methods.py
    from common import DATA_DIR, markdown_table, write_results

GROUPS = ("many", "medium", "few", "all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="stage-1 epochs of the runs (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--representations", default="instance",
                        help="bench/fashion_lt.py configs whose features are searched (default: %(default)s)")
    parser.add_argument("--work-dir", default=os.path.join(DATA_DIR, "fashion_lt"), help="bench/fashion_lt.py's runs")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.representations = args.representations.split(",")
    return args


def search_all(features: str, seed: int) -> dict[str, dict]:
    """method -> {many, medium, few, all} test %, each method's setting chosen on val."""
    from lt_dist.stage2.methods import METHODS, SEARCH_SPACE
    from lt_dist.stage2.search import best_per_method, evaluate_chosen, run_trial

    trials = [run_trial(features, method, grid, seed, "val") for method in METHODS for grid in SEARCH_SPACE[method]]
    scores = {}
    for method, best in best_per_method(trials).items():
        test = evaluate_chosen(features, method, json.loads(best["params"]), seed)["scores"]
        scores[method] = {g: test[f"test_{g}"] for g in GROUPS}
    return scores


def ceiling(folder: str) -> float | None:
    """Test All of a balanced-data run (its run/test_metrics.json), None when it has not run."""
    path = os.path.join(folder, "run", "test_metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return float(json.load(handle)["all"])


def gap_closed(method_all: float, joint_all: float, ceiling_all: float) -> float:
    """(method - Joint) / (ceiling - Joint) on All: 0 is Joint, 1 is the balanced-data network."""
    return (method_all - joint_all) / (ceiling_all - joint_all)


def shown_methods(representation: str, seeds: dict, order: list[str]) -> list[tuple[str, str | None]]:
    """(method, label) rows of one representation: every method for the instance-balanced one;
    Joint, cRT and the best on mean All (labelled "best: ...") for the others, as the issue's
    table asks (the rest are in the JSON)."""
    if representation == "instance":
        return [(method, None) for method in order]
    from lt_dist.report.tables import DISPLAY

    best = max(order, key=lambda m: np.mean([s[m]["all"] for s in seeds.values()]))
    return [("joint", None), ("crt", None), (best, f"best, {DISPLAY[best]}")]


def table(runs: dict, ceilings: dict) -> str:
    """Rows (representation, method), columns Many/Medium/Few/All and gap closed: mean ± std over seeds."""
    from lt_dist.report.tables import DISPLAY, ORDER

    def spread(values: list[float]) -> str:
        return f"{np.mean(values):.1f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}"

    rows = []
    for representation, seeds in runs.items():
        for method, label in shown_methods(representation, seeds, ORDER):
            cells = [spread([s[method][g] for s in seeds.values()]) for g in GROUPS]
            # the gap is always to the instance-balanced Joint: what the whole recipe closes
            gaps = [gap_closed(s[method]["all"], runs.get("instance", seeds)[seed]["joint"]["all"], ceilings[seed])
                    for seed, s in seeds.items() if ceilings.get(seed) is not None]
            gap = f"{100 * np.mean(gaps):.0f}%" if gaps else "-"
            rows.append([f"{representation}: {label or DISPLAY[method]}", *cells, gap])
    return markdown_table(["representation: method", *(g.title() for g in GROUPS), "gap closed"], rows)


def main(argv: list[str] | None = None) -> int:
    """Every representation and seed whose features exist, then the table and the JSON."""
    args = parse_args(argv)
    root = os.path.join(args.work_dir, f"e{args.epochs}")
    folders = {(r, s): os.path.join(root, f"{r}-s{s}", "features") for r in args.representations for s in args.seeds}
    missing = [f for f in folders.values() if not os.path.isfile(os.path.join(f, "classifier.arrow"))]
    if missing:
        print(f"stage2_methods: error: no features at {missing[0]}: run bench/fashion_lt.py for it first",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    runs: dict = {r: {} for r in args.representations}
    for (representation, seed), folder in folders.items():
        runs[representation][seed] = search_all(folder, seed)
        print(f"{representation} seed {seed}: searched in {time.perf_counter() - start:.0f} s", flush=True)
    ceilings = {seed: ceiling(os.path.join(root, f"balanced_equal-s{seed}")) for seed in args.seeds}
    text = table(runs, ceilings)
    print(f"\ntest top-1 % over seeds {args.seeds} (mean ± std); ceiling (i) test All per seed: {ceilings}\n\n{text}")
    path = write_results("stage2_methods", {"epochs": args.epochs, "seeds": args.seeds, "ceilings": ceilings,
                                            "runs": {r: {str(s): v for s, v in seeds.items()}
                                                     for r, seeds in runs.items()},
                                            "table": text, "wall_s": round(time.perf_counter() - start, 1)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
