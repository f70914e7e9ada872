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


def test_balanced_softmax_adds_log_counts():
    """CE(z + log n_j) by hand; it equals logit_adjusted at tau = 1 (log n and log pi differ by a constant,
    which the softmax ignores) and differs from plain CE."""
    adjusted = LOGITS.numpy().astype(np.float64) + np.log(COUNTS.astype(np.float64))
    loss = build_loss("balanced_softmax", COUNTS)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(ce_by_hand(adjusted, TARGETS.numpy()), rel=1e-5)
    assert loss(UNEVEN_LOGITS, UNEVEN_TARGETS).item() == pytest.approx(
        build_loss("logit_adjusted", COUNTS, tau=1.0)(UNEVEN_LOGITS, UNEVEN_TARGETS).item(), rel=1e-5)
    assert loss(LOGITS, TARGETS).item() != pytest.approx(build_loss("ce", COUNTS)(LOGITS, TARGETS).item(), rel=1e-2)
    assert np.allclose(loss.log_counts.numpy(), np.log(COUNTS))
    with pytest.raises(ValueError, match="bad parameters for loss 'balanced_softmax'"):
        build_loss("balanced_softmax", COUNTS, tau=1.0)


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


# A batch that hits the classes unevenly: the mean of w_y * CE and torch's weighted mean
# (sum w_y CE / sum w_y) differ here, while on a batch hitting each class once they agree.
UNEVEN_LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [1.0, -0.5, 0.7], [0.3, 0.3, 1.9]])
UNEVEN_TARGETS = torch.tensor([0, 0, 0, 2])


def test_class_balanced_loss_is_the_mean_of_weighted_ce_with_default_beta():
    raw = (1 - 0.9999) / (1 - 0.9999 ** COUNTS.astype(float))  # the default beta of Cui et al.
    weights = raw / raw.sum() * 3
    per_sample = -np.log(softmax_rows(UNEVEN_LOGITS.numpy().astype(np.float64))[np.arange(4), UNEVEN_TARGETS.numpy()])
    expected = np.mean(weights[UNEVEN_TARGETS.numpy()] * per_sample)
    assert expected != pytest.approx(ce_by_hand(UNEVEN_LOGITS.numpy(), UNEVEN_TARGETS.numpy(), weights), rel=1e-3)
    loss = build_loss("class_balanced", COUNTS)
    assert np.allclose(loss.weights.numpy(), weights)
    assert loss(UNEVEN_LOGITS, UNEVEN_TARGETS).item() == pytest.approx(expected, rel=1e-5)


def test_class_balanced_weights_edges():
    # beta = 0 weighs every class alike; beta must stay below 1 (1 - beta^n would be 0)
    assert np.allclose(class_balanced_weights(COUNTS, 0.0).numpy(), 1.0)
    assert class_balanced_weights(COUNTS, 0.5).dtype == torch.float32
    for beta in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"beta must be in \\[0, 1\\), got {beta}"):
            class_balanced_weights(COUNTS, beta)


def test_default_parameters_are_the_papers():
    focal = build_loss("focal", COUNTS)
    p = softmax_rows(UNEVEN_LOGITS.numpy().astype(np.float64))[np.arange(4), UNEVEN_TARGETS.numpy()]
    assert focal(UNEVEN_LOGITS, UNEVEN_TARGETS).item() == pytest.approx(np.mean((1 - p) ** 2 * -np.log(p)), rel=1e-5)
    ldam = build_loss("ldam", COUNTS)  # max margin 0.5, scale 30, DRW from 80% of the epochs, beta 0.9999
    margins = COUNTS.astype(float) ** -0.25
    assert np.allclose(ldam.margins.numpy(), margins * 0.5 / margins.max())
    assert np.allclose(ldam.drw_weights.numpy(), class_balanced_weights(COUNTS, 0.9999).numpy())
    assert (ldam.scale, ldam.drw, ldam.drw_start) == (30.0, True, 0.8)
    ldam.set_epoch(7, 10)
    assert not ldam.reweight
    ldam.set_epoch(8, 10)
    assert ldam.reweight
    adjusted = build_loss("logit_adjusted", COUNTS)  # tau = 1: the balanced softmax
    assert np.allclose(adjusted.adjustment.numpy(), np.log(COUNTS / COUNTS.sum()))


def test_ldam_reweights_from_the_start_epoch_on_and_never_without_drw():
    loss = build_loss("ldam", COUNTS, drw_start=0.5)
    plain = build_loss("ldam", COUNTS, drw=False)
    for epoch, reweighted in ((0, False), (4, False), (5, True), (9, True)):
        loss.set_epoch(epoch, 10)
        plain.set_epoch(epoch, 10)
        assert loss.reweight is reweighted and plain.reweight is False, epoch
    loss.set_epoch(9, 10)
    weighted, unweighted = loss(UNEVEN_LOGITS, UNEVEN_TARGETS).item(), plain(UNEVEN_LOGITS, UNEVEN_TARGETS).item()
    assert weighted != pytest.approx(unweighted, rel=1e-3)


def ldam_by_hand(logits, targets, scale=30.0, max_margin=0.5, weights=None):
    margins = COUNTS.astype(float) ** -0.25
    margins = margins * max_margin / margins.max()
    shifted = logits.numpy().astype(np.float64).copy()
    shifted[np.arange(len(targets)), targets.numpy()] -= margins[targets.numpy()]
    return ce_by_hand(scale * shifted, targets.numpy(), weights)


def test_a_fresh_ldam_loss_is_not_reweighted_before_set_epoch():
    loss = build_loss("ldam", COUNTS, drw_start=0.0)
    assert loss(UNEVEN_LOGITS, UNEVEN_TARGETS).item() == pytest.approx(ldam_by_hand(UNEVEN_LOGITS, UNEVEN_TARGETS),
                                                                       rel=1e-5)


def test_ldam_on_a_batch_without_the_last_class():
    targets = torch.tensor([0, 1, 0, 1])  # the margins' one-hot must still span all 3 classes
    loss = build_loss("ldam", COUNTS, max_margin=0.3, scale=10.0, drw=False)
    assert loss(UNEVEN_LOGITS, targets).item() == pytest.approx(
        ldam_by_hand(UNEVEN_LOGITS, targets, scale=10.0, max_margin=0.3), rel=1e-5)


def test_losses_raise_no_warnings(recwarn):
    for name in LOSSES:
        build_loss(name, COUNTS)(UNEVEN_LOGITS, UNEVEN_TARGETS)
    assert [str(w.message) for w in recwarn] == []


def test_a_class_with_one_image_is_accepted_and_unknown_names_list_the_choices():
    assert torch.isfinite(build_loss("class_balanced", np.array([5, 1]))(LOGITS[:, :2], torch.tensor([0, 1, 1])))
    with pytest.raises(ValueError, match="choose one of ce, focal, class_balanced, class_balanced_focal, ldam, logit_adjusted, "
                                         "balanced_softmax$"):
        build_loss("hinge", COUNTS)


def test_ce_ignores_the_epoch_and_counts_with_a_zero_raise_before_building():
    loss = build_loss("ce", COUNTS)
    before = loss(UNEVEN_LOGITS, UNEVEN_TARGETS).item()
    loss.set_epoch(9, 10)
    assert loss(UNEVEN_LOGITS, UNEVEN_TARGETS).item() == before
    with pytest.raises(ValueError, match="class 0 has -1"):
        build_loss("ce", np.array([-1, 3]))


def test_losses_accept_half_precision_logits_and_compute_in_float32():
    half = UNEVEN_LOGITS.to(torch.bfloat16)
    for name in ("focal", "class_balanced", "ldam", "logit_adjusted", "balanced_softmax"):
        value = build_loss(name, COUNTS)(half, UNEVEN_TARGETS)
        assert value.dtype == torch.float32, name


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
