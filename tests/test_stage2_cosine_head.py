"""Stage-2 methods on stored features when the stage-1 head was a cosine head (LDAM runs)."""
import numpy as np
import pytest

from lt_dist.stage2 import store
from lt_dist.stage2.methods import fit_method
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(3, 5)).astype(np.float32) * np.array([[3.0], [1.0], [0.2]], dtype=np.float32)
COUNTS = np.array([50, 10, 4])
LABELS = np.repeat(np.arange(3), COUNTS)
FEATURES = (WEIGHT[LABELS] / np.linalg.norm(WEIGHT[LABELS], axis=1, keepdims=True)
            + 0.8 * RNG.normal(size=(len(LABELS), 5))).astype(np.float32) * 5.0
SCALE = 1.0  # an LDAM stage-1 head: cosines, the loss held the scale


def cosines_by_hand(features, weight):
    x = features.astype(np.float64) / np.linalg.norm(features, axis=1, keepdims=True)
    w = weight.astype(np.float64) / np.linalg.norm(weight, axis=1, keepdims=True)
    return x @ w.T


def classifier():
    return StageOneClassifier(WEIGHT, np.zeros(3, np.float32), COUNTS, cosine_scale=SCALE)


def test_joint_and_tau_norm_are_the_cosine_classifier_for_every_tau():
    train = FeatureSplit(FEATURES, LABELS)
    expected = SCALE * cosines_by_hand(FEATURES, WEIGHT)
    assert np.allclose(fit_method("joint", train, classifier())(FEATURES), expected, atol=1e-5)
    for tau in (0.0, 0.7, 2.0):
        predictor = fit_method("tau_norm", train, classifier(), {"tau": tau})
        assert np.allclose(predictor(FEATURES), expected, atol=1e-5) and predictor.tau == tau


def test_lws_scales_the_cosine_logits_per_class():
    train = FeatureSplit(FEATURES, LABELS)
    predictor = fit_method("lws", train, classifier(), {"epochs": 20, "batch_size": 16, "lr": 0.5, "threads": 1})
    scales = predictor.scales
    assert scales.shape == (3,) and not np.allclose(scales, 1.0)
    expected = SCALE * cosines_by_hand(FEATURES, WEIGHT) * scales
    assert np.allclose(predictor(FEATURES), expected, atol=1e-4)


def test_learned_tau_on_a_cosine_head_is_the_cosine_classifier_at_tau_init():
    """Normalised rows leave tau no gradient: the head is returned unchanged, reporting tau_init."""
    train = FeatureSplit(FEATURES, LABELS)
    predictor = fit_method("learned_tau", train, classifier(), {"tau_init": 0.6})
    assert predictor.tau == 0.6
    assert np.allclose(predictor(FEATURES), SCALE * cosines_by_hand(FEATURES, WEIGHT), atol=1e-5)


def test_the_head_kind_travels_through_the_feature_store(tmp_path):
    store.write_classifier(str(tmp_path), WEIGHT, np.zeros(3, np.float32), COUNTS, ["a", "b", "c"])
    store.write_index(str(tmp_path), {"head": "cosine", "cosine_scale": 1.0})
    assert store.read_classifier(str(tmp_path))["cosine_scale"] == pytest.approx(1.0)
    store.write_index(str(tmp_path), {"head": "linear"})
    assert store.read_classifier(str(tmp_path))["cosine_scale"] is None
