"""Figures: the class-count curve, accuracy against tau and weight norms (the paper's Fig. 2)."""
from __future__ import annotations

import numpy as np

from lt_dist.metrics import FEW_BELOW, MANY_ABOVE


def plot_class_counts(counts_by_name: dict[str, np.ndarray], path: str, title: str = "") -> None:
    """Sorted class counts (largest first), log scale, with the many/few thresholds.

    Args:
        counts_by_name: {label: (C,) counts}; one curve each.
        path: output image file (PNG, SVG or PDF by extension).
    """
    plt = _pyplot()
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_tau_curve(points: list[dict], path: str, split: str = "val") -> None:
    """Accuracy against tau with Many/Medium/Few/All lines (the paper's Fig. 2 right).

    Args:
        points: [{"tau", "<split>_many", "<split>_medium", "<split>_few", "<split>_all"}].
    """
    plt = _pyplot()
    points = sorted(points, key=lambda p: p["tau"])
    taus = [p["tau"] for p in points]
    figure, axes = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for group, style in (("many", "-o"), ("medium", "-s"), ("few", "-^"), ("all", "-k")):
        axes.plot(taus, [p[f"{split}_{group}"] for p in points], style, markersize=3, label=group.capitalize())
    axes.set_xlabel("τ")
    axes.set_ylabel(f"{split} top-1 accuracy (%)")
    axes.set_title("τ-normalized classifier")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_weight_norms(norms: dict[str, np.ndarray], train_counts: np.ndarray, path: str) -> None:
    """Per-class weight norms over classes sorted by training count (the paper's Fig. 2 left)."""
    plt = _pyplot()
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    figure, axes = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for name, values in norms.items():
        axes.plot(np.arange(len(order)), np.asarray(values)[order], marker=".", label=name)
    axes.set_xlabel("class (sorted by training images, many to few)")
    axes.set_ylabel("‖w_j‖")
    axes.set_title("classifier weight norms")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
