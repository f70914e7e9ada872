"""Everything a finished stage-2 search writes under results/NAME/."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lt_dist.report.figures import plot_tau_curve, plot_weight_norms
from lt_dist.report.tables import DISPLAY, markdown_table, table_rows, write_table_csv
from lt_dist.stage2.search import best_per_method, evaluate_chosen
from lt_dist.stage2.store import read_classifier

NORM_METHODS = ("joint", "crt", "tau_norm", "lws")  # the paper's Fig. 2 left


def write_results(out: str, features_dir: str, results: list[dict], seed: int, select_on: str) -> str:
    """trials.parquet, best.json, table.md/csv, tau_curve.png, weight_norms.png; returns the Markdown table."""
    pq.write_table(pa.Table.from_pylist(results), os.path.join(out, "trials.parquet"))
    best = best_per_method(results)
    norms = {}
    for method, result in best.items():  # test is read here, once per chosen setting
        test_scores, weight = evaluate_chosen(features_dir, method, json.loads(result["params"]), seed)
        result.update(test_scores, selected_on=select_on)
        if method in NORM_METHODS and weight is not None:
            norms[DISPLAY[method]] = np.linalg.norm(weight, axis=1)
    with open(os.path.join(out, "best.json"), "w", encoding="utf-8") as handle:
        json.dump(best, handle, indent=1)
    rows = table_rows(best)
    write_table_csv(rows, os.path.join(out, "table.csv"))
    table = markdown_table(rows, "test, chosen on " + ("val" if select_on == "val" else "the balanced training estimate"))
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    taus = [{**r, "tau": json.loads(r["params"])["tau"]} for r in results if r["method"] == "tau_norm"]
    if len(taus) > 1 and "val_all" in taus[0]:
        plot_tau_curve(taus, os.path.join(out, "tau_curve.png"), split="val")
    if norms:
        plot_weight_norms(norms, read_classifier(features_dir)["train_counts"], os.path.join(out, "weight_norms.png"))
    return table
