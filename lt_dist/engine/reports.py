"""Per-class CSVs and the final metrics file of a stage-1 run (rank 0 writes)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np

from lt_dist.metrics import per_class_accuracy, shot_groups


def append_per_class(path: str, epoch: int, metrics: dict, train_counts: np.ndarray, class_names: list[str]) -> None:
    """Append one row per class: epoch, label, name, group, train count, evaluated, correct, accuracy."""
    new = not os.path.exists(path)
    accuracy = per_class_accuracy(metrics["correct"], metrics["total"])
    groups = shot_groups(train_counts)
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["epoch", "label", "class_name", "group", "train_count", "count", "correct", "accuracy"])
        for label, name in enumerate(class_names):
            writer.writerow([epoch, label, name, groups[label], int(train_counts[label]),
                             int(metrics["total"][label]), int(metrics["correct"][label]),
                             f"{100 * accuracy[label]:.4f}"])


def write_test_results(run_dir: str, split: str, metrics: dict, train_counts: np.ndarray,
                       class_names: list[str], best: dict) -> None:
    """<split>_metrics.json (All/Many/Medium/Few + the best-on-val epoch) and <split>_per_class.csv."""
    per_class = os.path.join(run_dir, f"{split}_per_class.csv")
    if os.path.exists(per_class):
        os.remove(per_class)
    append_per_class(per_class, int(best["epoch"]), metrics, train_counts, class_names)
    scores = {key: metrics[key] for key in ("all", "many", "medium", "few")}
    with open(os.path.join(run_dir, f"{split}_metrics.json"), "w", encoding="utf-8") as handle:
        json.dump({"split": split, **scores, "best_epoch": best["epoch"], "val": best.get("val")}, handle, indent=1)
