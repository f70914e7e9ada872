"""Long-tailed Gaussian blobs and a jointly trained (head-biased) linear classifier on them:
the shared fixtures of the stage-2 method tests (test_stage2_methods, test_stage2_later)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lt_dist.stage2.training import TrainConfig, train_head, uniform_init
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

COUNTS = [500, 200, 50, 10, 5]  # many, many, medium, few, few
DIM = 16


def blobs(counts: list[int], seed: int, separation: float = 1.0) -> FeatureSplit:
    """Gaussian blobs with unit noise around fixed class means (the same means for every split)."""
    means = np.random.default_rng(0).normal(size=(len(counts), DIM)) * separation
    labels = np.repeat(np.arange(len(counts)), counts)
    noise = np.random.default_rng(seed).normal(size=(len(labels), DIM))
    return FeatureSplit((means[labels] + noise).astype(np.float32), labels)


@pytest.fixture(scope="module")
def train() -> FeatureSplit:
    return blobs(COUNTS, seed=1)


@pytest.fixture(scope="module")
def test_split() -> FeatureSplit:
    return blobs([200] * len(COUNTS), seed=2)


@pytest.fixture(scope="module")
def joint(train) -> StageOneClassifier:
    """A linear stage-1 classifier from instance-balanced cross-entropy: biased towards the head."""
    generator = torch.Generator().manual_seed(0)
    weight = uniform_init((len(COUNTS), DIM), DIM, generator).requires_grad_()
    bias = uniform_init((len(COUNTS),), DIM, generator).requires_grad_()
    config = TrainConfig(epochs=30, batch_size=64, lr=0.2, strategy="instance")
    train_head([{"params": [weight, bias], "weight_decay": 5e-4}], lambda x: x @ weight.T + bias,
               train, len(COUNTS), config, seed=0)
    return StageOneClassifier(weight.detach().numpy(), bias.detach().numpy(), np.array(COUNTS))
