"""lt_dist.stage2.later: the post-paper stage-2 methods, each against its formula computed here by hand
(float64 numpy), the batches each draws, and accuracy on long-tailed Gaussian blobs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lt_dist.models.heads import HEADS
from lt_dist.stage2 import later, training
from lt_dist.stage2.heads import AdjustedPredictor, CosinePredictor, DisAlignPredictor, LinearPredictor
from lt_dist.stage2.methods import DEFAULT_PARAMS, METHODS, SEARCH_SPACE, fit_method, resolve_params
from lt_dist.stage2.select import evaluate_logits
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier
from stage2_blobs import COUNTS as BLOB_COUNTS
from stage2_blobs import DIM, blobs, joint, test_split, train  # noqa: F401 (fixtures)

COUNTS = np.array(BLOB_COUNTS)  # many, many, medium, few, few
LATER = ("logit_adjust", "balanced_softmax", "label_aware_smoothing", "wb", "disalign")
TRAINED = ("balanced_softmax", "label_aware_smoothing", "wb", "disalign")


@pytest.fixture(scope="module")
def cosine_joint(joint) -> StageOneClassifier:
    """The same rows as a cosine stage-1 head of scale 16 (no bias)."""
    return StageOneClassifier(joint.weight, np.zeros(len(COUNTS), np.float32), COUNTS, cosine_scale=16.0)


@pytest.fixture
def recorded(monkeypatch):
    """Every train_head call of a fit: its config and, per step, the logits, labels and loss its loss saw."""
    calls, real = [], training.train_head

    def spy(groups, logits_fn, split, num_classes, config, seed, device=torch.device("cpu"), loss_fn=None,
            after_step=None):
        call = {"config": config, "groups": groups, "steps": []}
        calls.append(call)

        def recording(logits, labels):
            value = loss_fn(logits, labels)
            call["steps"].append((logits.detach().double().numpy().copy(), labels.numpy().copy(), float(value.detach())))
            return value

        return real(groups, logits_fn, split, num_classes, config, seed, device, loss_fn=recording,
                    after_step=after_step)

    monkeypatch.setattr(training, "train_head", spy)
    return calls


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropies(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B,) -log softmax(z)_y in float64."""
    return -log_softmax(z)[np.arange(len(y)), y]


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# ---- logit_adjust --------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.0, 0.7, 1.0, 2.0])
def test_logit_adjust_is_exactly_f_w_plus_b_minus_tau_log_prior(train, test_split, joint, tau):
    x = test_split.features
    logits = fit_method("logit_adjust", train, joint, {"tau": tau})(x)
    prior = COUNTS / COUNTS.sum()
    expected = (x @ joint.weight.T + joint.bias) - (tau * np.log(prior)).astype(np.float32)
    np.testing.assert_array_equal(logits, expected)  # bit for bit: the formula, in the order it is written
    assert logits.dtype == np.float32
    # and against the float64 formula of the issue
    exact = x.astype(np.float64) @ joint.weight.T.astype(np.float64) + joint.bias - tau * np.log(prior)
    np.testing.assert_allclose(logits, exact, rtol=1e-5, atol=1e-4)


def test_logit_adjust_ignores_the_training_features_and_reports_tau(train, joint):
    """No training: the counts come from the classifier, whatever rows `train` holds."""
    few_rows = FeatureSplit(train.features[:3], train.labels[:3])
    x = train.features[::50]
    predictor = fit_method("logit_adjust", few_rows, joint, {"tau": 0.5})
    np.testing.assert_array_equal(predictor(x), fit_method("logit_adjust", train, joint, {"tau": 0.5})(x))
    assert isinstance(predictor, AdjustedPredictor) and predictor.tau == 0.5
    np.testing.assert_array_equal(predictor.weight, joint.weight)
    assert DEFAULT_PARAMS["logit_adjust"] == {"tau": 1.0}
    assert [p["tau"] for p in SEARCH_SPACE["logit_adjust"]] == [p["tau"] for p in SEARCH_SPACE["tau_norm"]]


def test_logit_adjust_on_a_cosine_head_adjusts_its_cosine_logits(train, cosine_joint):
    x = train.features[::40].astype(np.float64)
    w = cosine_joint.weight.astype(np.float64)
    cosines = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    expected = 16.0 * cosines - 0.8 * np.log(COUNTS / COUNTS.sum())
    logits = fit_method("logit_adjust", train, cosine_joint, {"tau": 0.8})(x.astype(np.float32))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau, message", [(-0.1, "tau must be a finite number in \\[0.0, inf\\], got -0.1"),
                                          (float("nan"), "tau must be a finite number")])
def test_logit_adjust_refuses_a_negative_or_nan_tau(train, joint, tau, message):
    with pytest.raises(ValueError, match=message):
        fit_method("logit_adjust", train, joint, {"tau": tau})


@pytest.mark.parametrize("method", ["logit_adjust", "balanced_softmax", "wb", "disalign"])
def test_a_class_without_training_images_is_refused_by_the_count_based_methods(train, joint, method):
    empty = StageOneClassifier(joint.weight, joint.bias, np.array([500, 200, 0, 10, 5]))
    with pytest.raises(ValueError, match=f"^{method} needs training images in every class: class 2 has 0$"):
        fit_method(method, train, empty, {} if method == "logit_adjust" else {"epochs": 1})


# ---- balanced_softmax ----------------------------------------------------------------------------

def test_balanced_softmax_trains_on_ce_of_z_plus_log_n_over_instance_balanced_batches(train, joint, recorded):
    fit_method("balanced_softmax", train, joint, {"epochs": 1, "batch_size": 64, "min_steps": 0})
    (call,) = recorded
    assert call["config"].strategy == "instance"
    labels = np.concatenate([step[1] for step in call["steps"]])
    # one instance-balanced epoch: every training image once, so each class as often as it has images
    np.testing.assert_array_equal(np.bincount(labels, minlength=len(COUNTS)), COUNTS)
    for z, y, loss in call["steps"]:
        expected = cross_entropies(z + np.log(COUNTS), y).mean()
        assert loss == pytest.approx(expected, rel=1e-5)
        assert abs(loss - cross_entropies(z, y).mean()) > 1e-3  # the shift is really there


def test_balanced_softmax_predicts_with_plain_logits_from_crts_start(train, joint):
    """lr 0: nothing moves, so the predictor is the fresh layer cRT draws for the same seed, read as
    f W^T + b, with no log n_j added at test time."""
    params = {"lr": 0.0, "epochs": 1}
    predictor = fit_method("balanced_softmax", train, joint, params, seed=4)
    crt = fit_method("crt", train, joint, params, seed=4)
    assert isinstance(predictor, LinearPredictor)
    np.testing.assert_array_equal(predictor.weight, crt.weight)
    np.testing.assert_array_equal(predictor(train.features), crt(train.features))


# ---- label_aware_smoothing -----------------------------------------------------------------------

def eps_by_hand(counts, head: float, tail: float, shape: str) -> np.ndarray:
    out = []
    for n in counts:
        u = (n - min(counts)) / (max(counts) - min(counts))
        out.append(tail + (head - tail) * (math.sin(math.pi * u / 2) if shape == "concave" else u))
    return np.array(out)


@pytest.mark.parametrize("shape", ["concave", "linear"])
@pytest.mark.parametrize("head, tail", [(0.3, 0.0), (0.4, 0.1)])
def test_label_aware_eps_runs_from_head_to_tail_by_the_counts(shape, head, tail):
    eps = later.label_aware_eps(COUNTS, head, tail, shape)
    np.testing.assert_allclose(eps, eps_by_hand(COUNTS, head, tail, shape), rtol=1e-12)
    assert eps[0] == pytest.approx(head) and eps[-1] == pytest.approx(tail)
    assert np.all(np.diff(eps) <= 0)  # more images, more smoothing


def test_label_aware_eps_edges():
    np.testing.assert_allclose(later.label_aware_eps([7, 7, 7], 0.3, 0.1), [0.3, 0.3, 0.3])
    # concave lies above linear between the ends: medium classes get more of the head's smoothing
    concave, linear = (later.label_aware_eps(COUNTS, 0.4, 0.0, shape) for shape in ("concave", "linear"))
    assert np.all(concave[1:-1] > linear[1:-1])
    with pytest.raises(ValueError, match="unknown smoothing shape 'convex'; choose one of concave, linear"):
        later.label_aware_eps(COUNTS, 0.3, 0.0, "convex")
    with pytest.raises(ValueError, match="eps_head must be a finite number in \\[0.0, 1.0\\], got 1.5"):
        later.label_aware_eps(COUNTS, 1.5, 0.0)


def test_label_aware_smoothing_trains_on_the_smoothed_targets_over_class_balanced_batches(train, joint, recorded):
    params = {"epochs": 1, "batch_size": 64, "min_steps": 0, "eps_head": 0.4, "eps_tail": 0.1}
    predictor = fit_method("label_aware_smoothing", train, joint, params)
    (call,) = recorded
    assert call["config"].strategy == "class"
    eps = eps_by_hand(COUNTS, 0.4, 0.1, "concave")
    np.testing.assert_allclose(predictor.eps, eps, rtol=1e-12)
    for z, y, loss in call["steps"]:
        targets = np.full(z.shape, 0.0) + eps[y][:, None] / len(COUNTS)
        targets[np.arange(len(y)), y] += 1.0 - eps[y]
        assert np.allclose(targets.sum(axis=1), 1.0)
        assert loss == pytest.approx(-(targets * log_softmax(z)).sum(axis=1).mean(), rel=1e-5)
    labels = np.concatenate([step[1] for step in call["steps"]])
    counts = np.bincount(labels, minlength=len(COUNTS))
    assert counts.max() - counts.min() <= 1  # class-balanced quotas: n / C per class


# ---- wb ------------------------------------------------------------------------------------------

def cb_weights_by_hand(beta: float) -> np.ndarray:
    raw = (1 - beta) / (1 - beta ** COUNTS.astype(np.float64))
    return raw / raw.sum() * len(COUNTS)


def test_wb_rows_stay_within_the_maxnorm_threshold(train, joint):
    norms = np.linalg.norm(joint.weight.astype(np.float64), axis=1)
    predictor = fit_method("wb", train, joint, {})
    threshold = norms.min() + 0.1 * (norms.max() - norms.min())  # the official relative threshold
    assert predictor.threshold == pytest.approx(threshold, rel=1e-12)
    assert np.all(np.linalg.norm(predictor.weight, axis=1) <= threshold * (1 + 1e-6))


def test_wb_projection_holds_the_rows_where_the_loss_alone_would_not(train, joint):
    """No weight decay and thresh 0: the rows would grow past the smallest stage-1 row's norm, the
    projection after every step keeps them there; without it (thresh 10, far above) they grow."""
    params = {"epochs": 2, "weight_decay": 0.0, "lr": 0.1}
    smallest = np.linalg.norm(joint.weight, axis=1).min()
    held = np.linalg.norm(fit_method("wb", train, joint, {**params, "thresh": 0.0}).weight, axis=1)
    free = np.linalg.norm(fit_method("wb", train, joint, {**params, "thresh": 10.0}).weight, axis=1)
    assert np.all(held <= smallest * (1 + 1e-6)) and held.max() == pytest.approx(smallest, rel=1e-5)
    assert free.max() > 1.05 * smallest


def test_wb_loss_is_the_class_balanced_mean_over_instance_balanced_batches(train, joint, recorded):
    fit_method("wb", train, joint, {"epochs": 1, "beta": 0.99})
    (call,) = recorded
    assert call["config"].strategy == "instance" and call["config"].batch_size == 64
    weights = cb_weights_by_hand(0.99)
    for z, y, loss in call["steps"]:
        assert loss == pytest.approx(np.mean(weights[y] * cross_entropies(z, y)), rel=1e-5)
    labels = np.concatenate([step[1] for step in call["steps"]])
    np.testing.assert_array_equal(np.bincount(labels, minlength=len(COUNTS)), COUNTS)


def test_wb_starts_from_the_stage1_classifier(train, joint):
    predictor = fit_method("wb", train, joint, {"lr": 0.0, "epochs": 1, "thresh": 10.0})
    np.testing.assert_array_equal(predictor.weight, joint.weight)
    np.testing.assert_array_equal(predictor.bias, joint.bias)


def test_wb_on_a_cosine_head_fine_tunes_the_cosine_classifier(train, cosine_joint):
    predictor = fit_method("wb", train, cosine_joint, {"epochs": 2})
    assert isinstance(predictor, CosinePredictor) and float(predictor.scale) == 16.0
    norms = np.linalg.norm(predictor.weight, axis=1)
    assert np.all(norms <= predictor.threshold * (1 + 1e-6))
    assert not np.allclose(predictor.weight / norms[:, None],
                           cosine_joint.weight / np.linalg.norm(cosine_joint.weight, axis=1, keepdims=True))


def test_maxnorm_projection_by_hand():
    weight = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    later.project_rows_(weight, 1.0)
    np.testing.assert_allclose(weight.numpy(), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], rtol=1e-6)
    assert later.maxnorm_threshold(np.array([[3.0, 4.0], [0.3, 0.4]]), 0.5) == pytest.approx(0.5 + 0.5 * 4.5)


# ---- disalign ------------------------------------------------------------------------------------

def test_disalign_logits_follow_the_formula_from_its_learned_parameters(train, test_split, joint):
    predictor = fit_method("disalign", train, joint, {})
    assert isinstance(predictor, DisAlignPredictor)
    assert not np.allclose(predictor.scale, 1.0) and not np.allclose(predictor.shift, 0.0)
    x = test_split.features.astype(np.float64)
    z = x @ joint.weight.T.astype(np.float64) + joint.bias
    gate = sigmoid(x @ predictor.gate_weight.astype(np.float64) + predictor.gate_bias)[:, None]
    assert gate.std() > 0.01  # the gate differs between inputs here: the check covers it
    expected = (1 - gate) * z + gate * (predictor.scale * z + predictor.shift)
    np.testing.assert_allclose(predictor(test_split.features), expected, rtol=1e-5, atol=1e-4)


def test_the_training_logits_and_the_predictor_are_the_same_formula():
    """disalign_logits (what the fit trains) and DisAlignPredictor (what it returns), both by hand."""
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(7, 4)), rng.normal(size=(3, 4)), rng.normal(size=3)
    scale, shift, gate_weight, gate_bias = rng.normal(size=3), rng.normal(size=3), rng.normal(size=4), 0.3
    z = x @ w.T + b
    gate = sigmoid(x @ gate_weight + gate_bias)[:, None]
    expected = (1 - gate) * z + gate * (scale * z + shift)
    trained = later.disalign_logits(*(torch.tensor(v, dtype=torch.float64)
                                      for v in (z, x, scale, shift, gate_weight, gate_bias)))
    np.testing.assert_allclose(trained.numpy(), expected, rtol=1e-12)
    predictor = DisAlignPredictor(LinearPredictor(w, b), scale, shift, gate_weight, gate_bias)
    np.testing.assert_allclose(predictor(x), expected, rtol=1e-5, atol=1e-5)


def test_disalign_starts_at_the_joint_logits(train, joint):
    """s = 1, t = 0 at the start: with lr 0 the calibrated logits are z for every gate value."""
    predictor = fit_method("disalign", train, joint, {"lr": 0.0, "epochs": 1})
    np.testing.assert_array_equal(predictor.scale, np.ones(len(COUNTS), np.float32))
    np.testing.assert_array_equal(predictor.gate_weight, np.full(DIM, 0.1, np.float32))
    joint_logits = train.features @ joint.weight.T + joint.bias
    np.testing.assert_allclose(predictor(train.features), joint_logits, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("rho", [0.0, 1.0, 1.2])
def test_grw_weights_are_proportional_to_inverse_counts_to_the_rho(rho):
    weights = later.grw_weights(COUNTS, rho)
    raw = np.array([(1.0 / n) ** rho for n in COUNTS])
    np.testing.assert_allclose(weights, raw / raw.sum() * len(COUNTS), rtol=1e-12)
    assert weights.sum() == pytest.approx(len(COUNTS))


def test_disalign_loss_is_the_grw_weighted_mean_over_instance_balanced_batches(train, joint, recorded):
    fit_method("disalign", train, joint, {"epochs": 1, "rho": 0.8})
    (call,) = recorded
    assert call["config"].strategy == "instance"
    weights = (1.0 / COUNTS.astype(np.float64)) ** 0.8
    for z, y, loss in call["steps"]:
        expected = (weights[y] * cross_entropies(z, y)).sum() / weights[y].sum()
        assert loss == pytest.approx(expected, rel=1e-5)


def test_disalign_on_a_cosine_head_calibrates_its_cosine_logits(train, cosine_joint):
    predictor = fit_method("disalign", train, cosine_joint, {"epochs": 2})
    x, w = train.features[::30].astype(np.float64), cosine_joint.weight.astype(np.float64)
    z = 16.0 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    gate = sigmoid(x @ predictor.gate_weight + predictor.gate_bias)[:, None]
    expected = (1 - gate) * z + gate * (predictor.scale * z + predictor.shift)
    np.testing.assert_allclose(predictor(x.astype(np.float32)), expected, rtol=1e-5, atol=1e-4)


# ---- all of them ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def joint_scores(joint, test_split):
    return evaluate_logits(fit_method("joint", test_split, joint)(test_split.features), test_split.labels, COUNTS)


@pytest.mark.parametrize("method", LATER)
def test_each_method_beats_chance_and_the_joint_few_shot_accuracy(train, test_split, joint, joint_scores, method):
    scores = evaluate_logits(fit_method(method, train, joint, {}, seed=0)(test_split.features), test_split.labels,
                             COUNTS)
    assert scores["all"] >= 85.0  # chance is 20 on the class-balanced test split
    assert scores["few"] > joint_scores["few"] + 5.0  # each one corrects the joint classifier's head bias


@pytest.mark.parametrize("method", TRAINED)
def test_same_seed_same_logits_other_seed_other_logits(train, joint, method):
    run = lambda seed: fit_method(method, train, joint, {"epochs": 2, "min_steps": 50}, seed=seed)(train.features)
    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_the_tables_hold_every_later_method_with_a_head_and_a_small_search():
    for method in LATER:
        assert METHODS[method] is later.LATER_METHODS[method] and method in HEADS
        assert 1 <= len(SEARCH_SPACE[method]) <= 21
        for params in SEARCH_SPACE[method]:
            resolve_params(method, params)
    assert list(METHODS)[-len(LATER):] == list(LATER)


@pytest.mark.parametrize("method, params, message", [
    ("wb", {"thresh": -0.1}, "thresh must be a finite number in \\[0.0, inf\\], got -0.1"),
    ("wb", {"beta": 1.0}, "beta must be in \\[0, 1\\), got 1.0"),
    ("disalign", {"rho": float("inf")}, "rho must be a finite number, got inf"),
    ("label_aware_smoothing", {"shape": "exp"}, "unknown smoothing shape 'exp'"),
    ("balanced_softmax", {"momentun": 0.9}, "unknown parameter\\(s\\) 'momentun' for 'balanced_softmax'"),
    ("logit_adjust", {"epochs": 3}, "unknown parameter\\(s\\) 'epochs' for 'logit_adjust'; accepted: tau, threads, "
                                    "device$"),
])
def test_bad_parameters_are_refused_naming_them(train, joint, method, params, message):
    with pytest.raises(ValueError, match=message):
        fit_method(method, train, joint, params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", TRAINED)
def test_a_fit_on_the_gpu_matches_the_cpu_fit(train, joint, method):
    on_cpu = fit_method(method, train, joint, {"epochs": 2}, seed=3)(train.features)
    on_gpu = fit_method(method, train, joint, {"epochs": 2, "device": "cuda"}, seed=3)(train.features)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
