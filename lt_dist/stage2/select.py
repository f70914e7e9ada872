"""Scoring stage-2 predictors and picking a configuration (docs/METHOD.md, "Stage 2" and "Evaluation").

Selection never looks at test: select on val, or on the balanced training score
(the paper's B.5: mean over classes of per-class top-1 on the training set).
"""
from __future__ import annotations

import math

import numpy as np

from lt_dist.metrics import group_accuracy, per_class_accuracy
from lt_dist.stage2.types import FeatureSplit, Predictor


def per_class_counts(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 correct and evaluated samples per class.

    Args:
        logits: (N, C); labels: (N,) ints in 0 .. C-1.
    Returns:
        correct (C,) and total (C,) int64.
    """
    logits, labels = np.asarray(logits), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (len(logits),):
        raise ValueError(f"need logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    num_classes = logits.shape[1]
    hits = logits.argmax(axis=1) == labels  # ties go to the lower class index, as torch's argmax
    return (np.bincount(labels[hits], minlength=num_classes).astype(np.int64),
            np.bincount(labels, minlength=num_classes).astype(np.int64))


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
    """Top-1 in percent: "all" over samples, "many" / "medium" / "few" the mean of per-class accuracies.

    Args:
        logits: (N, C); labels: (N,); train_counts: (C,) training images per class (shot groups).
    Returns:
        {"all", "many", "medium", "few"} floats in [0, 100] (NaN for an empty group).
    """
    correct, total = per_class_counts(logits, labels)
    return group_accuracy(correct, total, train_counts)


def balanced_train_score(predictor: Predictor, train: FeatureSplit) -> float:
    """Mean over classes (those with training rows) of per-class top-1 on the training set, percent."""
    correct, total = per_class_counts(predictor(train.features), train.labels)
    return 100.0 * float(np.nanmean(per_class_accuracy(correct, total)))


def select_best(results: list[dict], key: str) -> dict:
    """The result with the highest results[i][key]; ties go to the first, NaN never wins over a number.

    Raises ValueError on an empty list or a result without `key`.
    """
    if not results:
        raise ValueError("no results to select from")
    missing = [i for i, result in enumerate(results) if key not in result]
    if missing:
        raise ValueError(f"results {missing} have no {key!r} score")
    best = results[0]
    for result in results[1:]:
        score, top = float(result[key]), float(best[key])
        if score > top or (math.isnan(top) and not math.isnan(score)):  # strict >: ties keep the earlier
            best = result
    return best
