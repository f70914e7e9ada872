import math

import numpy as np
import pytest
import torch

from lt_dist.losses import LOSSES, build_loss, class_balanced_weights

COUNTS = np.array([400, 40, 4])
LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.5, 0.7]])
TARGETS = torch.tensor([0, 2, 1])


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ce_by_hand(z, y, weights=None):
    p = softmax_rows(np.asarray(z, dtype=np.float64))
    losses = -np.log(p[np.arange(len(y)), y])
    if weights is None:
        return losses.mean()
    return (weights[y] * losses).sum() / weights[y].sum()  # torch's weighted mean


def test_cross_entropy():
    assert build_loss("ce", COUNTS)(LOGITS, TARGETS).item() == pytest.approx(ce_by_hand(LOGITS.numpy(), TARGETS.numpy()), rel=1e-5)


def test_focal_by_formula_and_gamma_zero_is_ce():
    p = softmax_rows(LOGITS.numpy().astype(np.float64))[np.arange(3), TARGETS.numpy()]
    expected = np.mean((1 - p) ** 2 * -np.log(p))
    assert build_loss("focal", COUNTS, gamma=2.0)(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-5)
    assert build_loss("focal", COUNTS, gamma=0.0)(LOGITS, TARGETS).item() == pytest.approx(
        build_loss("ce", COUNTS)(LOGITS, TARGETS).item(), rel=1e-6)


def test_class_balanced_weights_and_loss():
    beta = 0.99
    raw = (1 - beta) / (1 - beta ** COUNTS.astype(float))
    weights = raw / raw.sum() * 3
    assert np.allclose(class_balanced_weights(COUNTS, beta).numpy(), weights)
    assert weights.sum() == pytest.approx(3) and weights[2] > weights[1] > weights[0]
    p = softmax_rows(LOGITS.numpy().astype(np.float64))[np.arange(3), TARGETS.numpy()]
    expected = np.mean(weights[TARGETS.numpy()] * -np.log(p))
    assert build_loss("class_balanced", COUNTS, beta=beta)(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-5)


def test_ldam_margins_and_deferred_reweighting():
    loss = build_loss("ldam", COUNTS, max_margin=0.5, scale=30.0, drw=True, drw_start=0.5)
    margins = COUNTS.astype(float) ** -0.25
    margins = margins * 0.5 / margins.max()
    assert np.allclose(loss.margins.numpy(), margins) and margins[2] == 0.5
    shifted = LOGITS.numpy().astype(np.float64).copy()
    shifted[np.arange(3), TARGETS.numpy()] -= margins[TARGETS.numpy()]
    loss.set_epoch(0, 10)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(ce_by_hand(30 * shifted, TARGETS.numpy()), rel=1e-5)
    loss.set_epoch(5, 10)  # deferred re-weighting from epoch 5 of 10
    weights = class_balanced_weights(COUNTS, 0.9999).numpy().astype(np.float64)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(ce_by_hand(30 * shifted, TARGETS.numpy(), weights), rel=1e-5)


def test_logit_adjusted_adds_tau_log_prior():
    tau = 1.5
    prior = COUNTS / COUNTS.sum()
    adjusted = LOGITS.numpy().astype(np.float64) + tau * np.log(prior)
    loss = build_loss("logit_adjusted", COUNTS, tau=tau)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(ce_by_hand(adjusted, TARGETS.numpy()), rel=1e-5)
    assert loss.adjustment[0] - loss.adjustment[2] == pytest.approx(tau * math.log(100), rel=1e-5)


def test_every_loss_backpropagates():
    for name in LOSSES:
        logits = LOGITS.clone().requires_grad_(True)
        build_loss(name, COUNTS)(logits, TARGETS).backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, name


@pytest.mark.parametrize("args, message", [(("hinge", COUNTS), "unknown loss 'hinge'"),
                                           (("ce", np.array([3, 0])), "class 1 has 0"),
                                           (("focal", COUNTS, {"alpha": 1}), "bad parameters for loss 'focal'")])
def test_bad_loss_input(args, message):
    params = args[2] if len(args) > 2 else {}
    with pytest.raises(ValueError, match=message):
        build_loss(args[0], args[1], **params)


def test_ldam_on_the_cosine_head_is_cao_et_al_with_drw():
    """LDAM-DRW end to end from features: the cosine head gives z_j = cos(x, w_j) (scale 1), the loss
    is CE(30 (z - Delta_y e_y)), Delta_j = 0.5 n_j^(-1/4) / max_k n_k^(-1/4), and from epoch 0.8 T on
    the class weights (1 - beta) / (1 - beta^n_j), normalised to sum to C (all by hand in float64)."""
    from lt_dist.models.cosine import CosineHead

    torch.manual_seed(0)
    head = CosineHead(5, 3, scale=1.0)
    features = torch.randn(6, 5) * 4.0  # large norms: a cosine head must ignore them
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    x, w = features.double().numpy(), head.weight.detach().double().numpy()
    cosines = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    assert np.abs(cosines).max() <= 1.0
    margins = 0.5 * COUNTS ** -0.25 / (COUNTS ** -0.25).max()
    shifted = cosines.copy()
    shifted[np.arange(6), targets.numpy()] -= margins[targets.numpy()]
    loss = build_loss("ldam", COUNTS)  # defaults: max margin 0.5, s = 30, DRW from 0.8 T, beta 0.9999
    logits = head(features)
    assert np.allclose(logits.detach().double().numpy(), cosines, atol=1e-6)
    loss.set_epoch(7, 10)
    assert loss(logits, targets).item() == pytest.approx(ce_by_hand(30 * shifted, targets.numpy()), rel=1e-4)
    loss.set_epoch(8, 10)
    raw = (1 - 0.9999) / (1 - 0.9999 ** COUNTS.astype(np.float64))
    weights = raw / raw.sum() * 3
    assert loss(logits, targets).item() == pytest.approx(ce_by_hand(30 * shifted, targets.numpy(), weights), rel=1e-4)


def test_class_balanced_focal_by_hand():
    loss = build_loss("class_balanced_focal", COUNTS, beta=0.999, gamma=1.5)
    p = softmax_rows(LOGITS.numpy().astype(np.float64))
    h = p[np.arange(3), TARGETS.numpy()]
    raw = (1 - 0.999) / (1 - 0.999 ** COUNTS.astype(np.float64))
    weights = raw / raw.sum() * 3
    expected = np.mean(weights[TARGETS.numpy()] * (1 - h) ** 1.5 * -np.log(h))
    assert loss(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-5)
