"""Everything a finished stage-2 search writes under results/NAME/."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lt_dist.metrics import shot_groups
from lt_dist.report.figures import plot_class_counts, plot_tau_curve, plot_weight_norms
from lt_dist.report.tables import DISPLAY, markdown_table, table_rows, write_table_csv
from lt_dist.runinfo import provenance
from lt_dist.stage2.saved import save_head
from lt_dist.stage2.search import best_per_method, evaluate_chosen
from lt_dist.stage2.store import INDEX, read_classifier

NORM_METHODS = ("joint", "crt", "tau_norm", "lws")  # the paper's Fig. 2 left
SEARCH_INFO = "search.json"


def write_results(out: str, features_dir: str, results: list[dict], seed: int, select_on: str) -> str:
    """trials.parquet, best.json, table.md/csv, per_class.csv, search.json and the figures;
    returns the Markdown table."""
    # whole or not at all: an interrupted write leaves only a temp file, never a truncated table
    temp = os.path.join(out, f".trials.parquet.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(results), temp)
    os.replace(temp, os.path.join(out, "trials.parquet"))
    best = best_per_method(results)
    classifier = read_classifier(features_dir)
    norms, per_class = {}, {}
    for method, result in best.items():  # test is read here, once per chosen setting
        chosen = evaluate_chosen(features_dir, method, json.loads(result["params"]), seed)
        result.update(chosen["scores"], selected_on=select_on)
        save_head(out, method, chosen["predictor"], _head_info(features_dir, result, classifier, seed))
        if chosen["per_class"] is not None:
            per_class[method] = chosen["per_class"]
        if method in NORM_METHODS and chosen["weight"] is not None:
            norms[DISPLAY[method]] = np.linalg.norm(chosen["weight"], axis=1)
    with open(os.path.join(out, "best.json"), "w", encoding="utf-8") as handle:
        json.dump(best, handle, indent=1)
    rows = table_rows(best)
    write_table_csv(rows, os.path.join(out, "table.csv"))
    note = "test, chosen on " + ("val" if select_on == "val" else "the balanced training estimate")
    table = markdown_table(rows, note)
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    _write_per_class(os.path.join(out, "per_class.csv"), per_class, classifier)
    with open(os.path.join(out, SEARCH_INFO), "w", encoding="utf-8") as handle:
        json.dump({"features": os.path.abspath(features_dir), "seed": seed, "select_on": select_on,
                   "trials": len(results), "train_counts": classifier["train_counts"].tolist(),
                   "class_names": classifier["class_names"], **provenance(os.path.abspath(__file__))},
                  handle, indent=1)
    _figures(out, results, norms, classifier["train_counts"])
    return table


def _head_info(features_dir: str, result: dict, classifier: dict, seed: int) -> dict:
    """What heads/<method>.json records: the setting, its scores, and where it came from."""
    index_path = os.path.join(features_dir, INDEX)
    source = {}
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as handle:
            source = json.load(handle)
    return {"params": json.loads(result["params"]), "seed": seed, "selected_on": result["selected_on"],
            "scores": {key: result[key] for key in result if key.startswith(("val_", "test_"))},
            "features": os.path.abspath(features_dir), "ckpt": source.get("ckpt"), "data": source.get("data"),
            "arch": source.get("arch"), "class_names": classifier["class_names"],
            "train_counts": classifier["train_counts"].tolist()}


def _write_per_class(path: str, per_class: dict[str, np.ndarray], classifier: dict) -> None:
    """One row per (method, class): test accuracy beside the class's training count."""
    counts, groups = classifier["train_counts"], shot_groups(classifier["train_counts"])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "label", "class_name", "group", "train_count", "test_accuracy"])
        for method, accuracy in per_class.items():
            for label, name in enumerate(classifier["class_names"]):
                writer.writerow([method, label, name, groups[label], int(counts[label]), f"{accuracy[label]:.2f}"])


# methods searched over a tau -> (figure file, title): tau-norm's rescaling (the paper's Fig. 2
# right) and post-hoc logit adjustment's prior correction trade many-shot for few-shot alike
TAU_CURVES = {"tau_norm": ("tau_curve.png", "τ-normalized classifier"),
              "logit_adjust": ("logit_adjust_tau_curve.png", "post-hoc logit adjustment")}


def _figures(out: str, results: list[dict], norms: dict, train_counts: np.ndarray) -> None:
    for method, (name, title) in TAU_CURVES.items():
        taus = [{**r, "tau": json.loads(r["params"])["tau"]} for r in results if r["method"] == method]
        if len(taus) > 1 and "val_all" in taus[0]:
            plot_tau_curve(taus, os.path.join(out, name), split="val", title=title)
    if norms:
        plot_weight_norms(norms, train_counts, os.path.join(out, "weight_norms.png"))
    plot_class_counts({"train": train_counts}, os.path.join(out, "class_counts.png"), title="training class counts")
