"""Figures: the sorted class-count curve (and, later, the paper's Fig. 2)."""
from __future__ import annotations

import numpy as np

from lt_dist.metrics import FEW_BELOW, MANY_ABOVE


def plot_class_counts(counts_by_name: dict[str, np.ndarray], path: str, title: str = "") -> None:
    """Sorted class counts (largest first), log scale, with the many/few thresholds.

    Args:
        counts_by_name: {label: (C,) counts}; one curve each.
        path: output image file (PNG, SVG or PDF by extension).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    for name, counts in counts_by_name.items():
        ordered = np.sort(np.asarray(counts))[::-1]
        axes.plot(np.arange(len(ordered)), np.maximum(ordered, 1), label=f"{name} ({ordered.sum():,})")
    axes.axhline(MANY_ABOVE, color="grey", linestyle="--", linewidth=0.8)
    axes.axhline(FEW_BELOW, color="grey", linestyle=":", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xlabel("class (sorted by training images)")
    axes.set_ylabel("images per class")
    axes.set_title(title or "class-count curve")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
