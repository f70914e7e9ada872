"""Stage-2 methods published after the paper, on the same stored features (docs/METHOD.md, "After the paper").

Each is fit(train, classifier, params, seed) -> Predictor like methods.py's, and methods.py
merges LATER_METHODS, LATER_DEFAULTS and LATER_SEARCH into its tables:
    logit_adjust           z_j - tau log pi_j, z the stage-1 logits, pi_j = n_j / n; no training.
                           Menon et al., "Long-tail learning via logit adjustment", ICLR 2021
    balanced_softmax       cRT trained on CE(z + log n_j) over instance-balanced batches, plain z at test.
                           Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020
    label_aware_smoothing  cRT (class-balanced) with label smoothing eps_y by the class's count, eps_head for
                           the largest n_j down to eps_tail for the smallest. Zhong et al., "Improving
                           Calibration for Long-Tailed Recognition" (MiSLAS), CVPR 2021
    wb                     the stage-1 W, b fine-tuned with class-balanced CE and weight decay, each row of W
                           projected to norm <= threshold after every step (MaxNorm). Alshammari et al.,
                           "Long-Tailed Recognition via Weight Balancing", CVPR 2022
    disalign               (1 - sigma(x)) z + sigma(x) (s * z + t), sigma(x) = sigmoid(g . x + c), on the
                           frozen stage-1 logits z, trained with class weights prop. to (1 / n_j)^rho.
                           Zhang et al., "Distribution Alignment: A Unified Framework for Long-tail
                           Visual Recognition", CVPR 2021
Counts n_j are the classifier's train_counts. The formulas are pure functions here (log_prior,
label_aware_eps, label_smoothing_loss, grw_weights, maxnorm_threshold, project_rows_,
disalign_logits) or stage 1's losses (BalancedSoftmaxLoss, ClassBalancedLoss), each tested
against its own computation.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lt_dist.losses import BalancedSoftmaxLoss, ClassBalancedLoss
from lt_dist.stage2.heads import AdjustedPredictor, CosinePredictor, DisAlignPredictor, LinearPredictor
from lt_dist.stage2.params import SGD_DEFAULTS, resolve
from lt_dist.stage2.training import fit_device, train_with_params, uniform_init
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

# params.py says what each optimisation key does; min_steps 500 for a head that starts from random weights
_SGD = SGD_DEFAULTS
_FRESH = {**_SGD, "min_steps": 500}
LATER_DEFAULTS: dict[str, dict] = {
    "logit_adjust": {"tau": 1.0},  # Menon et al.'s tau = 1: the Bayes correction for a balanced test set
    # Ren et al. change the loss, not the optimisation: cRT's settings
    "balanced_softmax": {**_FRESH, "epochs": 10, "weight_decay": 5e-4},
    # MiSLAS's ImageNet-LT/iNaturalist config: eps 0.3 (head) -> 0.0 (tail), "concave" (Places-LT: 0.4 -> 0.1)
    "label_aware_smoothing": {**_FRESH, "epochs": 10, "weight_decay": 5e-4, "eps_head": 0.3, "eps_tail": 0.0,
                              "shape": "concave"},
    # Weight Balancing's stage 2 (their CIFAR-100-LT demo): SGD lr 0.01, momentum 0.9, batch 64, 10 epochs,
    # weight decay 0.1, MaxNorm thresh 0.1, class-balanced loss with beta 0.9999
    "wb": {**_SGD, "lr": 0.01, "batch_size": 64, "epochs": 10, "weight_decay": 0.1, "thresh": 0.1,
           "beta": 0.9999},
    # DisAlign's ImageNet-LT config: SGD lr 0.1, batch 256, 10 epochs, weight decay 5e-4, rho 1.2,
    # the gate's weights start at 0.1 (their confidence layer's constant init)
    "disalign": {**_SGD, "lr": 0.1, "batch_size": 256, "epochs": 10, "weight_decay": 5e-4, "rho": 1.2,
                 "gate_init": 0.1},
}
LATER_SEARCH: dict[str, list[dict]] = {
    "logit_adjust": [{"tau": round(0.1 * i, 1)} for i in range(21)],  # the tau_norm grid 0.0 .. 2.0
    "balanced_softmax": [{"lr": lr} for lr in (0.05, 0.2, 0.8)],  # cRT's grid
    # the official configs' (head, tail) pairs: (0.1|0.2|0.3, 0.0) and (0.4, 0.1)
    "label_aware_smoothing": [{"eps_head": head, "eps_tail": 0.0} for head in (0.1, 0.2, 0.3)]
    + [{"eps_head": 0.4, "eps_tail": 0.1}],
    "wb": [{"thresh": thresh} for thresh in (0.05, 0.1, 0.2)],
    "disalign": [{"rho": rho} for rho in (0.8, 1.0, 1.2, 1.5)],
}
SMOOTHING_SHAPES = ("concave", "linear")


def _resolve(method: str, params: dict | None) -> dict:
    return resolve(method, params, LATER_DEFAULTS)


def _finite(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """float(value), or ValueError naming the parameter unless finite and within [low, high]."""
    number = float(value)
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        bounds = f" in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must be a finite number{bounds if low is not None or high is not None else ''}, "
                         f"got {value!r}")
    return number


def _counts(classifier: StageOneClassifier, method: str) -> np.ndarray:
    """(C,) int64 training counts; ValueError naming the first empty class (its log / inverse is infinite)."""
    counts = classifier.train_counts
    if (counts <= 0).any():
        raise ValueError(f"{method} needs training images in every class: class {int(np.argmin(counts))} "
                         f"has {int(counts.min())}")
    return counts


# ---- the formulas -----------------------------------------------------------------------------

def log_prior(counts: np.ndarray) -> np.ndarray:
    """(C,) float64 log pi_j, pi_j = n_j / sum_k n_k."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.log(counts / counts.sum())


def label_aware_eps(counts: np.ndarray, eps_head: float, eps_tail: float, shape: str = "concave") -> np.ndarray:
    """(C,) float64 smoothing factors eps_j = eps_tail + (eps_head - eps_tail) f(u_j), u_j = (n_j - n_min) /
    (n_max - n_min): "concave" f(u) = sin(pi u / 2) (MiSLAS's default), "linear" f(u) = u. The largest class
    gets eps_head, the smallest eps_tail; when every count is equal, every class gets eps_head."""
    if shape not in SMOOTHING_SHAPES:
        raise ValueError(f"unknown smoothing shape {shape!r}; choose one of {', '.join(SMOOTHING_SHAPES)}")
    eps_head, eps_tail = _finite("eps_head", eps_head, 0.0, 1.0), _finite("eps_tail", eps_tail, 0.0, 1.0)
    counts = np.asarray(counts, dtype=np.float64)
    spread = counts.max() - counts.min()
    position = (counts - counts.min()) / spread if spread > 0 else np.ones_like(counts)
    curve = np.sin(0.5 * np.pi * position) if shape == "concave" else position
    return eps_tail + (eps_head - eps_tail) * curve


def label_smoothing_loss(logits: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of (1 - eps_y) (-log p_y) + eps_y mean_j (-log p_j): cross-entropy against the
    target (1 - eps_y) e_y + eps_y / C, with the smoothing eps (C,) of each sample's own class y."""
    log_p = F.log_softmax(logits.float(), dim=1)
    smoothing = eps[labels]
    true_class = -log_p.gather(1, labels[:, None]).squeeze(1)
    return ((1.0 - smoothing) * true_class + smoothing * -log_p.mean(dim=1)).mean()


def grw_weights(counts: np.ndarray, rho: float) -> np.ndarray:
    """(C,) float64 generalised re-weighting w_j = (1 / n_j)^rho, normalised to sum to C (DisAlign)."""
    inverse = (1.0 / np.asarray(counts, dtype=np.float64)) ** _finite("rho", rho)
    return inverse / inverse.sum() * len(inverse)


def maxnorm_threshold(weight: np.ndarray, thresh: float) -> float:
    """WB's per-layer MaxNorm radius from the rows it starts at: min_j ||w_j|| + thresh (max_j ||w_j|| -
    min_j ||w_j||) (thresh 0: the smallest row's norm, 1: the largest's)."""
    norms = np.linalg.norm(np.asarray(weight, dtype=np.float64), axis=1)
    return float(norms.min() + _finite("thresh", thresh, 0.0) * (norms.max() - norms.min()))


def project_rows_(weight: torch.Tensor, threshold: float) -> None:
    """In place: each row of weight (C, D) with ||w_j|| > threshold is scaled to norm threshold; the others
    stay as they are (the projection onto {||w_j|| <= threshold for all j})."""
    with torch.no_grad():
        norms = weight.norm(dim=1, keepdim=True)
        weight.mul_((threshold / norms.clamp_min(1e-12)).clamp(max=1.0))


def disalign_logits(logits: torch.Tensor, features: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    gate_weight: torch.Tensor, gate_bias: torch.Tensor) -> torch.Tensor:
    """(1 - sigma) z + sigma (scale * z + shift), sigma = sigmoid(features . gate_weight + gate_bias).

    Args: logits z (B, C), features (B, D), scale and shift (C,), gate_weight (D,), gate_bias () or (1,).
    Returns: (B, C).
    """
    gate = torch.sigmoid(features @ gate_weight + gate_bias)[:, None]
    return (1.0 - gate) * logits + gate * (scale * logits + shift)


# ---- the methods ------------------------------------------------------------------------------

def _joint_predictor(classifier: StageOneClassifier) -> LinearPredictor | CosinePredictor:
    """The stage-1 classifier as a predictor: f W^T + b, or s cos(f, w_j) for a cosine head."""
    if classifier.cosine_scale is not None:
        return CosinePredictor(classifier.weight, classifier.cosine_scale)
    return LinearPredictor(classifier.weight, classifier.bias)


def _joint_logits(classifier: StageOneClassifier, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The frozen stage-1 logits z as a torch function of the features (B, D) -> (B, C)."""
    # copy(): the stored classifier may be a read-only memory map, which torch will not wrap
    weight = torch.from_numpy(classifier.weight.copy()).to(device)
    bias = torch.from_numpy(classifier.bias.copy()).to(device)
    scale = classifier.cosine_scale
    if scale is not None:
        return lambda x: scale * F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
    return lambda x: x @ weight.T + bias


def _fresh_linear(classifier: StageOneClassifier, seed: int, device: torch.device):
    """(weight (C, D), bias (C,)) drawn as fit_crt draws them: nn.Linear's bounds, weight then bias, one
    generator seeded by `seed`, on the CPU (the same start on every device)."""
    num_classes, dim = classifier.weight.shape
    generator = torch.Generator().manual_seed(seed)
    weight = uniform_init((num_classes, dim), dim, generator).to(device).requires_grad_()
    bias = uniform_init((num_classes,), dim, generator).to(device).requires_grad_()
    return weight, bias


def fit_logit_adjust(train: FeatureSplit, classifier: StageOneClassifier, params: dict,
                     seed: int) -> AdjustedPredictor:
    """Post-hoc logit adjustment (Menon et al. 2021): logits = f W^T + b - tau log pi_j, pi_j = n_j / n.

    No training; tau >= 0 (0: the joint classifier). On a cosine stage-1 head its logits are adjusted the
    same way: s cos(f, w_j) - tau log pi_j. `.adjustment` (C,) = tau log pi_j, `.tau`.
    """
    tau = _finite("tau", _resolve("logit_adjust", params)["tau"], 0.0)
    adjustment = tau * log_prior(_counts(classifier, "logit_adjust"))
    return AdjustedPredictor(_joint_predictor(classifier), adjustment.astype(np.float32), tau=tau)


def fit_balanced_softmax(train: FeatureSplit, classifier: StageOneClassifier, params: dict,
                         seed: int) -> LinearPredictor:
    """Balanced Softmax (Ren et al. 2020) as a cRT: a fresh linear layer trained on instance-balanced batches
    (the paper's point: the loss, not re-sampling, balances) with loss CE(z + log n_j); logits z = f W^T + b
    at test. Initialised as fit_crt (same seed, same start)."""
    params = _resolve("balanced_softmax", params)
    device = fit_device(params["device"])
    loss_fn = BalancedSoftmaxLoss(_counts(classifier, "balanced_softmax")).to(device)  # stage 1's loss of that name
    weight, bias = _fresh_linear(classifier, seed, device)
    groups = [{"params": [weight, bias], "weight_decay": float(params["weight_decay"])}]
    train_with_params(params, groups, lambda x: x @ weight.T + bias, train, classifier.num_classes, seed,
                      strategy="instance", loss_fn=loss_fn)
    return LinearPredictor(weight.detach().cpu().numpy(), bias.detach().cpu().numpy())


def fit_label_aware_smoothing(train: FeatureSplit, classifier: StageOneClassifier, params: dict,
                              seed: int) -> LinearPredictor:
    """MiSLAS's label-aware smoothing (Zhong et al. 2021) on a cRT: a fresh linear layer (as fit_crt) trained on
    class-balanced batches with label_smoothing_loss, eps = label_aware_eps(n, eps_head, eps_tail, shape).

    MiSLAS's own stage 2 fine-tunes the stage-1 classifier (lr x 0.05) with LWS-style scales and shifts BN;
    here it is cRT's fresh layer and optimisation, the smoothing alone. `.eps` (C,).
    """
    params = _resolve("label_aware_smoothing", params)
    eps_np = label_aware_eps(classifier.train_counts, params["eps_head"], params["eps_tail"], params["shape"])
    device = fit_device(params["device"])
    eps = torch.tensor(eps_np, dtype=torch.float32, device=device)
    weight, bias = _fresh_linear(classifier, seed, device)
    groups = [{"params": [weight, bias], "weight_decay": float(params["weight_decay"])}]
    train_with_params(params, groups, lambda x: x @ weight.T + bias, train, classifier.num_classes, seed,
                      strategy="class", loss_fn=lambda z, y: label_smoothing_loss(z, y, eps))
    return LinearPredictor(weight.detach().cpu().numpy(), bias.detach().cpu().numpy(), eps=eps_np)


def fit_wb(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int):
    """Weight Balancing's classifier stage (Alshammari et al. 2022): the stage-1 W, b fine-tuned on
    instance-balanced batches with the class-balanced loss mean w_y CE, w_j = (1 - beta) / (1 - beta^n_j)
    summing to C (lt_dist.losses.ClassBalancedLoss), SGD weight decay, and MaxNorm: after every optimizer
    step each row w_j is projected to ||w_j|| <= r, r = maxnorm_threshold(stage-1 W, thresh); the bias is
    not constrained (as theirs).

    Their demo's CB loss is vandit15's port, a weighted binary cross-entropy on the softmax probabilities;
    this is Cui et al.'s softmax CB cross-entropy, which the paper names. On a cosine stage-1 head W is
    fine-tuned inside s cos(f, w_j) (the projection then leaves the logits unchanged). `.threshold` = r.
    """
    params = _resolve("wb", params)
    counts = _counts(classifier, "wb")
    threshold = maxnorm_threshold(classifier.weight, params["thresh"])
    device = fit_device(params["device"])
    loss_fn = ClassBalancedLoss(counts, beta=_finite("beta", params["beta"], 0.0, 1.0)).to(device)
    weight = torch.from_numpy(classifier.weight.copy()).to(device).requires_grad_()
    bias = torch.from_numpy(classifier.bias.copy()).to(device).requires_grad_()
    scale = classifier.cosine_scale
    trained = [weight] if scale is not None else [weight, bias]  # a cosine head has no bias

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            return scale * F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T
        return x @ weight.T + bias

    train_with_params(params, [{"params": trained, "weight_decay": float(params["weight_decay"])}], logits_fn,
                      train, classifier.num_classes, seed, strategy="instance", loss_fn=loss_fn,
                      after_step=lambda: project_rows_(weight, threshold))
    rows = weight.detach().cpu().numpy()
    if scale is not None:
        return CosinePredictor(rows, scale, threshold=threshold)
    return LinearPredictor(rows, bias.detach().cpu().numpy(), threshold=threshold)


def fit_disalign(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int) -> DisAlignPredictor:
    """DisAlign (Zhang et al. 2021) on the frozen stage-1 logits z (f W^T + b, or s cos(f, w_j)):
    logits = (1 - sigma(x)) z + sigma(x) (s * z + t), sigma(x) = sigmoid(g . x + c), trained on
    instance-balanced batches with the generalised re-weighting loss sum_i w_yi CE_i / sum_i w_yi,
    w = grw_weights(n, rho).

    Start: s = 1, t = 0 (the paper's form starts at z exactly), g = gate_init in every entry (their
    confidence layer's constant 0.1), c from nn.Linear's bias bounds (seeded). s is learned as 1 + a with
    weight decay on a, so decay pulls s towards 1 (their code's logit_scale is a). `.scale` (C,) s,
    `.shift` (C,) t, `.gate_weight` (D,) g, `.gate_bias` c, `.rho`.
    """
    params = _resolve("disalign", params)
    rho = _finite("rho", params["rho"])
    device = fit_device(params["device"])
    class_weights = torch.tensor(grw_weights(_counts(classifier, "disalign"), rho), dtype=torch.float32,
                                 device=device)
    joint = _joint_logits(classifier, device)
    num_classes, dim = classifier.weight.shape
    offset = torch.zeros(num_classes, device=device, requires_grad=True)
    shift = torch.zeros(num_classes, device=device, requires_grad=True)
    gate_weight = torch.full((dim,), _finite("gate_init", params["gate_init"]), device=device, requires_grad=True)
    gate_bias = uniform_init((1,), dim, torch.Generator().manual_seed(seed)).to(device).requires_grad_()
    groups = [{"params": [offset, shift, gate_weight, gate_bias], "weight_decay": float(params["weight_decay"])}]
    train_with_params(params, groups,
                      lambda x: disalign_logits(joint(x), x, 1.0 + offset, shift, gate_weight, gate_bias),
                      train, num_classes, seed, strategy="instance",
                      loss_fn=lambda z, y: F.cross_entropy(z, y, weight=class_weights))
    return DisAlignPredictor(_joint_predictor(classifier), (1.0 + offset).detach().cpu().numpy(),
                             shift.detach().cpu().numpy(), gate_weight.detach().cpu().numpy(),
                             float(gate_bias.detach()), rho=rho)


# The later methods' name table, merged into methods.METHODS.
LATER_METHODS: dict[str, Callable] = {
    "logit_adjust": fit_logit_adjust,
    "balanced_softmax": fit_balanced_softmax,
    "label_aware_smoothing": fit_label_aware_smoothing,
    "wb": fit_wb,
    "disalign": fit_disalign,
}
