"""Stage-2 methods against optima known in closed form.

LWS: two balanced Gaussian classes per axis, x | y ~ N(mu_y, I). The Bayes posterior has
logits mu_j . x - ||mu_j||^2 / 2. Give the stage-1 classifier the right directions with
wrong per-class norms, w_j = mu_j / a_j and b_j = -||mu_j||^2 / (2 a_j): then
f_j (w_j . x + b_j) is the posterior exactly when f_j = a_j, so cross-entropy on
balanced data is minimised there (and class-balanced sampling changes nothing with equal
counts). Learned tau: the bias is dropped and the logits are x (w_j / ||w_j||^tau)^T,
recomputed here from the reported tau.
"""
import numpy as np
import pytest

from lt_dist.stage2.methods import fit_method
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

SCALES = np.array([0.5, 1.0, 2.0, 4.0])


def test_lws_recovers_known_per_class_scales():
    rng = np.random.default_rng(0)
    classes, per_class = len(SCALES), 2000
    means = np.eye(classes) * 2.0
    weight = (means / SCALES[:, None]).astype(np.float32)
    bias = (-(means ** 2).sum(1) / (2 * SCALES)).astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class)
    features = (means[labels] + rng.normal(size=(len(labels), classes))).astype(np.float32)
    classifier = StageOneClassifier(weight, bias, np.full(classes, per_class))
    predictor = fit_method("lws", FeatureSplit(features, labels), classifier,
                           {"epochs": 10, "lr": 0.5, "weight_decay": 0.0, "threads": 1})
    np.testing.assert_allclose(predictor.scales, SCALES, rtol=0.1)


def test_learned_tau_drops_the_bias_and_uses_its_tau():
    rng = np.random.default_rng(1)
    counts = np.array([300, 60, 12])
    labels = np.repeat(np.arange(3), counts)
    centers = rng.normal(size=(3, 6)) * 2
    features = (centers[labels] + rng.normal(size=(len(labels), 6))).astype(np.float32)
    weight = (centers * np.array([[3.0], [1.0], [0.3]])).astype(np.float32)  # head-heavy norms
    bias = np.array([5.0, 0.0, -5.0], np.float32)  # a large bias that must not reach the logits
    predictor = fit_method("learned_tau", FeatureSplit(features, labels), StageOneClassifier(weight, bias, counts),
                           {"threads": 1})
    tau = predictor.tau
    rows = weight.astype(np.float64) / np.linalg.norm(weight, axis=1, keepdims=True) ** tau
    expected = features.astype(np.float64) @ rows.T
    assert tau != pytest.approx(1.0)  # it moved from its start
    np.testing.assert_allclose(predictor(features), expected, rtol=1e-4, atol=1e-4)
