"""Small datasets: enough optimizer steps for the trained heads (stage2.training.batch_for_steps).

The fixture is a 10-class long-tailed set of about 2,200 "ReLU features" that share a
large positive component (as a CNN's do), counts 800 down to 16, classes separable.
At batch 512 an epoch is 5 steps, 10 epochs 50 steps: too few for a cosine head that
starts from random rows. The floor (500 steps in all) shrinks the batch instead.
"""
import numpy as np
import pytest

from lt_dist.stage2.methods import fit_method
from lt_dist.stage2.training import batch_for_steps
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

COUNTS = np.array([800, 500, 330, 220, 140, 90, 60, 40, 25, 16])
DIM = 128


def sample(counts, rng, centers, base):
    labels = np.repeat(np.arange(len(counts)), counts)
    features = np.maximum(base + centers[labels] + rng.normal(size=(len(labels), DIM)), 0.0)
    return FeatureSplit(features.astype(np.float32), labels)


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(len(COUNTS), DIM)) * 0.5
    base = np.abs(rng.normal(size=DIM)) * 5.0
    train = sample(COUNTS, rng, centers, base)
    test = sample(np.full(len(COUNTS), 50), np.random.default_rng(1), centers, base)
    joint = StageOneClassifier(np.zeros((len(COUNTS), DIM), np.float32), np.zeros(len(COUNTS), np.float32), COUNTS)
    return train, test, joint


def per_class_accuracy(predictor, split):
    predictions = predictor(split.features).argmax(1)
    return np.array([(predictions[split.labels == j] == j).mean() for j in range(len(COUNTS))])


def test_the_floor_shrinks_the_batch_only_when_training_is_short():
    assert batch_for_steps(115_846 * 10, 512, 500) == 512  # ImageNet-LT cRT: 2,260 steps already
    assert batch_for_steps(2_181 * 10, 512, 500) == 43  # 21810 // 500
    assert batch_for_steps(30, 512, 500) == 1
    assert batch_for_steps(2_181 * 10, 512, 0) == 512  # 0: off
    with pytest.raises(ValueError, match="min_steps"):
        batch_for_steps(10, 512, -1)


def test_the_cosine_classifier_learns_every_class_with_the_floor_and_not_without(splits):
    train, test, joint = splits
    with_floor = per_class_accuracy(fit_method("cosine", train, joint, {"threads": 1}), test)
    assert with_floor.min() >= 0.7, with_floor
    without = per_class_accuracy(fit_method("cosine", train, joint, {"threads": 1, "min_steps": 0}), test)
    assert without.min() < 0.3, without  # 50 steps in all: some class is never predicted
