"""Mixup for stage 1 (Zhang et al., ICLR 2018), as MiSLAS trains its representation (Zhong et al. 2021).

A batch (x, y) becomes lam x + (1 - lam) x[perm] with lam ~ Beta(alpha, alpha) and perm a
permutation of the batch; the loss is lam L(z, y) + (1 - lam) L(z, y[perm]) for whatever
stage-1 loss L is chosen. Every draw comes from a generator seeded by (seed, epoch, rank,
batch index), like the loader's augmentation (data/loader.py batch_seed) but on a stream of
its own, so a resumed or repeated run mixes the same pairs. alpha 0 is off: the batch is
returned untouched. Pure functions: no run config, no global random state.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

MIXUP_STREAM = 0x6D6978  # "mix": keeps these draws apart from the augmentation's, seeded by the same four numbers


def mixup_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """Seed of one batch's mixup draws: fixed by (seed, epoch, rank, batch index)."""
    return int(np.random.SeedSequence([seed, epoch, rank, batch, MIXUP_STREAM]).generate_state(1)[0])


def mixup_draw(alpha: float, batch_size: int, seed: int) -> tuple[float, np.ndarray]:
    """(lam, perm) of one batch: lam ~ Beta(alpha, alpha) and a permutation of range(batch_size), both from
    numpy's generator seeded by `seed`. alpha 0: (1.0, the identity), nothing is drawn."""
    if not alpha >= 0.0:  # `not >=` also refuses NaN
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if alpha == 0.0:
        return 1.0, np.arange(batch_size)
    generator = np.random.default_rng(seed)
    lam = float(generator.beta(alpha, alpha))
    return lam, generator.permutation(batch_size)


def mix_batch(images: torch.Tensor, labels: torch.Tensor, lam: float,
              perm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lam x + (1 - lam) x[perm], y, y[perm]).

    Args: images (B, ...) any float dtype (kept), labels (B,) int64, perm (B,) a permutation.
    Returns: mixed images (B, ...), the labels a (B,) and b (B,) each sample is scored against.
    """
    index = torch.as_tensor(perm, dtype=torch.long, device=images.device)
    return lam * images + (1.0 - lam) * images[index], labels, labels[index.to(labels.device)]


def mixup_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor,
               labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float) -> torch.Tensor:
    """lam loss_fn(z, y_a) + (1 - lam) loss_fn(z, y_b): the chosen loss against both labels of a mixed sample."""
    return lam * loss_fn(logits, labels_a) + (1.0 - lam) * loss_fn(logits, labels_b)
