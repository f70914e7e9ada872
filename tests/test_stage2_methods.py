"""Stage-2 methods: each against its formula, and cRT on long-tailed Gaussian blobs."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import lt_dist.stage2 as stage2
from lt_dist.stage2 import heads
from lt_dist.stage2.methods import COMMON_PARAMS, DEFAULT_PARAMS, METHODS, SEARCH_SPACE, fit_method, resolve_params
from lt_dist.stage2.select import evaluate_logits
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier
from stage2_blobs import COUNTS, DIM, blobs, joint, test_split, train  # noqa: F401 (fixtures)


def test_tau_zero_gives_the_joint_logits_without_bias(train, joint):
    predictor = fit_method("tau_norm", train, joint, {"tau": 0.0})
    np.testing.assert_array_equal(predictor(train.features), train.features @ joint.weight.T)
    np.testing.assert_array_equal(stage2.tau_normalize(joint.weight, 0.0), joint.weight)


def test_tau_one_gives_l2_normalised_weights(train, joint):
    predictor = fit_method("tau_norm", train, joint, {"tau": 1.0})
    np.testing.assert_allclose(np.linalg.norm(predictor.weight, axis=1), 1.0, rtol=1e-6)
    expected = train.features @ (joint.weight / np.linalg.norm(joint.weight, axis=1, keepdims=True)).T
    np.testing.assert_allclose(predictor(train.features), expected, rtol=1e-5, atol=1e-5)


def test_tau_normalize_numpy_and_torch_agree_and_keep_their_kind():
    weight = (np.random.default_rng(3).normal(size=(4, 6)) * [[1], [2], [5], [0.1]]).astype(np.float32)
    out_np = stage2.tau_normalize(weight, 0.5)
    out_t = stage2.tau_normalize(torch.from_numpy(weight).double(), 0.5)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    np.testing.assert_allclose(out_np, out_t.numpy(), rtol=1e-6)
    expected = weight / np.linalg.norm(weight, axis=1, keepdims=True) ** 0.5
    np.testing.assert_allclose(out_np, expected, rtol=1e-6)


@pytest.mark.parametrize("tau", [-0.1, float("nan")])
def test_negative_tau_raises_naming_the_value(train, joint, tau):
    with pytest.raises(ValueError, match=str(tau)):
        stage2.tau_normalize(joint.weight, tau)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        fit_method("tau_norm", train, joint, {"tau": tau})


def brute_force_ncm(train: FeatureSplit, queries: np.ndarray, metric: str) -> np.ndarray:
    """Loop version of cl2n NCM, float64."""
    mean = train.features.astype(np.float64).mean(axis=0)
    unit = lambda v: (v - mean) / np.linalg.norm(v - mean)
    centroids = [np.mean([unit(f) for f in train.features[train.labels == j]], axis=0)
                 for j in range(train.labels.max() + 1)]
    logits = np.empty((len(queries), len(centroids)))
    for i, query in enumerate(queries):
        for j, centroid in enumerate(centroids):
            q = unit(query)
            logits[i, j] = (-np.sum((q - centroid) ** 2) if metric == "l2"
                            else q @ centroid / np.linalg.norm(centroid))
    return logits


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_ncm_against_brute_force_distances(train, test_split, joint, metric):
    queries = test_split.features[::37]
    expected = brute_force_ncm(train, queries, metric)
    direct = stage2.ncm_logits(train.features, train.labels, queries, metric=metric)
    fitted = fit_method("ncm", train, joint, {"metric": metric})(queries)
    np.testing.assert_allclose(direct, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(direct, fitted)
    assert direct.shape == (len(queries), len(COUNTS)) and direct.dtype == np.float32


def test_ncm_blocks_give_the_same_logits_and_empty_classes_never_win(train, test_split, monkeypatch):
    whole = stage2.ncm_logits(train.features, train.labels, test_split.features, num_classes=len(COUNTS) + 1)
    monkeypatch.setattr(heads, "_CHUNK", 7)  # many blocks, with a ragged last one
    blocked = stage2.ncm_logits(train.features, train.labels, test_split.features, num_classes=len(COUNTS) + 1)
    np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-6)
    assert np.isneginf(whole[:, -1]).all() and np.isfinite(whole[:, :-1]).all()


def test_ncm_unknown_metric_raises(train, joint):
    with pytest.raises(ValueError, match="'manhattan'"):
        fit_method("ncm", train, joint, {"metric": "manhattan"})


def test_lws_with_scales_fixed_at_one_equals_joint(train, joint):
    lws = fit_method("lws", train, joint, {"lr": 0.0})  # lr 0: the scales never move from 1
    np.testing.assert_array_equal(lws.scales, np.ones(len(COUNTS), dtype=np.float32))
    np.testing.assert_array_equal(lws(train.features), fit_method("joint", train, joint)(train.features))


def test_lws_predictor_is_the_scaled_classifier(train, joint):
    lws = fit_method("lws", train, joint, {})
    assert not np.allclose(lws.scales, 1.0)
    expected = lws.scales * (train.features @ joint.weight.T + joint.bias)
    np.testing.assert_allclose(lws(train.features), expected, rtol=1e-5, atol=1e-4)


def test_crt_on_separable_features_reaches_high_balanced_accuracy(train, test_split, joint):
    joint_scores = evaluate_logits(fit_method("joint", train, joint)(test_split.features), test_split.labels,
                                   joint.train_counts)
    crt_scores = evaluate_logits(fit_method("crt", train, joint, {}, seed=0)(test_split.features),
                                 test_split.labels, joint.train_counts)
    assert crt_scores["all"] >= 90.0  # the test split is class-balanced: "all" is balanced accuracy
    assert crt_scores["few"] > joint_scores["few"] + 10.0  # the instance-balanced joint neglects the tail


def test_learned_tau_moves_tau_and_reports_it(train, joint):
    predictor = fit_method("learned_tau", train, joint, {})
    assert isinstance(predictor.tau, float) and predictor.tau != DEFAULT_PARAMS["learned_tau"]["tau_init"]
    np.testing.assert_allclose(predictor.weight, stage2.tau_normalize(joint.weight, predictor.tau), rtol=1e-6)


def test_cosine_logits_are_bounded_by_the_scale(train, joint):
    predictor = fit_method("cosine", train, joint, {})
    logits = predictor(train.features)
    assert np.abs(logits).max() <= predictor.scale * (1 + 1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_through_the_one_signature(train, test_split, joint, method):
    predictor = METHODS[method](train, joint, {"threads": 1}, 0)
    logits = predictor(test_split.features)
    assert logits.shape == (len(test_split.labels), len(COUNTS)) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    for params in SEARCH_SPACE[method]:
        resolve_params(method, params)  # every searched key is a known parameter


@pytest.mark.parametrize("method", ["crt", "lws", "learned_tau", "cosine"])
def test_same_seed_same_logits_other_seed_other_logits(train, joint, method):
    run = lambda seed: fit_method(method, train, joint, {"epochs": 2}, seed=seed)(train.features)
    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_threads_param_is_restored_after_the_fit(train, joint):
    before = torch.get_num_threads()
    fit_method("crt", train, joint, {"threads": 1, "epochs": 1})
    assert torch.get_num_threads() == before


def test_unknown_method_and_parameter_raise_with_the_accepted_names(train, joint):
    with pytest.raises(ValueError, match="'knn'.*joint, ncm, tau_norm, crt, lws, learned_tau, cosine"):
        fit_method("knn", train, joint)
    with pytest.raises(ValueError, match="'momentun'.*momentum"):
        fit_method("crt", train, joint, {"momentun": 0.9})


def test_search_space_matches_the_official_grids():
    assert [p["tau"] for p in SEARCH_SPACE["tau_norm"]] == [round(0.1 * i, 1) for i in range(21)]
    assert SEARCH_SPACE["tau_norm"][7] == {"tau": 0.7} and len(SEARCH_SPACE["tau_norm"]) == 21
    assert [p["lr"] for p in SEARCH_SPACE["crt"]] == [p["lr"] for p in SEARCH_SPACE["lws"]] == [0.05, 0.2, 0.8]
    assert set(SEARCH_SPACE) == set(METHODS) == set(DEFAULT_PARAMS)


@pytest.mark.parametrize("tau", [1.5, 2.0])  # the grid reaches 2.0: tau must not be clamped at 1
def test_tau_above_one_divides_by_a_higher_power_of_the_norm(train, joint, tau):
    weight64 = joint.weight.astype(np.float64)
    norms = np.linalg.norm(weight64, axis=1, keepdims=True)
    expected = weight64 / norms ** tau
    predictor = fit_method("tau_norm", train, joint, {"tau": tau})
    np.testing.assert_allclose(predictor.weight, expected, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(predictor.weight, axis=1), norms[:, 0] ** (1 - tau), rtol=1e-5)
    np.testing.assert_allclose(predictor(train.features[:50]), train.features[:50] @ expected.T, rtol=1e-4, atol=1e-5)
    assert predictor.tau == tau


@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"), ("gpu0", "unknown device 'gpu0'")]
                         + ([] if torch.cuda.is_available() else [("cuda", "device 'cuda' needs CUDA")]))
def test_a_device_that_cannot_work_is_refused_naming_it(train, joint, device, message):
    with pytest.raises(ValueError, match=message):
        fit_method("crt", train, joint, {"device": device, "epochs": 1})


@pytest.mark.parametrize("method", ["crt", "lws", "learned_tau", "cosine"])
def test_explicit_cpu_device_is_the_default_fit(train, joint, method):
    """"device" moves the parameters and batches; on the CPU it changes no number."""
    default = fit_method(method, train, joint, {"epochs": 1}, seed=3)(train.features)
    on_cpu = fit_method(method, train, joint, {"epochs": 1, "device": "cpu"}, seed=3)(train.features)
    np.testing.assert_array_equal(default, on_cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.py fits cRT there)")
@pytest.mark.parametrize("method", ["crt", "lws", "learned_tau", "cosine"])
def test_a_fit_on_the_gpu_matches_the_cpu_fit(train, joint, method):
    on_cpu = fit_method(method, train, joint, {"epochs": 2}, seed=3)(train.features)
    on_gpu = fit_method(method, train, joint, {"epochs": 2, "device": "cuda"}, seed=3)(train.features)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)


def test_unknown_names_are_refused_in_one_exact_line():
    methods = ", ".join(["joint", "ncm", "tau_norm", "crt", "lws", "learned_tau", "cosine", "logit_adjust",
                         "balanced_softmax", "label_aware_smoothing", "wb", "disalign"])
    message = f"unknown stage-2 method 'dot'; choose one of {methods}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        resolve_params("dot", {})
    accepted = ", ".join(["lr", "batch_size", "momentum", "lr_schedule", "min_steps", "keep_best", "epochs", "weight_decay",
                          "threads", "device"])
    message = f"unknown parameter(s) 'epoch', 'lrr' for 'crt'; accepted: {accepted}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        resolve_params("crt", {"lrr": 1, "epoch": 3})
    assert set(COMMON_PARAMS) == {"threads", "device"}


def learned_size(method: str, predictor) -> float:
    """What weight decay pulls towards 0 in each trained method."""
    if method == "lws":
        return float(np.abs(predictor.scales).mean())
    if method == "learned_tau":
        return float(predictor.tau)
    return float(np.linalg.norm(predictor.weight))


@pytest.mark.parametrize("method", ["crt", "lws", "learned_tau", "cosine"])
def test_weight_decay_reaches_what_each_method_learns(train, joint, method):
    fits = [fit_method(method, train, joint, {"epochs": 2, "weight_decay": decay, "min_steps": 50}, seed=0)
            for decay in (0.0, 0.3)]
    assert learned_size(method, fits[1]) < 0.95 * learned_size(method, fits[0])


def test_crt_learns_the_bias_that_off_centre_classes_need():
    """Two 1-D classes at x = 1 and x = 3: only a bias puts the boundary near 2 (W x alone cannot)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [40, 8])
    features = (np.where(labels == 0, 1.0, 3.0) + 0.1 * rng.standard_normal(len(labels)))[:, None].astype(np.float32)
    classifier = StageOneClassifier(np.zeros((2, 1), np.float32), np.zeros(2, np.float32), np.array([40, 8]))
    predictor = fit_method("crt", FeatureSplit(features, labels), classifier, {"epochs": 20, "lr": 0.5})
    queries = np.array([[1.0], [1.5], [2.5], [3.0]], dtype=np.float32)
    assert predictor(queries).argmax(axis=1).tolist() == [0, 0, 1, 1]


def test_fit_method_default_seed_is_zero(train, joint):
    params = {"epochs": 1, "min_steps": 20}
    np.testing.assert_array_equal(fit_method("crt", train, joint, params)(train.features),
                                  fit_method("crt", train, joint, params, seed=0)(train.features))


def test_ncm_has_a_column_for_every_class_of_the_classifier(train, joint):
    """The last class without training rows still gets a (-inf) column: logits are (N, C) of the classifier."""
    rows = train.labels < len(COUNTS) - 1
    predictor = fit_method("ncm", FeatureSplit(train.features[rows], train.labels[rows]), joint, {})
    logits = predictor(train.features[:5])
    assert logits.shape == (5, len(COUNTS)) and np.isneginf(logits[:, -1]).all()


def test_cosine_scale_stays_fixed_unless_it_is_learned(train, joint):
    params = {"epochs": 1, "min_steps": 50, "scale_init": 7.0}
    assert float(fit_method("cosine", train, joint, params).scale) == 7.0
    learned = float(fit_method("cosine", train, joint, {**params, "learn_scale": True}).scale)
    assert learned != 7.0


def test_learned_tau_starts_from_tau_init(train, joint):
    """With lr 0 nothing moves: the reported tau is tau_init and the weights are W / ||W||^tau_init."""
    predictor = fit_method("learned_tau", train, joint, {"epochs": 1, "lr": 0.0, "tau_init": 0.5})
    assert predictor.tau == 0.5
    np.testing.assert_allclose(predictor.weight, joint.weight / np.linalg.norm(joint.weight, axis=1,
                                                                               keepdims=True) ** 0.5, rtol=1e-6)


@pytest.mark.parametrize("method", ["joint", "ncm", "tau_norm"])
def test_methods_without_training_refuse_unknown_parameters_too(train, joint, method):
    with pytest.raises(ValueError, match=f"unknown parameter\\(s\\) 'bogus' for '{method}'"):
        fit_method(method, train, joint, {"bogus": 1})
