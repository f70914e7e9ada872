"""Stage-2 classifiers as torch modules over the backbone's features (N, D) -> logits (N, C).

Every stage-2 method reduces to one of three small heads, or one of them inside a calibration,
built from the tensors the search saves (results/NAME/heads/<method>.safetensors):
    LinearHead   f W^T (+ b)                     joint, crt, tau_norm, lws, learned_tau,
                                                 balanced_softmax, label_aware_smoothing, wb
                 (W holds the effective rows: tau-normalised or scaled by LWS's f_j)
    NCMHead      -||x~ - m_j||^2 or cos(x~, m_j), x~ = (f - mean) / ||f - mean||   ncm
    CosineHead   s * cos(f, w_j)                 cosine
    AdjustedHead z - a_j, z = f W^T + b or s cos(f, w_j)                      logit_adjust
    DisAlignHead (1 - sigma) z + sigma (s_j z_j + t_j), sigma = sigmoid(g . f + c)   disalign
HEADS maps a method name to its builder: build_head(method, tensors, options) -> nn.Module.
Pure torch: no stage-2, Ray or DeepSpeed import, so a packaged model loads without them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

_EPS = 1e-12  # the norm floor stage 2 uses: a zero row or feature stays zero instead of NaN
NCM_METRICS = ("l2", "cos")


def _l2_rows(matrix: torch.Tensor) -> torch.Tensor:
    """(N, D) rows over max(||row||, eps); sqrt of the sum of squares, as numpy's norm computes it."""
    return matrix / (matrix * matrix).sum(dim=1, keepdim=True).sqrt().clamp_min(_EPS)


class LinearHead(nn.Module):
    """logits = f W^T + b (no bias: f W^T). Saved tensors: weight (C, D), bias (C,) optional."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) float32."""
        logits = features.float() @ self.weight.T
        return logits if self.bias is None else logits + self.bias


class NCMHead(nn.Module):
    """Nearest class mean on centred, L2-normalised features, computed in float64 like stage 2.

    Saved tensors: mean (D,), centroids (C, D) (a class without training rows has a NaN
    row: its logit is -inf). metric "l2" (negative squared distance) or "cos".
    """

    def __init__(self, mean: torch.Tensor, centroids: torch.Tensor, metric: str = "l2"):
        super().__init__()
        if metric not in NCM_METRICS:
            raise ValueError(f"unknown NCM metric {metric!r}; choose one of {', '.join(NCM_METRICS)}")
        centroids = centroids.detach().double()
        empty = torch.isnan(centroids).any(dim=1)
        self.metric = metric
        self.register_buffer("mean", mean.detach().double().clone())
        self.register_buffer("centroids", torch.where(empty[:, None], 0.0, centroids))
        self.register_buffer("empty", empty)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) float32, larger = closer."""
        queries = _l2_rows(features.double() - self.mean)
        # cosine with the normalised means (the official code skips normalising them)
        centroids = _l2_rows(self.centroids) if self.metric == "cos" else self.centroids
        logits = queries @ centroids.T
        if self.metric == "l2":  # ||q||^2 + ||m||^2 - 2 q.m in float64, as stage 2 computes it
            logits = -((queries * queries).sum(1, keepdim=True) + (centroids * centroids).sum(1) - 2.0 * logits)
        return logits.float().masked_fill(self.empty, float("-inf"))


class CosineHead(nn.Module):
    """logits = s * cos(f, w_j). Saved tensors: weight (C, D), scale (1,)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.register_buffer("scale", scale.detach().float().reshape(-1).clone())  # (1,) or per-class (C,)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) float32."""
        return self.scale * (_l2_rows(features.float()) @ _l2_rows(self.weight).T)


class _OnJointLogits(nn.Module):
    """Base of the heads that transform the joint classifier's logits z. It holds that classifier's tensors
    under their saved names (weight, and bias for a linear head or scale for a cosine one), so a packaged
    model's state dict rebuilds through build_head like the plain heads'."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.weight = nn.Parameter(tensors["weight"].detach().float().clone(), requires_grad=False)
        cosine = "scale" in tensors and "bias" not in tensors  # _linear's rule: a cosine stage-1 head
        self.bias = (None if "bias" not in tensors
                     else nn.Parameter(tensors["bias"].detach().float().clone(), requires_grad=False))
        self.register_buffer("scale", tensors["scale"].detach().float().reshape(-1).clone() if cosine else None)

    def joint_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C): f W^T (+ b), or s cos(f, w_j) for a cosine head (as LinearHead, CosineHead)."""
        if self.scale is not None:
            return self.scale * (_l2_rows(features.float()) @ _l2_rows(self.weight).T)
        logits = features.float() @ self.weight.T
        return logits if self.bias is None else logits + self.bias


class AdjustedHead(_OnJointLogits):
    """logits = z - adjustment_j (post-hoc logit adjustment: tau log pi_j). Saved tensors: the joint head's
    (weight with bias, or weight with scale for a cosine stage-1 head) and adjustment (C,)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__(tensors)
        self.register_buffer("adjustment", tensors["adjustment"].detach().float().reshape(-1).clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) float32."""
        return self.joint_logits(features) - self.adjustment


class DisAlignHead(_OnJointLogits):
    """DisAlign: (1 - sigma) z + sigma (s_j z_j + t_j), sigma = sigmoid(g . f + c) (N, 1). Saved tensors: the
    joint head's, align_scale (C,) s, align_shift (C,) t, gate_weight (D,) g, gate_bias (1,) c."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__(tensors)
        for name in ("align_scale", "align_shift", "gate_weight", "gate_bias"):
            self.register_buffer(name, tensors[name].detach().float().reshape(-1).clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) float32."""
        logits = self.joint_logits(features)
        gate = torch.sigmoid(features.float() @ self.gate_weight + self.gate_bias)[:, None]
        return (1.0 - gate) * logits + gate * (self.align_scale * logits + self.align_shift)


def _linear(tensors: dict[str, torch.Tensor], options: dict) -> nn.Module:
    # joint, tau_norm, lws and learned_tau on a cosine stage-1 head keep it: saved as weight + scale
    if "scale" in tensors and "bias" not in tensors:
        return CosineHead(tensors["weight"], tensors["scale"])
    return LinearHead(tensors["weight"], tensors.get("bias"))


def _ncm(tensors: dict[str, torch.Tensor], options: dict) -> NCMHead:
    return NCMHead(tensors["mean"], tensors["centroids"], options.get("metric", "l2"))


def _cosine(tensors: dict[str, torch.Tensor], options: dict) -> CosineHead:
    return CosineHead(tensors["weight"], tensors["scale"])


def _adjusted(tensors: dict[str, torch.Tensor], options: dict) -> AdjustedHead:
    return AdjustedHead(tensors)


def _disalign(tensors: dict[str, torch.Tensor], options: dict) -> DisAlignHead:
    return DisAlignHead(tensors)


# The registry: stage-2 method -> builder(tensors, options) -> head module.
HEADS: dict[str, Callable[[dict, dict], nn.Module]] = {
    "joint": _linear,
    "crt": _linear,
    "tau_norm": _linear,
    "lws": _linear,
    "learned_tau": _linear,
    "ncm": _ncm,
    "cosine": _cosine,
    "logit_adjust": _adjusted,
    "balanced_softmax": _linear,
    "label_aware_smoothing": _linear,
    "wb": _linear,  # a cosine stage-1 head stays one: weight + scale, as joint's
    "disalign": _disalign,
}
# Tensors each builder needs (extra saved tensors, like LWS's scales, are kept for the record).
REQUIRED = {_linear: ("weight",), _ncm: ("mean", "centroids"), _cosine: ("weight", "scale"),
            _adjusted: ("weight", "adjustment"),
            _disalign: ("weight", "align_scale", "align_shift", "gate_weight", "gate_bias")}


def build_head(method: str, tensors: dict[str, torch.Tensor], options: dict | None = None) -> nn.Module:
    """The head module of a stage-2 method from its saved tensors.

    Args:
        method: a key of HEADS.
        tensors: name -> tensor as saved (see each head class).
        options: non-tensor settings, e.g. {"metric": "cos"} for NCM.
    Returns:
        an nn.Module mapping features (N, D) to logits (N, C), in eval mode.
    Raises:
        ValueError naming an unknown method or a missing tensor.
    """
    if method not in HEADS:
        raise ValueError(f"unknown stage-2 method {method!r}; choose one of {', '.join(HEADS)}")
    builder = HEADS[method]
    missing = [name for name in REQUIRED[builder] if name not in tensors]
    if missing:
        raise ValueError(f"the {method} head needs tensor(s) {', '.join(missing)}; got {', '.join(tensors) or 'none'}")
    return builder(tensors, options or {}).eval()

