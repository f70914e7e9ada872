"""Check a sampler before training: target vs empirical class shares of real draws."""
from __future__ import annotations

import numpy as np

from lt_dist.metrics import GROUPS, shot_groups


def share_table(samples_per_class: np.ndarray, target: np.ndarray, drawn_labels: np.ndarray) -> list[dict]:
    """Per shot group and in total: classes, target share, empirical share, total variation.

    Args:
        samples_per_class: (C,) training counts (they define the groups).
        target: (C,) class probabilities the sampler claims.
        drawn_labels: (D,) labels of the samples it produced.
    Returns:
        rows for "many", "medium", "few", "total"; a group's "tv" is its classes'
        part of 0.5 * sum_j |empirical_j - target_j|, so the group rows add up to the total.
    """
    counts = np.asarray(samples_per_class)
    empirical = np.bincount(drawn_labels, minlength=len(counts)) / max(len(drawn_labels), 1)
    gap = 0.5 * np.abs(empirical - target)
    groups = shot_groups(counts)
    rows = []
    for name in (*GROUPS, "total"):
        mask = np.ones(len(counts), bool) if name == "total" else groups == name
        rows.append({"group": name, "classes": int(mask.sum()), "target": float(target[mask].sum()),
                     "empirical": float(empirical[mask].sum()), "tv": float(gap[mask].sum())})
    return rows


def format_share_table(rows: list[dict], draws: int) -> str:
    """The table `lt_dist sample-stats` prints."""
    lines = [f"{'group':<8} {'classes':>7} {'target':>9} {'drawn':>9} {'TV':>8}   ({draws:,} draws)"]
    for row in rows:
        lines.append(f"{row['group']:<8} {row['classes']:>7} {row['target']:>9.4f} {row['empirical']:>9.4f} "
                     f"{row['tv']:>8.4f}")
    return "\n".join(lines)
