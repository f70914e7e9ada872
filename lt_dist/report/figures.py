"""Figures: the class-count curve, accuracy against tau and weight norms (the paper's Fig. 2)."""
from __future__ import annotations

import numpy as np

from lt_dist.metrics import FEW_BELOW, MANY_ABOVE
from lt_dist.report.tables import one_decimal


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


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_tau_curve(points: list[dict], path: str, split: str = "val", title: str = "τ-normalized classifier") -> None:
    """Accuracy against tau with Many/Medium/Few/All lines (the paper's Fig. 2 right; with
    another title, the same for any method searched over a `tau`).

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
    axes.set_title(title)
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


def plot_accuracy_vs_size(per_class: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> None:
    """Per-class test accuracy against training images per class (log x), one marker set per method.

    Args:
        per_class: {method label: ((C,) train counts, (C,) accuracy in percent)}.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for (name, (counts, accuracy)), marker in zip(per_class.items(), "os^vDx*"):
        axes.scatter(np.maximum(counts, 1), accuracy, s=18, marker=marker, alpha=0.8, label=name)
    axes.axvline(MANY_ABOVE, color="grey", linestyle="--", linewidth=0.8)
    axes.axvline(FEW_BELOW, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xlabel("training images of the class")
    axes.set_ylabel("test accuracy of the class (%)")
    axes.set_title("per-class accuracy against class size")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_table(rows: list[dict], display: dict[str, str], path: str, title: str) -> None:
    """The Many/Medium/Few/All table as an image (for READMEs and slides)."""
    plt = _pyplot()
    cells = [[display.get(r["method"], r["method"]), *(one_decimal(r[k]) for k in ("many", "medium", "few", "all"))]
             for r in rows]
    figure, axes = plt.subplots(figsize=(5.2, 0.28 * (len(rows) + 2)), dpi=140)
    axes.axis("off")
    table = axes.table(cellText=cells, colLabels=["method", "Many", "Medium", "Few", "All"], loc="center",
                       cellLoc="center")
    table.scale(1, 1.3)
    axes.set_title(title, fontsize=9)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def plot_training_curves(epochs: list[dict], lr_steps: list[tuple[int, float]], path: str) -> None:
    """Stage 1 as it trained: mean loss and val Many/Medium/Few/All per epoch, lr per logged step.

    Args:
        epochs: log.jsonl "epoch" lines: {"epoch", "loss", "val_all", "val_many", "val_medium", "val_few"}.
        lr_steps: (optimizer step, lr) of the "train" lines; the panel is left out when empty.
    """
    plt = _pyplot()
    panels = 3 if lr_steps else 2
    figure, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.2), dpi=120)
    numbers = [e["epoch"] for e in epochs]  # 0-based, as stage 1 prints them
    axes[0].plot(numbers, [e["loss"] for e in epochs], "-o", markersize=3)
    axes[0].set(xlabel="epoch", ylabel="mean training loss", title="loss")
    for group, style in (("many", "-o"), ("medium", "-s"), ("few", "-^"), ("all", "-ok")):
        axes[1].plot(numbers, [e.get(f"val_{group}", float("nan")) for e in epochs], style, markersize=3,
                     label=group.capitalize())
    axes[1].set(xlabel="epoch", ylabel="val top-1 (%)", title="val accuracy")
    for panel in axes[:2]:  # epochs are whole numbers, counted from 0 as stage 1 prints them
        panel.xaxis.set_major_locator(_integer_ticks())
    axes[1].legend(fontsize="small")
    if lr_steps:
        axes[2].plot([step for step, _ in lr_steps], [lr for _, lr in lr_steps])
        axes[2].set(xlabel="optimizer step", ylabel="learning rate", title="lr")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
