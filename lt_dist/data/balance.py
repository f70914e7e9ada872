"""Class sampling probabilities p_j ∝ n_j^q (docs/METHOD.md, "Sampling"). Pure numpy.

    instance     q = 1     every image equally likely
    class        q = 0     every class equally likely
    sqrt         q = 1/2
    progressive  p_j(t) = (1 - t/(T-1)) p_j(1) + t/(T-1) p_j(0), t = 0 .. T-1
                 (official code: epoch 0 instance-balanced, the last class-balanced)
A float q in [0, 1] is accepted wherever a name is. Classes with no images get 0.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Balancer = Callable[[np.ndarray, int, int], np.ndarray]


def power_probs(samples_per_class: np.ndarray, q: float) -> np.ndarray:
    """p_j = n_j^q / sum_i n_i^q.

    Args:
        samples_per_class: (C,) non-negative counts, at least one positive.
        q: exponent in [0, 1].
    Returns:
        (C,) float64 probabilities summing to 1; 0 for empty classes.
    """
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    counts = np.asarray(samples_per_class, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class counts must be a non-empty 1-D array of counts >= 0 with a positive "
                         f"total, got shape {counts.shape} and total {counts.sum() if counts.size else 0}")
    weights = np.where(counts > 0, counts ** float(q), 0.0)  # 0**0 would give an empty class weight 1
    return weights / weights.sum()


def progress_fraction(epoch: int, num_epochs: int) -> float:
    """lambda = t / (T - 1) for t = 0 .. T-1 (0 when T = 1), as numpy's linspace(0, 1, T)."""
    if num_epochs < 1 or not 0 <= epoch < num_epochs:
        raise ValueError(f"epoch {epoch} is outside 0 .. num_epochs-1 (num_epochs={num_epochs})")
    return epoch / (num_epochs - 1) if num_epochs > 1 else 0.0


def _fixed(q: float) -> Balancer:
    def balancer(samples_per_class: np.ndarray, epoch: int, num_epochs: int) -> np.ndarray:
        if epoch < 0:  # fixed policies ignore the schedule but not a negative epoch
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return power_probs(samples_per_class, q)

    return balancer


def _progressive(samples_per_class: np.ndarray, epoch: int, num_epochs: int) -> np.ndarray:
    fraction = progress_fraction(epoch, num_epochs)
    return (1 - fraction) * power_probs(samples_per_class, 1.0) + fraction * power_probs(samples_per_class, 0.0)


# The name table: every strategy is a function of (counts, epoch, num_epochs).
BALANCERS: dict[str, Balancer] = {
    "instance": _fixed(1.0),
    "class": _fixed(0.0),
    "sqrt": _fixed(0.5),
    "progressive": _progressive,
}


def resolve_strategy(strategy: str | float) -> Balancer:
    """The balancer for a name in BALANCERS or a float q in [0, 1] (also as text: "0.25")."""
    if isinstance(strategy, str) and strategy in BALANCERS:
        return BALANCERS[strategy]
    try:
        q = float(strategy)
    except (TypeError, ValueError):
        raise ValueError(f"unknown sampler {strategy!r}; choose one of {', '.join(BALANCERS)} "
                         f"or a number q in [0, 1]") from None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"sampler q must be in [0, 1], got {q}")
    return _fixed(q)


def class_probs(counts: np.ndarray, strategy: str | float, epoch: int = 0, num_epochs: int = 1) -> np.ndarray:
    """Class probabilities of a strategy at an epoch.

    Args:
        counts: (C,) training images per class.
        strategy: "instance" | "class" | "sqrt" | "progressive" | q in [0, 1].
        epoch: 0-based epoch; num_epochs: total epochs (progressive moves over them).
    Returns:
        (C,) float64, sums to 1.
    """
    return resolve_strategy(strategy)(np.asarray(counts), epoch, num_epochs)


def is_exact_instance(strategy: str | float) -> bool:
    """True for q = 1 at every epoch: the epoch can then be a permutation of all samples."""
    if isinstance(strategy, str) and strategy in BALANCERS:
        return strategy == "instance"
    return float(strategy) == 1.0
