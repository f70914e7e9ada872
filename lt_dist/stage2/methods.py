"""Stage-2 classifier methods on stored features, behind one name table (docs/METHOD.md, "Stage 2").

Every method is fit(train, classifier, params, seed) -> Predictor, a callable
features (N, D) -> logits (N, C) float32:
    joint        the stage-1 classifier as it is: f W^T + b
    ncm          nearest class mean of "cl2n" train features ("l2" or "cos")
    tau_norm     f (w_j / ||w_j||^tau)^T, bias dropped
    crt          W, b re-initialised and retrained with class-balanced sampling
    lws          learned per-class scales f_j * (w_j . x + b_j), W and b frozen
    learned_tau  tau itself learned with class-balanced sampling (paper B.5), bias dropped
    cosine       s * cos(x, w_j), W trained like cRT, s = 16 fixed as the official CosNorm (paper B.7)
and the methods published after the paper, defined in later.py and merged into the tables here:
    logit_adjust, balanced_softmax, label_aware_smoothing, wb, disalign
A cosine stage-1 head (classifier.cosine_scale set: logits s cos(x, w_j), no bias):
joint is that cosine classifier; tau_norm and learned_tau return it unchanged, since
its rows enter normalised and w_j / ||w_j||^tau has the same direction for every tau
(`.tau` records the requested value); lws learns f_j on its logits, f_j s cos(x, w_j).
ncm, crt and cosine ignore the stage-1 head.
`params` may be partial: missing keys take DEFAULT_PARAMS[method]; every method also
accepts "threads" (torch intra-op threads for the fit, restored after; default: as is)
and "device" (where the trained methods fit: "cpu", "cuda", "cuda:N"; the closed-form
ones are numpy and ignore it; predictors always come back as numpy on the CPU).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lt_dist.stage2.heads import (CosinePredictor, LinearPredictor, NCMPredictor, ncm_centroids, scale_rows,
                                  tau_normalize)
from lt_dist.stage2.later import LATER_DEFAULTS, LATER_METHODS, LATER_SEARCH
from lt_dist.stage2.params import COMMON_PARAMS, SGD_DEFAULTS, resolve
from lt_dist.stage2.training import fit_device, train_with_params, uniform_init
from lt_dist.stage2.types import FeatureSplit, Predictor, StageOneClassifier

Method = Callable[[FeatureSplit, StageOneClassifier, dict, int], Predictor]

# Official configs (classifier-balancing, ImageNet-LT): cRT 10 epochs, LWS 5, both SGD
# lr 0.2, momentum 0.9, weight decay 5e-4 (LWS decays its scales too), cosine to 0, batch 512.
# lt-dist's additions (params.SGD_DEFAULTS): lr_schedule "step" or "epoch" (official), keep_best
# (the best-on-val epoch, as the official loop keeps) and min_steps: the batch shrinks to
# floor(n * epochs / m) when batch 512 would give fewer than m optimizer steps in all
# (ImageNet-LT's cRT has 2,260: unchanged). It is 500 for the heads that start from random
# weights (crt, cosine), so small datasets still get enough optimisation; 0 (off) for lws and
# learned_tau, which start at the stage-1 classifier.
_SGD = SGD_DEFAULTS
_FRESH = {**_SGD, "min_steps": 500}
DEFAULT_PARAMS: dict[str, dict] = {
    "joint": {},
    "ncm": {"metric": "l2"},
    "tau_norm": {"tau": 1.0},  # plain L2-normalisation; select tau with SEARCH_SPACE (ImageNet-LT: 0.7)
    "crt": {**_FRESH, "epochs": 10, "weight_decay": 5e-4},
    "lws": {**_SGD, "epochs": 5, "weight_decay": 5e-4},
    # tau starts at 1 (plain L2-normalisation, the middle of the official grid); no decay:
    # decay would pull tau towards 0, i.e. towards the unnormalised joint classifier
    "learned_tau": {**_SGD, "epochs": 5, "weight_decay": 0.0, "tau_init": 1.0},
    # s = 16, fixed as in the official CosNorm classifier; learn_scale=True learns it from there
    # (on small data a learned s collapses towards 0, and with it every class's margin)
    "cosine": {**_FRESH, "epochs": 10, "weight_decay": 5e-4, "scale_init": 16.0, "learn_scale": False},
    **LATER_DEFAULTS,
}

SEARCH_SPACE: dict[str, list[dict]] = {
    "joint": [{}],
    "ncm": [{"metric": metric} for metric in ("l2", "cos")],
    "tau_norm": [{"tau": round(0.1 * i, 1)} for i in range(21)],  # the official grid 0.0 .. 2.0
    # The cRT/LWS lr grids are lt-dist's own (the paper fixes lr 0.2); only the tau grid is official.
    "crt": [{"lr": lr} for lr in (0.05, 0.2, 0.8)],
    "lws": [{"lr": lr} for lr in (0.05, 0.2, 0.8)],
    "learned_tau": [{"lr": 0.2}],
    "cosine": [{"lr": 0.2}],
    **LATER_SEARCH,
}


def resolve_params(method: str, params: dict | None) -> dict:
    """DEFAULT_PARAMS[method] and COMMON_PARAMS updated by `params`; unknown keys raise ValueError."""
    return resolve(method, params, DEFAULT_PARAMS)


def _train(params: dict, groups: list[dict], logits_fn, train: FeatureSplit, num_classes: int, seed: int) -> None:
    """train_head on class-balanced batches with the method's optimisation params and thread count."""
    train_with_params(params, groups, logits_fn, train, num_classes, seed, strategy="class")


def fit_joint(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int) -> LinearPredictor:
    """The stage-1 classifier unchanged: logits = f W^T + b."""
    resolve_params("joint", params)
    if classifier.cosine_scale is not None:
        return CosinePredictor(classifier.weight, classifier.cosine_scale)
    return LinearPredictor(classifier.weight, classifier.bias)


def fit_ncm(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int) -> NCMPredictor:
    """Class means of centred, L2-normalised train features; `.centroids` (C, D)."""
    params = resolve_params("ncm", params)
    mean, centroids = ncm_centroids(train.features, train.labels, classifier.num_classes)
    return NCMPredictor(mean, centroids, params["metric"])


def fit_tau_norm(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int) -> LinearPredictor:
    """logits = f W_tau^T, W_tau = tau_normalize(W, tau), bias dropped; `.weight` = W_tau, `.tau`."""
    tau = float(resolve_params("tau_norm", params)["tau"])
    if classifier.cosine_scale is not None:  # rows already enter normalised: tau changes nothing
        return CosinePredictor(classifier.weight, classifier.cosine_scale, tau=tau)
    return LinearPredictor(tau_normalize(classifier.weight, tau), None, tau=tau)


def fit_crt(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int) -> LinearPredictor:
    """A fresh linear layer (nn.Linear's init, seeded) trained on class-balanced batches."""
    params = resolve_params("crt", params)
    num_classes, dim = classifier.weight.shape
    generator, device = torch.Generator().manual_seed(seed), fit_device(params["device"])
    # drawn on the CPU from the seeded generator: the same start on every device
    weight = uniform_init((num_classes, dim), dim, generator).to(device).requires_grad_()
    bias = uniform_init((num_classes,), dim, generator).to(device).requires_grad_()
    groups = [{"params": [weight, bias], "weight_decay": float(params["weight_decay"])}]
    _train(params, groups, lambda x: x @ weight.T + bias, train, num_classes, seed)
    return LinearPredictor(weight.detach().cpu().numpy(), bias.detach().cpu().numpy())


def fit_lws(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int) -> LinearPredictor:
    """Per-class scales f_j (start 1) on the frozen W, b; `.scales` (C,), `.weight` = f_j w_j.

    f_j (w_j . x + b_j) = (f_j w_j) . x + f_j b_j, so the predictor is a plain linear one.
    """
    params = resolve_params("lws", params)
    device = fit_device(params["device"])
    # copy(): the stored classifier may be a read-only memory map, which torch will not wrap
    weight = torch.from_numpy(classifier.weight.copy()).to(device)
    bias = torch.from_numpy(classifier.bias.copy()).to(device)
    scales = torch.ones(classifier.num_classes, device=device, requires_grad=True)
    groups = [{"params": [scales], "weight_decay": float(params["weight_decay"])}]
    cosine = classifier.cosine_scale

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        if cosine is not None:
            return cosine * F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T * scales
        return (x @ weight.T + bias) * scales

    _train(params, groups, logits_fn, train, classifier.num_classes, seed)
    learned = scales.detach().cpu().numpy().copy()
    if cosine is not None:
        return CosinePredictor(classifier.weight, cosine * learned, scales=learned)
    return LinearPredictor(classifier.weight * learned[:, None], classifier.bias * learned, scales=learned)


def fit_learned_tau(train: FeatureSplit, classifier: StageOneClassifier, params: dict,
                    seed: int) -> LinearPredictor:
    """One scalar tau learned on class-balanced batches, W frozen, bias dropped; `.tau` (float).

    tau is left unconstrained while learning (a negative value is reported, not clipped).
    """
    params = resolve_params("learned_tau", params)
    if classifier.cosine_scale is not None:  # no gradient reaches tau through normalised rows
        return CosinePredictor(classifier.weight, classifier.cosine_scale, tau=float(params["tau_init"]))
    device = fit_device(params["device"])
    weight = torch.from_numpy(classifier.weight.copy()).to(device)
    tau = torch.tensor(float(params["tau_init"]), device=device, requires_grad=True)
    groups = [{"params": [tau], "weight_decay": float(params["weight_decay"])}]
    _train(params, groups, lambda x: x @ scale_rows(weight, tau).T, train, classifier.num_classes, seed)
    learned = float(tau.detach())
    return LinearPredictor(scale_rows(classifier.weight, learned), None, tau=learned)


def fit_cosine(train: FeatureSplit, classifier: StageOneClassifier, params: dict, seed: int) -> CosinePredictor:
    """s * cos(x, w_j) with W re-initialised; s = scale_init, learned only with learn_scale; `.weight`, `.scale`."""
    params = resolve_params("cosine", params)
    num_classes, dim = classifier.weight.shape
    device = fit_device(params["device"])
    weight = uniform_init((num_classes, dim), dim, torch.Generator().manual_seed(seed)).to(device).requires_grad_()
    scale = torch.tensor(float(params["scale_init"]), device=device, requires_grad=bool(params["learn_scale"]))
    groups = [{"params": [weight], "weight_decay": float(params["weight_decay"])}]
    if params["learn_scale"]:
        groups.append({"params": [scale], "weight_decay": 0.0})  # decaying s would only shrink the logits

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        return scale * F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T

    _train(params, groups, logits_fn, train, num_classes, seed)
    return CosinePredictor(weight.detach().cpu().numpy(), float(scale.detach()))


# The name table: every method has the signature of Method.
METHODS: dict[str, Method] = {
    "joint": fit_joint,
    "ncm": fit_ncm,
    "tau_norm": fit_tau_norm,
    "crt": fit_crt,
    "lws": fit_lws,
    "learned_tau": fit_learned_tau,
    "cosine": fit_cosine,
    **LATER_METHODS,
}


def fit_method(method: str, train: FeatureSplit, classifier: StageOneClassifier, params: dict | None = None,
               seed: int = 0) -> Predictor:
    """METHODS[method](train, classifier, params, seed); an unknown name raises ValueError listing them."""
    if method not in METHODS:
        raise ValueError(f"unknown stage-2 method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method](train, classifier, params or {}, seed)
