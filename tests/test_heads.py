"""lt_dist.models.heads and lt_dist.stage2.saved: every stage-2 method's chosen classifier,
saved to safetensors + JSON and rebuilt as a torch module, gives the stage-2 predictor's logits."""
import json

import numpy as np
import pytest
import torch

from lt_dist.errors import UserInputError
from lt_dist.models.heads import HEADS, build_head
from lt_dist.stage2.methods import METHODS, fit_method
from lt_dist.stage2.saved import load_head, save_head, saved_methods
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

COUNTS = np.array([60, 25, 8, 3])
ATOL = 1e-5  # float32 matrix products in torch vs numpy: a few ulps of logits of size ~10


@pytest.fixture(scope="module")
def problem():
    """Long-tailed 16-d train features, held-out queries, and a head-heavy stage-1 classifier."""
    rng = np.random.default_rng(0)
    centers = 2.0 * rng.standard_normal((len(COUNTS), 16))
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    train = FeatureSplit((centers[labels] + rng.standard_normal((len(labels), 16))).astype(np.float32), labels)
    queries = (centers[rng.integers(0, len(COUNTS), 50)] + rng.standard_normal((50, 16))).astype(np.float32)
    weight = centers * np.sqrt(COUNTS / COUNTS.max())[:, None]
    classifier = StageOneClassifier(weight, np.log(COUNTS / COUNTS.sum()), COUNTS)
    return train, classifier, queries


SETTINGS = {"joint": {}, "ncm": {"metric": "l2"}, "tau_norm": {"tau": 0.7}, "crt": {"epochs": 2},
            "lws": {"epochs": 2}, "learned_tau": {"epochs": 2}, "cosine": {"epochs": 2}, "logit_adjust": {"tau": 0.7},
            "balanced_softmax": {"epochs": 2}, "label_aware_smoothing": {"epochs": 2}, "wb": {"epochs": 2},
            "disalign": {"epochs": 2}}


def test_every_method_has_a_head():
    assert set(HEADS) == set(METHODS) == set(SETTINGS)


@pytest.mark.parametrize("method", list(SETTINGS))
def test_saved_head_gives_the_stage2_logits(problem, method, tmp_path):
    train, classifier, queries = problem
    predictor = fit_method(method, train, classifier, SETTINGS[method], seed=0)
    save_head(str(tmp_path), method, predictor, {"params": SETTINGS[method]})
    tensors, record = load_head(str(tmp_path), method)
    head = build_head(method, {k: torch.from_numpy(v) for k, v in tensors.items()}, record["options"])
    with torch.no_grad():
        logits = head(torch.from_numpy(queries)).numpy()
    expected = predictor(queries)
    assert logits.dtype == np.float32 and logits.shape == expected.shape == (50, len(COUNTS))
    # rtol as well (merge of i10): the small-data floor of 500 optimizer steps (min_steps) trains
    # crt/cosine far past 2 epochs here, so crt's logits reach ~100, where a few ulps exceed ATOL
    assert np.allclose(logits, expected, atol=ATOL, rtol=1e-6), np.abs(logits - expected).max()
    assert np.array_equal(logits.argmax(1), expected.argmax(1))
    assert record["method"] == method and record["params"] == SETTINGS[method]
    assert saved_methods(str(tmp_path)) == [method]


def test_records_say_what_each_head_is(problem, tmp_path):
    train, classifier, _ = problem
    for method in ("tau_norm", "lws", "ncm", "cosine"):
        save_head(str(tmp_path), method, fit_method(method, train, classifier, SETTINGS[method]), {})
    records = {m: json.loads((tmp_path / "heads" / f"{m}.json").read_text()) for m in ("tau_norm", "lws", "ncm")}
    assert records["tau_norm"]["options"] == {"tau": 0.7} and "bias" not in records["tau_norm"]["tensors"]
    assert records["ncm"]["options"] == {"metric": "l2"} and records["ncm"]["tensors"]["centroids"] == [4, 16]
    tensors, _ = load_head(str(tmp_path), "lws")
    # LWS's weight is f_j w_j: the scales are folded into the saved rows
    assert np.allclose(tensors["weight"], classifier.weight * tensors["scales"][:, None], atol=1e-6)
    tensors, _ = load_head(str(tmp_path), "cosine")
    assert tensors["scale"].shape == (1,)


def test_records_of_the_post_paper_heads(problem, tmp_path):
    """logit_adjust saves the joint rows and its shift tau log pi_j; disalign the joint rows and its calibration."""
    train, classifier, _ = problem
    for method in ("logit_adjust", "disalign"):
        save_head(str(tmp_path), method, fit_method(method, train, classifier, SETTINGS[method]), {})
    tensors, record = load_head(str(tmp_path), "logit_adjust")
    assert record["options"] == {"tau": 0.7} and sorted(tensors) == ["adjustment", "bias", "weight"]
    assert np.allclose(tensors["adjustment"], 0.7 * np.log(COUNTS / COUNTS.sum()), atol=1e-6)
    assert np.array_equal(tensors["weight"], classifier.weight) and np.array_equal(tensors["bias"], classifier.bias)
    tensors, record = load_head(str(tmp_path), "disalign")
    assert record["options"] == {"rho": 1.2} and tensors["gate_bias"].shape == (1,)
    assert {name: value.shape for name, value in tensors.items() if name.startswith(("align", "gate"))} == {
        "align_scale": (4,), "align_shift": (4,), "gate_weight": (16,), "gate_bias": (1,)}


def test_ncm_class_without_training_rows_never_wins():
    # class 2 has no training rows: a NaN centroid; its logit must be -inf, the others finite
    mean = torch.zeros(3, dtype=torch.float64)
    centroids = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [float("nan")] * 3], dtype=torch.float64)
    logits = build_head("ncm", {"mean": mean, "centroids": centroids}, {"metric": "l2"})(torch.eye(3))
    assert torch.isinf(logits[:, 2]).all() and torch.isfinite(logits[:, :2]).all()
    # squared distance of unit vectors: e0 to m0 is 0, e0 to m1 is 2
    assert torch.allclose(logits[0, :2], torch.tensor([0.0, -2.0]))


def test_bad_names_are_reported(tmp_path):
    with pytest.raises(ValueError, match="unknown stage-2 method 'svm'"):
        build_head("svm", {})
    with pytest.raises(ValueError, match="the ncm head needs tensor"):
        build_head("ncm", {"mean": torch.zeros(3)})
    with pytest.raises(UserInputError, match="no saved 'lws' head; saved: none"):
        load_head(str(tmp_path), "lws")


@pytest.mark.parametrize("method", list(SETTINGS))
def test_saved_head_of_a_cosine_stage1_classifier(problem, method, tmp_path):
    """Merge of i10 with main's saved heads: on a cosine stage-1 head, joint/tau_norm/learned_tau/lws
    return cosine predictors (lws with per-class scales f_j * s); their saved heads rebuild as such."""
    train, classifier, queries = problem
    cosine = StageOneClassifier(classifier.weight, np.zeros(len(COUNTS), np.float32), COUNTS, cosine_scale=16.0)
    predictor = fit_method(method, train, cosine, SETTINGS[method], seed=0)
    save_head(str(tmp_path), method, predictor, {"params": SETTINGS[method]})
    tensors, record = load_head(str(tmp_path), method)
    head = build_head(method, {k: torch.from_numpy(v) for k, v in tensors.items()}, record["options"])
    with torch.no_grad():
        logits = head(torch.from_numpy(queries)).numpy()
    expected = predictor(queries)
    assert logits.shape == expected.shape == (50, len(COUNTS))
    assert np.allclose(logits, expected, atol=ATOL, rtol=1e-6), np.abs(logits - expected).max()
