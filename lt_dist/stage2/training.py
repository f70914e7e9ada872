"""The one torch loop of the trained stage-2 methods (cRT, LWS, learned tau, cosine, and later.py's).

Frozen features in, a few parameters out: class-balanced batches from the project's
sampler (instance-balanced where a method asks), cross-entropy or the method's own
loss, SGD with momentum and a per-step cosine learning rate to 0, and an optional
hook after every optimizer step (Weight Balancing's MaxNorm projection).
float32 on the CPU or a GPU (`device`; the sampler always runs on the CPU); every random
choice comes from `seed` (sampler and initialisation), so the same seed, device and
thread count give the same parameters.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lt_dist.data.sampler import BalancedSampler, SamplerConfig
from lt_dist.dist import World
from lt_dist.stage2.types import FeatureSplit


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one stage-2 fit."""

    epochs: int = 10  # an epoch is len(train) samples, whatever the sampler (docs/METHOD.md)
    batch_size: int = 512
    lr: float = 0.2  # peak learning rate; cosine to 0 over all steps
    momentum: float = 0.9
    strategy: str | float = "class"  # the sampler: stage 2 is class-balanced; "instance" for baselines
    lr_schedule: str = "step"  # cosine per optimizer step, or "epoch": held for each epoch (official)
    keep_best: bool = False  # end with the epoch of best top-1 on train.holdout (val), not the last

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1 and lr >= 0, got {self.epochs}, "
                             f"{self.batch_size} and {self.lr}")
        if self.lr_schedule not in ("step", "epoch"):
            raise ValueError(f"lr_schedule must be 'step' or 'epoch', got {self.lr_schedule!r}")


def balanced_batches(labels: np.ndarray, num_classes: int, config: TrainConfig, seed: int) -> Iterator[np.ndarray]:
    """Row indices into `labels`, batch by batch, over all epochs.

    BalancedSampler reads class j as a contiguous block of rows sorted by label, so
    its rows are mapped back through a stable argsort of the labels.
    Yields:
        (<= batch_size,) int64 indices into the caller's row order.
    """
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    sampler = BalancedSampler(counts, SamplerConfig(config.strategy, seed=seed), World(), config.batch_size)
    for epoch in range(config.epochs):
        for rows in sampler.worker_batches(epoch):
            yield order[rows]


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    """Batches in one epoch of num_rows samples."""
    return -(-num_rows // batch_size)


def batch_for_steps(num_samples: int, batch_size: int, min_steps: int) -> int:
    """The batch size that spreads num_samples (rows x epochs) over at least min_steps optimizer steps:
    min(batch_size, max(1, num_samples // min_steps)); min_steps 0 keeps batch_size."""
    if min_steps < 0:
        raise ValueError(f"min_steps must be >= 0, got {min_steps}")
    if min_steps == 0:
        return batch_size
    return min(batch_size, max(1, num_samples // min_steps))


def cosine_lr(peak: float, step: int, total_steps: int) -> float:
    """0.5 * peak * (1 + cos(pi * step / total_steps)): peak at step 0, 0 at the end."""
    return 0.5 * peak * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def fit_device(device: str | torch.device) -> torch.device:
    """torch.device of a stage-2 fit; ValueError naming the value for an unknown one or CUDA without CUDA."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs CUDA, and torch.cuda.is_available() is False")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N")
    return resolved


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, C) logits, (B,) labels -> scalar


def train_head(param_groups: list[dict], logits_fn: Callable[[torch.Tensor], torch.Tensor], train: FeatureSplit,
               num_classes: int, config: TrainConfig, seed: int,
               device: torch.device = torch.device("cpu"), loss_fn: LossFn | None = None,
               after_step: Callable[[], None] | None = None) -> list[float]:
    """Minimise loss_fn (default cross-entropy) of logits_fn over batches of `train`; updates the params in place.

    Args:
        param_groups: torch.optim groups ({"params": [...], "weight_decay": float}).
        logits_fn: (B, D) float32 features -> (B, C) logits; its parameters live on `device`.
        device: where each batch goes (the features stay in host memory, memory-mapped).
        loss_fn: (logits (B, C), labels (B,) int64) -> scalar; None: F.cross_entropy.
        after_step: called after every optimizer step (e.g. a projection of the parameters).
    Returns:
        the loss of every step (floats, read back once at the end: no device sync per step).
    """
    if config.keep_best and train.holdout is None:
        raise ValueError("keep_best needs val features beside train (FeatureSplit.holdout); a search that "
                         "selects on the training estimate has none")
    optimizer = torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum)
    per_epoch = steps_per_epoch(len(train.labels), config.batch_size)
    total = config.epochs * per_epoch
    losses = []
    best = _BestEpoch(param_groups, logits_fn, train.holdout, device) if config.keep_best else None
    for step, rows in enumerate(balanced_batches(train.labels, num_classes, config, seed)):
        for group in optimizer.param_groups:
            group["lr"] = (cosine_lr(config.lr, step // per_epoch, config.epochs) if config.lr_schedule == "epoch"
                           else cosine_lr(config.lr, step, total))
        # augmented views (extract --train-views): epoch e reads view e % K; else the eval features
        source = train.views[(step // per_epoch) % len(train.views)] if train.views else train.features
        # fancy indexing copies: torch never sees the read-only memory-mapped matrix
        features = torch.from_numpy(source[rows]).to(device, non_blocking=True)
        labels = torch.from_numpy(train.labels[rows]).to(device, non_blocking=True)
        loss = (loss_fn or F.cross_entropy)(logits_fn(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        losses.append(loss.detach())
        if best is not None and (step + 1) % per_epoch == 0:
            best.score_epoch()
    if best is not None:
        best.restore()
    return torch.stack(losses).tolist() if losses else []


class _BestEpoch:
    """Keeps a copy of the parameters of the epoch with the best holdout top-1 (ties: the earlier)."""

    def __init__(self, param_groups: list[dict], logits_fn: Callable[[torch.Tensor], torch.Tensor],
                 holdout: FeatureSplit, device: torch.device) -> None:
        self.params = [p for group in param_groups for p in group["params"]]
        self.logits_fn, self.device = logits_fn, device
        self.features = torch.from_numpy(np.array(holdout.features))  # a copy: stored features are read-only maps
        self.labels = torch.from_numpy(np.array(holdout.labels))
        self.accuracy, self.saved = -1.0, None

    def score_epoch(self) -> None:
        """Top-1 of the current parameters on the holdout; copies them when it beats the best so far."""
        with torch.no_grad():
            correct = 0
            for start in range(0, len(self.labels), 8192):  # bounded memory on a large val set
                logits = self.logits_fn(self.features[start:start + 8192].to(self.device))
                correct += int((logits.argmax(1).cpu() == self.labels[start:start + 8192]).sum())
        accuracy = correct / max(len(self.labels), 1)
        if accuracy > self.accuracy:
            self.accuracy, self.saved = accuracy, [p.detach().clone() for p in self.params]

    def restore(self) -> None:
        """Put the best epoch's parameters back (in place: the caller's tensors)."""
        if self.saved is not None:
            with torch.no_grad():
                for param, saved in zip(self.params, self.saved):
                    param.copy_(saved)


def train_with_params(params: dict, groups: list[dict], logits_fn: Callable[[torch.Tensor], torch.Tensor],
                      train: FeatureSplit, num_classes: int, seed: int, *, strategy: str = "class",
                      loss_fn: LossFn | None = None, after_step: Callable[[], None] | None = None) -> list[float]:
    """train_head with a method's resolved optimisation params (epochs, batch_size, min_steps, lr, momentum,
    lr_schedule, keep_best, threads, device), on `strategy` batches ("class" or "instance"); returns the step losses."""
    config = TrainConfig(epochs=int(params["epochs"]),
                         batch_size=batch_for_steps(len(train.labels) * int(params["epochs"]),
                                                    int(params["batch_size"]), int(params["min_steps"])),
                         lr=float(params["lr"]), momentum=float(params["momentum"]), strategy=strategy,
                         lr_schedule=str(params["lr_schedule"]), keep_best=bool(params["keep_best"]))
    with torch_threads(params["threads"]):
        return train_head(groups, logits_fn, train, num_classes, config, seed, device=fit_device(params["device"]),
                          loss_fn=loss_fn, after_step=after_step)


def uniform_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): nn.Linear's default bounds, from a seeded generator
    (nn.Linear itself would draw from torch's global state)."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads (None: leave as is), then restore."""
    if threads is None:
        yield
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
