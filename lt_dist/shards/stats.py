"""Class-count statistics of a packed split, a split list, or a counts file."""
from __future__ import annotations

import json
import os

import numpy as np

from lt_dist.errors import UserInputError
from lt_dist.metrics import FEW_BELOW, GROUPS, MANY_ABOVE, shot_groups
from lt_dist.shards.manifest import find_splits, load_manifest
from lt_dist.shards.sources import read_split_list


def count_stats(samples_per_class: np.ndarray) -> dict:
    """Summary of per-class counts.

    Args:
        samples_per_class: (C,) images per class.
    Returns:
        classes, images, max, min, imbalance (max/min), and per group
        (many/medium/few) the number of classes and of images.
    """
    counts = np.asarray(samples_per_class, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0:
        raise UserInputError(f"class counts must be a non-empty list, got shape {counts.shape}")
    if (counts < 0).any():
        raise UserInputError(f"class counts must be >= 0; class {int(np.argmin(counts))} has {counts.min()}")
    groups = shot_groups(counts)
    stats = {"classes": int(counts.size), "images": int(counts.sum()), "max": int(counts.max()),
             "min": int(counts.min()),
             "imbalance": float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")}
    for group in GROUPS:
        stats[f"{group}_classes"] = int((groups == group).sum())
        stats[f"{group}_images"] = int(counts[groups == group].sum())
    return stats


def load_counts(path: str | None = None, counts_file: str | None = None) -> dict[str, np.ndarray]:
    """Per-class counts by name: {split: counts} for a packed dataset, {file name: counts} else."""
    if counts_file:
        try:
            with open(counts_file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
            raise UserInputError(f"cannot read counts file {counts_file!r}: {error}") from None
        values = data.get("samples_per_class", data.get("counts")) if isinstance(data, dict) else data
        if not isinstance(values, list):
            raise UserInputError(f"{counts_file}: expected a JSON list of per-class counts")
        bad = next((v for v in values if type(v) is not int or not 0 <= v < 2**62), None)
        if bad is not None:
            raise UserInputError(f"{counts_file}: {bad!r} is not a class count (an integer >= 0)")
        return {os.path.basename(counts_file): np.asarray(values, dtype=np.int64)}
    if path is None:
        raise UserInputError("give a packed dataset, a split list, or --counts FILE.json")
    if os.path.isfile(path):
        labels = np.array([label for _, label, _ in read_split_list(path)])
        return {os.path.basename(path): np.bincount(labels)}
    return {os.path.basename(split): load_manifest(split).samples_per_class for split in find_splits(path)}


def format_stats(name: str, stats: dict) -> str:
    """Human-readable block for one set of counts."""
    lines = [f"{name}: {stats['classes']} classes, {stats['images']:,} images, "
             f"max {stats['max']:,} / min {stats['min']:,} per class, imbalance {stats['imbalance']:.1f}"]
    labels = {"many": f"many (>{MANY_ABOVE})", "medium": f"medium ({FEW_BELOW}..{MANY_ABOVE})",
              "few": f"few (<{FEW_BELOW})"}
    for group in GROUPS:
        lines.append(f"  {labels[group]:<16} {stats[f'{group}_classes']:>6} classes "
                     f"{stats[f'{group}_images']:>10,} images")
    return "\n".join(lines)
