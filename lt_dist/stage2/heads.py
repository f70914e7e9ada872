"""Closed-form classifier heads on features (numpy, plus torch where stated).

tau-normalisation, the NCM classifier and the predictors every stage-2 method returns:
    LinearPredictor   logits = f W^T (+ b)           joint, tau_norm, crt, lws, learned_tau
    NCMPredictor      -||x~ - m_j||^2 or cos(x~, m_j)  ncm (x~ the "cl2n" feature)
    CosinePredictor   s * cos(x, w_j)                 cosine
    AdjustedPredictor base(x) - a_j                   logit_adjust (a_j = tau log pi_j)
    DisAlignPredictor (1 - sigma) z + sigma (s z + t) disalign (z = base(x), sigma = sigmoid(g . x + c))
(docs/METHOD.md, "Stage 2" and "After the paper".)
"""
from __future__ import annotations

import numpy as np
import torch

NCM_METRICS = ("l2", "cos")
_EPS = 1e-12  # norm floor: a zero row or feature stays zero instead of becoming NaN
_CHUNK = 8192  # rows per float64 block in NCM


def _check_tau(tau: float) -> None:
    if not float(tau) >= 0.0:  # `not >=` also rejects NaN
        raise ValueError(f"tau must be >= 0, got {float(tau)}")


def scale_rows(weight, tau):
    """w_j / max(||w_j||, eps)^tau for any real tau (torch tensors stay differentiable in tau).

    Args:
        weight: (C, D) numpy array or torch tensor; tau: float or 0-d tensor.
    Returns:
        (C, D), the same kind and dtype as weight.
    """
    if isinstance(weight, torch.Tensor):
        return weight / weight.norm(dim=1, keepdim=True).clamp_min(_EPS) ** tau
    weight = np.asarray(weight)
    norms = np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), _EPS)
    return (weight / norms ** tau).astype(weight.dtype, copy=False)


def tau_normalize(weight, tau: float):
    """tau-normalised classifier weights w_j / ||w_j||^tau (rows = classes).

    tau = 0 returns the values unchanged (division by 1), tau = 1 rows of unit L2 norm.
    Args:
        weight: (C, D) numpy array or torch tensor.
        tau: >= 0.
    Returns:
        (C, D): numpy in -> numpy out, torch in -> torch out, same dtype.
    """
    _check_tau(tau)
    return scale_rows(weight, tau)


def _l2_rows(matrix: np.ndarray) -> np.ndarray:
    """(N, D) rows divided by their L2 norm (zero rows stay zero)."""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), _EPS)


def _chunks(num_rows: int) -> range:
    """Starts of row blocks: the float64 NCM work never holds more than _CHUNK rows at once
    (ImageNet-LT's train matrix is 115,846 x 2048: ~1.9 GB in float64)."""
    return range(0, num_rows, _CHUNK)


def _cl2n(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(n, D) rows centred by the train mean and L2-normalised, float64."""
    return _l2_rows(np.asarray(features, dtype=np.float64) - mean)


def ncm_centroids(train_features: np.ndarray, train_labels: np.ndarray,
                  num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The official "cl2n" NCM state: global train mean and class means of normalised features.

    Args:
        train_features: (N, D); train_labels: (N,) ints in 0 .. C-1.
        num_classes: C (default: max label + 1).
    Returns:
        mean (D,) float64 and centroids (C, D) float64; a class without training rows
        gets a NaN centroid (NCMPredictor then gives it logit -inf).
    """
    train_features, labels = np.asarray(train_features), np.asarray(train_labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    mean = train_features.mean(axis=0, dtype=np.float64)  # float64 sums over 10^5 rows
    sums = np.zeros((num_classes, train_features.shape[1]))
    for start in _chunks(len(labels)):
        block, block_labels = _cl2n(train_features[start:start + _CHUNK], mean), labels[start:start + _CHUNK]
        order = np.argsort(block_labels, kind="stable")  # reduceat sums runs of equal labels
        present, first = np.unique(block_labels[order], return_index=True)
        sums[present] += np.add.reduceat(block[order], first, axis=0)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    with np.errstate(invalid="ignore"):
        return mean, sums / counts


class NCMPredictor:
    """Nearest class mean on "cl2n" features: centre by the train mean, then L2-normalise."""

    def __init__(self, mean: np.ndarray, centroids: np.ndarray, metric: str = "l2"):
        if metric not in NCM_METRICS:
            raise ValueError(f"unknown NCM metric {metric!r}; choose one of {', '.join(NCM_METRICS)}")
        self.mean, self.centroids, self.metric = mean, centroids, metric

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) float32: -squared distance ("l2") or cosine ("cos") to each mean."""
        features = np.asarray(features)
        empty = np.isnan(self.centroids).any(axis=1)
        # a NaN centroid (a class without training rows) only spoils its own logit column,
        # which is set to -inf below; NaN arithmetic raises no floating-point warning
        centroids = self.centroids
        if self.metric == "cos":  # METHOD.md: cosine with the means (the official code skips normalising them)
            centroids = _l2_rows(centroids)
        logits = np.empty((len(features), len(centroids)), dtype=np.float32)
        for start in _chunks(len(features)):
            queries = _cl2n(features[start:start + _CHUNK], self.mean)
            block = queries @ centroids.T
            if self.metric == "l2":  # ||q||^2 + ||m||^2 - 2 q.m, in float64 to keep the small gaps exact
                block = -((queries ** 2).sum(1, keepdims=True) + (centroids ** 2).sum(1) - 2.0 * block)
            logits[start:start + _CHUNK] = block
        logits[:, empty] = -np.inf
        return logits


def ncm_logits(train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray,
               metric: str = "l2", num_classes: int | None = None) -> np.ndarray:
    """NCM logits of `features` with class means from the training features ("cl2n").

    Args:
        train_features: (N_train, D); train_labels: (N_train,); features: (N, D).
        metric: "l2" (negative squared Euclidean distance) or "cos" (cosine similarity).
        num_classes: C (default: max train label + 1).
    Returns:
        (N, C) float32, larger = closer.
    """
    mean, centroids = ncm_centroids(train_features, train_labels, num_classes)
    return NCMPredictor(mean, centroids, metric)(features)


class LinearPredictor:
    """logits = f W^T + b (b None: no bias). `.weight` feeds the weight-norm figure."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None, **extra):
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        for name, value in extra.items():  # method-specific state: tau, scales
            setattr(self, name, value)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) float32."""
        logits = np.asarray(features, dtype=np.float32) @ self.weight.T
        return logits if self.bias is None else logits + self.bias


class CosinePredictor:
    """logits = s * cos(x, w_j): features and weight rows L2-normalised; s a scale, or (C,) per-class
    scales (LWS on a cosine stage-1 head: f_j * s)."""

    def __init__(self, weight: np.ndarray, scale, **extra):
        self.weight = np.asarray(weight, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)  # () or (C,): broadcasts over (N, C) either way
        for name, value in extra.items():  # method-specific state: tau, scales
            setattr(self, name, value)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) float32."""
        queries = _l2_rows(np.asarray(features, dtype=np.float32))
        return (self.scale * (queries @ _l2_rows(self.weight).T)).astype(np.float32)


class AdjustedPredictor:
    """logits = base(x) - adjustment_j: a per-class shift of another predictor's logits (post-hoc logit
    adjustment: adjustment_j = tau log pi_j). `.weight` is the base's, for the weight-norm figure."""

    def __init__(self, base: LinearPredictor | CosinePredictor, adjustment: np.ndarray, **extra):
        self.base = base
        self.adjustment = np.asarray(adjustment, dtype=np.float32)  # (C,)
        for name, value in extra.items():  # method-specific state: tau
            setattr(self, name, value)

    @property
    def weight(self) -> np.ndarray:
        """(C, D) rows of the base classifier."""
        return self.base.weight

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) float32: the base's logits first, then the shift (the order the formula is written in)."""
        return self.base(features) - self.adjustment


def sigmoid(values: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-v)) written as (1 + tanh(v / 2)) / 2: no overflow warning for large |v|."""
    return 0.5 * (1.0 + np.tanh(0.5 * values))


class DisAlignPredictor:
    """DisAlign's calibrated logits: (1 - sigma(x)) z + sigma(x) (scale_j z_j + shift_j), z = base(x),
    sigma(x) = sigmoid(gate_weight . x + gate_bias). `.weight` is the base's."""

    def __init__(self, base: LinearPredictor | CosinePredictor, scale: np.ndarray, shift: np.ndarray,
                 gate_weight: np.ndarray, gate_bias: float, **extra):
        self.base = base
        self.scale = np.asarray(scale, dtype=np.float32)  # (C,) s_j
        self.shift = np.asarray(shift, dtype=np.float32)  # (C,) t_j
        self.gate_weight = np.asarray(gate_weight, dtype=np.float32)  # (D,) g
        self.gate_bias = float(gate_bias)  # c
        for name, value in extra.items():  # method-specific state: rho
            setattr(self, name, value)

    @property
    def weight(self) -> np.ndarray:
        """(C, D) rows of the frozen base classifier."""
        return self.base.weight

    def gate(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, 1) float32 confidence sigma(x)."""
        features = np.asarray(features, dtype=np.float32)
        return sigmoid(features @ self.gate_weight + np.float32(self.gate_bias))[:, None].astype(np.float32)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) float32."""
        logits, gate = self.base(features), self.gate(features)
        return ((1.0 - gate) * logits + gate * (self.scale * logits + self.shift)).astype(np.float32)
