"""Stage-1 losses (docs/METHOD.md, "Stage 1"); every one maps (logits (N, C), targets (N,)) -> scalar.

    ce              cross-entropy
    focal           mean (1 - h)^gamma * CE, h the softmax probability of the true class
    class_balanced  mean w_y * CE, w_j = (1 - beta) / (1 - beta^n_j) normalised to sum to C
    class_balanced_focal  mean w_y * (1 - h)^gamma * CE (the paper's Appendix A baseline, softmax form)
    ldam            CE(s * (z - Delta_y e_y)), Delta_j ∝ n_j^(-1/4), max Delta = max_margin;
                    with drw: class-balanced weights from epoch drw_start * T on
                    (meant for cosine-like logits in [-1, 1], as in Cao et al.)
    logit_adjusted  CE(z + tau * log p), p_j = n_j / n (Menon et al. 2021)
    balanced_softmax  CE(z + log n_j) (Ren et al. 2020); the model's z is the prediction at test
All are built from plain arguments by name through LOSSES; `set_epoch` lets the
deferred re-weighting move with training.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def class_balanced_weights(samples_per_class: np.ndarray, beta: float) -> torch.Tensor:
    """(C,) float32 (1 - beta) / (1 - beta^n_j), normalised to sum to C (Cui et al. 2019)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = np.asarray(samples_per_class, dtype=np.float64)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.tensor(weights / weights.sum() * len(counts), dtype=torch.float32)


class CrossEntropy(nn.Module):
    """Plain cross-entropy."""

    def __init__(self, samples_per_class: np.ndarray):
        super().__init__()

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Losses that change over training override this."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


class FocalLoss(CrossEntropy):
    """(1 - h)^gamma * CE, averaged over the batch (Lin et al. 2017)."""

    def __init__(self, samples_per_class: np.ndarray, gamma: float = 2.0):
        super().__init__(samples_per_class)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_h = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        return ((1 - log_h.exp()) ** self.gamma * -log_h).mean()


class ClassBalancedLoss(CrossEntropy):
    """w_y * CE averaged over the batch, w from class_balanced_weights."""

    def __init__(self, samples_per_class: np.ndarray, beta: float = 0.9999):
        super().__init__(samples_per_class)
        self.register_buffer("weights", class_balanced_weights(samples_per_class, beta))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(logits.float(), targets, reduction="none")
        return (self.weights[targets] * per_sample).mean()


class ClassBalancedFocalLoss(CrossEntropy):
    """w_y (1 - h)^gamma CE averaged over the batch: class-balanced weights on the focal loss (Cui et al. 2019)."""

    def __init__(self, samples_per_class: np.ndarray, beta: float = 0.9999, gamma: float = 2.0):
        super().__init__(samples_per_class)
        self.register_buffer("weights", class_balanced_weights(samples_per_class, beta))
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_h = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        return (self.weights[targets] * (1 - log_h.exp()) ** self.gamma * -log_h).mean()


class LDAMLoss(CrossEntropy):
    """Label-distribution-aware margins with optional deferred re-weighting (Cao et al. 2019)."""

    def __init__(self, samples_per_class: np.ndarray, max_margin: float = 0.5, scale: float = 30.0,
                 drw: bool = True, drw_start: float = 0.8, beta: float = 0.9999):
        super().__init__(samples_per_class)
        margins = 1.0 / np.power(np.asarray(samples_per_class, dtype=np.float64), 0.25)
        self.register_buffer("margins", torch.tensor(margins * (max_margin / margins.max()), dtype=torch.float32))
        self.register_buffer("drw_weights", class_balanced_weights(samples_per_class, beta))
        self.scale, self.drw, self.drw_start = scale, drw, drw_start
        self.reweight = False

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        self.reweight = self.drw and epoch >= int(self.drw_start * num_epochs)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shifted = logits.float() - F.one_hot(targets, logits.shape[1]) * self.margins[targets][:, None]
        weight = self.drw_weights if self.reweight else None
        return F.cross_entropy(self.scale * shifted, targets, weight=weight)


class LogitAdjustedLoss(CrossEntropy):
    """CE on logits + tau * log prior (Menon et al. 2021; balanced softmax at tau = 1)."""

    def __init__(self, samples_per_class: np.ndarray, tau: float = 1.0):
        super().__init__(samples_per_class)
        counts = np.asarray(samples_per_class, dtype=np.float64)
        self.register_buffer("adjustment", torch.tensor(tau * np.log(counts / counts.sum()), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.adjustment, targets)


class BalancedSoftmaxLoss(CrossEntropy):
    """CE on logits + log n_j (Ren et al. 2020, Balanced Softmax): the softmax of training sees each class's
    count, so the model's own logits z estimate the class-balanced posterior."""

    def __init__(self, samples_per_class: np.ndarray):
        super().__init__(samples_per_class)
        counts = np.asarray(samples_per_class, dtype=np.float64)
        self.register_buffer("log_counts", torch.tensor(np.log(counts), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.log_counts, targets)


LOSSES: dict[str, type[CrossEntropy]] = {
    "ce": CrossEntropy,
    "focal": FocalLoss,
    "class_balanced": ClassBalancedLoss,
    "class_balanced_focal": ClassBalancedFocalLoss,
    "ldam": LDAMLoss,
    "logit_adjusted": LogitAdjustedLoss,
    "balanced_softmax": BalancedSoftmaxLoss,
}


def build_loss(name: str, samples_per_class: np.ndarray, **params) -> CrossEntropy:
    """The loss called `name` for the given training counts; params go to its constructor."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    counts = np.asarray(samples_per_class)
    if (counts <= 0).any():
        raise ValueError(f"every class needs training samples; class {int(np.argmin(counts))} has {counts.min()}")
    try:
        return LOSSES[name](counts, **params)
    except TypeError as error:
        raise ValueError(f"bad parameters for loss {name!r}: {error}") from None
