"""Class-count statistics of a packed split, a split list, or a counts file."""
from __future__ import annotations

import json
import os

import numpy as np

from lt_dist.errors import UserInputError
from lt_dist.metrics import FEW_BELOW, GROUPS, MANY_ABOVE, shot_groups
from lt_dist.shards.manifest import find_splits, load_manifest
from lt_dist.shards.sources import read_split_list
from lt_dist.storage.urls import is_url


def count_stats(samples_per_class: np.ndarray, train_counts: np.ndarray | None = None) -> dict:
    """Summary of per-class counts.

    Args:
        samples_per_class: (C,) images per class.
        train_counts: (C,) training images per class: the groups of a val/test split come
            from these, as the accuracy groups do; None groups by samples_per_class itself.
    Returns:
        classes, images, max, min, imbalance (max/min), grouped_by ("train" or "self"), and
        per group (many/medium/few) the number of classes and of images.
    """
    counts = np.asarray(samples_per_class, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0:
        raise UserInputError(f"class counts must be a non-empty list, got shape {counts.shape}")
    if (counts < 0).any():
        raise UserInputError(f"class counts must be >= 0; class {int(np.argmin(counts))} has {counts.min()}")
    if train_counts is not None and len(train_counts) != counts.size:
        raise UserInputError(f"{counts.size} classes here, {len(train_counts)} in the training counts")
    groups = shot_groups(counts if train_counts is None else np.asarray(train_counts))
    stats = {"classes": int(counts.size), "images": int(counts.sum()), "max": int(counts.max()),
             "min": int(counts.min()),
             "imbalance": float(counts.max() / counts.min()) if counts.min() > 0 else float("inf"),
             "grouped_by": "self" if train_counts is None else "train"}
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
    if not is_url(path) and os.path.isfile(path):
        labels = np.array([label for _, label, _ in read_split_list(path)])
        return {os.path.basename(path): np.bincount(labels)}
    # A URL's splits are found by trying train/val/test (it cannot be listed everywhere);
    # load_manifest reads each from its mirror in the node cache: index files only, never a shard.
    return {_split_name(split): load_manifest(split).samples_per_class for split in find_splits(path)}


def _split_name(split: str) -> str:
    """The last part of a split folder or URL: shards/NAME/train, s3://b/NAME/train/ -> train."""
    return split.rstrip("/").rpartition("/")[2] if is_url(split) else os.path.basename(os.path.normpath(split))


def stats_by_split(counts_by_name: dict[str, np.ndarray]) -> dict[str, dict]:
    """count_stats of each entry; with a "train" entry (a packed dataset) the others are grouped by its counts."""
    train = counts_by_name.get("train")
    return {name: count_stats(counts, None if name == "train" or train is None else train)
            for name, counts in counts_by_name.items()}


def format_stats(name: str, stats: dict) -> str:
    """Human-readable block for one set of counts."""
    lines = [f"{name}: {stats['classes']} classes, {stats['images']:,} images, "
             f"max {stats['max']:,} / min {stats['min']:,} per class, imbalance {stats['imbalance']:.1f}"]
    if stats.get("grouped_by") == "train":
        lines[0] += "; groups by the training counts, as the accuracy groups"
    elif stats["max"] == stats["min"]:  # a balanced val/test list on its own: its groups would mean nothing
        lines.append("  balanced: no shot groups without the training counts (give the dataset folder)")
        return "\n".join(lines)
    labels = {"many": f"many (>{MANY_ABOVE})", "medium": f"medium ({FEW_BELOW}..{MANY_ABOVE})",
              "few": f"few (<{FEW_BELOW})"}
    for group in GROUPS:
        lines.append(f"  {labels[group]:<16} {stats[f'{group}_classes']:>6} classes "
                     f"{stats[f'{group}_images']:>10,} images")
    return "\n".join(lines)
