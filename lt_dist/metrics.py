"""Shot groups and accuracy summaries (pure numpy).

Groups follow the paper (SPEC.md): many-shot n_j > 100, few-shot n_j < 20,
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
