"""lt_dist.stage2.heads on hand-made numbers: the predictors' dtypes and state, NCM's empty classes
and label handling, each checked against a direct numpy computation of the formula."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from lt_dist.stage2.heads import CosinePredictor, LinearPredictor, NCMPredictor, ncm_centroids, ncm_logits

RNG = np.random.default_rng(3)
FEATURES = RNG.standard_normal((7, 4))  # float64 on purpose: the predictors promise float32 out
WEIGHT = RNG.standard_normal((3, 4))


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_linear_predictor_gives_float32_logits_from_float64_inputs():
    bias = np.array([0.5, -1.0, 2.0])
    logits = LinearPredictor(WEIGHT, bias)(FEATURES)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, FEATURES @ WEIGHT.T + bias, rtol=1e-5, atol=1e-5)
    unbiased = LinearPredictor(WEIGHT)(FEATURES)
    assert unbiased.dtype == np.float32
    np.testing.assert_allclose(unbiased, FEATURES @ WEIGHT.T, rtol=1e-5, atol=1e-5)


def test_cosine_predictor_with_one_scale_and_with_per_class_scales():
    cosines = unit_rows(FEATURES) @ unit_rows(WEIGHT).T
    single = CosinePredictor(WEIGHT, 16.0)(FEATURES)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, 16.0 * cosines, rtol=1e-5, atol=1e-5)
    scales = np.array([1.0, 10.0, 0.5])  # LWS on a cosine head: column j times s_j
    np.testing.assert_allclose(CosinePredictor(WEIGHT, scales)(FEATURES), cosines * scales, rtol=1e-5, atol=1e-5)


def test_predictors_keep_their_method_state_as_attributes():
    """The saved head (stage2/saved.py) reads tau and the LWS scales back from these attributes."""
    cosine = CosinePredictor(WEIGHT, 16.0, tau=0.5, scales=[1.0, 2.0, 3.0])
    linear = LinearPredictor(WEIGHT, None, tau=0.7)
    assert (cosine.tau, cosine.scales, linear.tau) == (0.5, [1.0, 2.0, 3.0], 0.7)


def reference_ncm(train_x, train_y, queries, num_classes, metric):
    """The official "cl2n" NCM written out row by row."""
    mean = train_x.mean(axis=0)
    normalised = unit_rows(train_x - mean)
    out = np.full((len(queries), num_classes), -np.inf)
    for j in range(num_classes):
        if not (train_y == j).any():
            continue
        centroid = normalised[train_y == j].mean(axis=0)
        for i, query in enumerate(unit_rows(queries - mean)):
            out[i, j] = (-np.sum((query - centroid) ** 2) if metric == "l2"
                         else query @ centroid / np.linalg.norm(centroid))
    return out


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_an_ncm_class_without_training_rows_never_wins_and_warns_nothing(metric):
    train_y = np.array([0, 0, 2, 2, 2, 0])  # class 1 has no rows
    train_x = RNG.standard_normal((6, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0/0 for the empty class must not leak a RuntimeWarning
        mean, centroids = ncm_centroids(train_x, train_y, num_classes=3)
        logits = NCMPredictor(mean, centroids, metric)(FEATURES)
    assert np.isnan(centroids[1]).all() and np.isfinite(centroids[[0, 2]]).all()
    assert np.isneginf(logits[:, 1]).all() and np.isfinite(logits[:, [0, 2]]).all()
    np.testing.assert_allclose(logits, reference_ncm(train_x, train_y, FEATURES, 3, metric), rtol=1e-5, atol=1e-6)


def test_ncm_mean_is_float64_and_labels_of_any_integer_valued_dtype_work():
    train_x = RNG.standard_normal((8, 4)).astype(np.float32)
    labels = np.array([0, 1, 1, 2, 0, 2, 2, 1])
    mean, centroids = ncm_centroids(train_x, labels)
    assert mean.dtype == np.float64 and centroids.dtype == np.float64
    for other in (labels.astype(np.int32), labels.astype(np.uint8), labels.astype(np.float64)):
        other_mean, other_centroids = ncm_centroids(train_x, other)
        np.testing.assert_array_equal(other_centroids, centroids)


def test_ncm_default_metric_is_squared_euclidean():
    train_x, train_y = RNG.standard_normal((6, 4)), np.array([0, 1, 2, 0, 1, 2])
    mean, centroids = ncm_centroids(train_x, train_y)
    expected = reference_ncm(train_x, train_y, FEATURES, 3, "l2")
    np.testing.assert_allclose(NCMPredictor(mean, centroids)(FEATURES), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ncm_logits(train_x, train_y, FEATURES), expected, rtol=1e-5, atol=1e-6)


def test_an_unknown_ncm_metric_is_refused_with_the_choices():
    mean, centroids = np.zeros(4), np.ones((3, 4))
    message = "unknown NCM metric 'dot'; choose one of l2, cos"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        NCMPredictor(mean, centroids, "dot")
