"""Shot groups and accuracy summaries (pure numpy).

Groups follow the paper (docs/METHOD.md): many-shot n_j > 100, few-shot n_j < 20,
medium-shot 20 <= n_j <= 100, always from the TRAINING counts.
"""
from __future__ import annotations

import numpy as np

MANY_ABOVE = 100  # many-shot: strictly more than this many training images
FEW_BELOW = 20  # few-shot: strictly fewer than this many training images
GROUPS = ("many", "medium", "few")


def shot_groups(samples_per_class: np.ndarray) -> np.ndarray:
    """Group name of every class.

    Args:
        samples_per_class: (C,) training images per class.
    Returns:
        (C,) array of "many" / "medium" / "few".
    """
    counts = np.asarray(samples_per_class)
    groups = np.full(counts.shape, "medium", dtype=object)
    groups[counts > MANY_ABOVE] = "many"
    groups[counts < FEW_BELOW] = "few"
    return groups


def per_class_accuracy(correct: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(C,) correct / total per class; NaN for classes with no evaluated sample."""
    correct, total = np.asarray(correct, dtype=np.float64), np.asarray(total, dtype=np.float64)
    # dividing by max(total, 1) never divides by zero: no errstate needed
    return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def group_accuracy(correct: np.ndarray, total: np.ndarray, train_counts: np.ndarray) -> dict:
    """Top-1 in percent: "all" over every sample, and per shot group the mean of its
    classes' accuracies (docs/METHOD.md, "Evaluation"; groups from the TRAINING counts).

    Args:
        correct, total: (C,) per-class correct predictions and evaluated samples.
        train_counts: (C,) training images per class.
    Returns:
        {"all", "many", "medium", "few"}: floats in [0, 100]; NaN for an empty group.
    """
    accuracy = per_class_accuracy(correct, total)
    groups = shot_groups(train_counts)
    result = {"all": 100.0 * float(np.sum(correct)) / max(float(np.sum(total)), 1.0)}
    for group in GROUPS:
        values = accuracy[(groups == group) & ~np.isnan(accuracy)]
        result[group] = 100.0 * float(values.mean()) if len(values) else float("nan")
    return result
