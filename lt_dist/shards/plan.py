"""Decide what goes into each split before anything is written.

All checks that need no decoding happen here, so bad input stops the pack before a
single shard exists: unknown ids, labels out of range, duplicate keys, missing
files, classes left empty.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lt_dist.errors import UserInputError
from lt_dist.shards.format import FORMAT_VERSION, make_key
from lt_dist.shards.sources import Item, Source, read_split_list
from lt_dist.shards.subset import hold_out_val, profile_counts, select_long_tailed


@dataclass(frozen=True)
class SubsetOptions:
    """How to cut the input split (all optional)."""

    profile: str | None = None  # "exp" | "pareto" | None (keep every image)
    imbalance: float = 100.0  # n_max / n_min of the profile
    alpha: float = 6.0  # pareto shape
    max_per_class: int | None = None  # n_max; default: the smallest class of the source
    val_per_class: int = 0  # balanced val held out of the images the subset left out
    seed: int = 0  # seeds the per-class permutations
    ids_file: str | None = None  # keep exactly the ids listed (a pack's ids.txt)


@dataclass
class SplitPlan:
    """Items of one split, checked, plus what was dropped before packing."""

    name: str
    items: list[Item]
    skipped: list[dict] = field(default_factory=list)
    file_sizes: list[int] = field(default_factory=list)  # bytes per item (0 for IDX)


def plan_splits(source: Source, input_split: str, subset: SubsetOptions) -> dict[str, list[Item]]:
    """Items per output split: the (subset of the) input split, val, and other source splits."""
    items = source.splits[input_split]
    num_classes = len(source.class_names)
    if subset.seed < 0:
        raise UserInputError(f"--seed must be >= 0, got {subset.seed}")
    if subset.val_per_class < 0:
        raise UserInputError(f"--val-per-class must be >= 0, got {subset.val_per_class}")
    if subset.ids_file:
        if subset.profile:
            raise UserInputError("--ids and --profile exclude each other: the id list already is the subset")
        items = _filter_ids(items, subset.ids_file)
    val: list[Item] = []
    if subset.profile:
        available = np.bincount([item.label for item in items], minlength=num_classes)
        n_max = subset.max_per_class or int(available.min()) - subset.val_per_class
        if n_max > available.max():  # checked before profile_counts sizes anything by it
            raise UserInputError(f"--max-per-class {n_max} is more than the largest class has "
                                 f"({int(available.max())} images)")
        counts = profile_counts(subset.profile, num_classes, n_max, subset.imbalance, subset.alpha)
        items, val = select_long_tailed(items, counts, subset.val_per_class, subset.seed)
    elif subset.max_per_class:
        raise UserInputError("--max-per-class needs --profile (exp or pareto)")
    elif subset.val_per_class:
        items, val = hold_out_val(items, num_classes, subset.val_per_class, subset.seed)
    splits = {input_split: items}
    if val:
        if "val" in source.splits or input_split == "val":
            raise UserInputError("--val-per-class would overwrite the source's own val split")
        splits["val"] = val
    for name, other in source.splits.items():
        splits.setdefault(name, other)
    return splits


def _filter_ids(items: list[Item], ids_file: str) -> list[Item]:
    wanted = {path: (label, line) for path, label, line in read_split_list(ids_file)}
    kept = [item for item in items if item.id in wanted]
    found = {item.id for item in kept}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise UserInputError(f"{ids_file}:{wanted[missing[0]][1]}: id {missing[0]!r} is not in the "
                             f"source ({len(missing)} ids missing)")
    for item in kept:
        if wanted[item.id][0] != item.label:
            raise UserInputError(f"{ids_file}:{wanted[item.id][1]}: id {item.id!r} has label "
                                 f"{wanted[item.id][0]} but the source says {item.label}")
    return kept


def check_split(name: str, items: list[Item], num_classes: int, skip_bad: bool) -> SplitPlan:
    """Duplicate keys, missing files and empty classes, before any writing."""
    keys = Counter(make_key(item.id) for item in items)
    duplicated = [key for key, count in keys.items() if count > 1]
    if duplicated:
        first = [item for item in items if make_key(item.id) == duplicated[0]]
        raise UserInputError(f"duplicate key {duplicated[0]!r} in split {name}: "
                             + ", ".join(item.origin for item in first[:3]))
    plan = SplitPlan(name, [])
    for item in items:
        if item.path is None:
            plan.items.append(item)
            plan.file_sizes.append(0)
            continue
        try:
            size = os.stat(item.path).st_size
        except OSError:
            if not skip_bad:
                raise UserInputError(f"missing image file {item.path} (declared at {item.origin}); "
                                     f"fix it or pass --on-bad-image skip") from None
            plan.skipped.append({"id": item.id, "origin": item.origin, "reason": "missing file"})
            continue
        plan.items.append(item)
        plan.file_sizes.append(size)
    counts = np.bincount([item.label for item in plan.items], minlength=num_classes)
    if (counts == 0).any():
        label = int(np.flatnonzero(counts == 0)[0])
        raise UserInputError(f"class {label} is left with zero images in split {name}")
    return plan


def fingerprint(plan: SplitPlan, class_names: list[str], shard_size: int, shard_count: int) -> str:
    """Hash of what a split will hold: decides whether a folder holds this pack or another."""
    digest = hashlib.sha256()
    header = {"format_version": FORMAT_VERSION, "classes": class_names,
              "shard_size": shard_size, "shard_count": shard_count}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for item, size in zip(plan.items, plan.file_sizes):
        digest.update(f"{item.id}\t{item.label}\t{size}\n".encode())
        if item.pixels is not None:
            digest.update(np.ascontiguousarray(item.pixels).tobytes())
    return digest.hexdigest()
