"""Long-tailed subsets of a balanced source (pure functions, seeded).

Profiles (class j = 0 .. C-1 in label order, j = 0 the largest):
    exp:    n_j = n_max * imbalance^(-j / (C - 1))                (CIFAR-10-LT style)
    pareto: n_j = n_max * (1 + (j / (C - 1)) * (imbalance^(1/alpha) - 1))^(-alpha)
            a Pareto (Lomax) decay with the same two end points as exp: the head
            falls faster and the tail is longer for small alpha (ImageNet-LT style,
            alpha = 6); alpha -> infinity recovers exp.
Counts are floored after a 1e-9 nudge so 1000 * 100^-1 gives 10, not 9.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from lt_dist.errors import UserInputError
from lt_dist.shards.sources import Item

PROFILES = ("exp", "pareto")


def profile_counts(profile: str, num_classes: int, max_per_class: int,
                   imbalance: float, alpha: float = 6.0) -> np.ndarray:
    """Target images per class for a long-tailed profile.

    Returns:
        (C,) int64, non-increasing, first = max_per_class, last ~ max_per_class / imbalance.
    """
    if profile not in PROFILES:
        raise UserInputError(f"unknown --profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if not 1 <= imbalance < float("inf"):  # NaN fails this too
        raise UserInputError(f"--imbalance must be a finite number >= 1, got {imbalance}")
    if max_per_class < 1:
        raise UserInputError(f"--max-per-class must be >= 1, got {max_per_class}")
    if profile == "pareto" and not 0 < alpha < float("inf"):
        raise UserInputError(f"--alpha must be a finite number > 0, got {alpha}")
    position = np.arange(num_classes) / max(num_classes - 1, 1)  # j / (C - 1)
    if profile == "exp":
        fraction = imbalance ** -position
    else:
        fraction = (1 + position * (imbalance ** (1 / alpha) - 1)) ** -alpha
    counts = np.floor(max_per_class * fraction + 1e-9).astype(np.int64)
    return np.maximum(counts, 1)


def group_by_label(items: list[Item], num_classes: int) -> list[list[Item]]:
    """Items per class, each list sorted by id (a stable order whatever the source order)."""
    groups: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.label].append(item)
    return [sorted(groups[label], key=lambda item: item.id) for label in range(num_classes)]


def select_long_tailed(items: list[Item], target_counts: np.ndarray, val_per_class: int,
                       seed: int) -> tuple[list[Item], list[Item]]:
    """Draw the long-tailed train subset and a balanced held-out val set.

    Per class, a seeded permutation of the class's images (sorted by id) gives the
    first n_j to train and the next val_per_class to val, so val never overlaps
    train and the result depends only on (ids, counts, seed).

    Returns:
        (train_items, val_items), each grouped by label then in permutation order.
    """
    per_class = group_by_label(items, len(target_counts))
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, class_items in enumerate(per_class):
        need = int(target_counts[label]) + val_per_class
        if len(class_items) < need:
            raise UserInputError(
                f"class {label} has {len(class_items)} images but the subset needs {need} "
                f"({int(target_counts[label])} train + {val_per_class} val); lower --max-per-class "
                f"or --val-per-class")
        order = rng.permutation(len(class_items))
        train += [class_items[i] for i in order[: target_counts[label]]]
        val += [class_items[i] for i in order[target_counts[label]: need]]
    return train, val


def hold_out_val(items: list[Item], num_classes: int, val_per_class: int,
                 seed: int) -> tuple[list[Item], list[Item]]:
    """Split val_per_class images per class off a set that is kept otherwise whole."""
    counts = np.array([len(group) - val_per_class for group in group_by_label(items, num_classes)])
    if (counts < 1).any():
        label = int(np.argmin(counts))
        raise UserInputError(f"class {label} has {counts[label] + val_per_class} images: too few "
                             f"to hold out --val-per-class {val_per_class} and keep one for training")
    return select_long_tailed(items, counts, val_per_class, seed)
