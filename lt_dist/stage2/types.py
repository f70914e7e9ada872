"""Value types of stage 2: stored features of one split and the stage-1 classifier.

A Predictor is anything callable as features (N, D) -> logits (N, C) float32; the
methods in methods.py return one (small classes in heads.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Predictor(Protocol):
    """features (N, D) float32 -> logits (N, C) float32."""

    def __call__(self, features: np.ndarray) -> np.ndarray: ...


@dataclass
class FeatureSplit:
    """Frozen-backbone features of one split, in any row order.

    Converted on construction without copying when the dtypes already match (stored
    features are memory-mapped, read-only views: nothing here writes to them).
    """

    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, 0 .. C-1
    views: tuple = ()  # K (N, D) augmented versions of `features`, same rows; trained heads use view e % K in epoch e
    # the val features beside train: trained heads with keep_best score it after every epoch
    holdout: FeatureSplit | None = None

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.views = tuple(np.asarray(view, dtype=np.float32) for view in self.views)
        if any(view.shape != self.features.shape for view in self.views):
            raise ValueError(f"every view must have the features' shape {self.features.shape}")
        if self.features.ndim != 2 or self.labels.shape != (len(self.features),):
            raise ValueError(f"need features (N, D) and labels (N,), got {self.features.shape} "
                             f"and {self.labels.shape}")
        if len(self.labels) and self.labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {int(self.labels.min())}")


@dataclass
class StageOneClassifier:
    """The jointly trained classifier and the training counts it came with.

    A linear head gives logits f W^T + b; a cosine head (cosine_scale set, bias zeros)
    gives cosine_scale * cos(f, w_j).
    """

    weight: np.ndarray  # (C, D) float32, one row per class
    bias: np.ndarray  # (C,) float32
    train_counts: np.ndarray  # (C,) int64, training images per class (shot groups)
    cosine_scale: float | None = None  # None: a linear head; else the stage-1 cosine head's scale s

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        self.train_counts = np.asarray(self.train_counts, dtype=np.int64)
        num_classes = len(self.weight)
        if self.weight.ndim != 2 or self.bias.shape != (num_classes,) or self.train_counts.shape != (num_classes,):
            raise ValueError(f"need weight (C, D), bias (C,) and train_counts (C,), got {self.weight.shape}, "
                             f"{self.bias.shape} and {self.train_counts.shape}")

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.weight.shape[0])
