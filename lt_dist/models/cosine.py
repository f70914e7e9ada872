"""A normalised (cosine) classifier head: logits = s * cos(f(x), w_j).

Both the feature and every class row are L2-normalised, so a logit is a cosine in
[-1, 1] times the scale s. This is the head LDAM is defined on (Cao et al. 2019 pair
their margins of up to 0.5 with a normalised linear layer and scale the cosines by
30 inside the loss), and the cosine classifier of the paper's Appendix B.7.
There is no bias: a bias would undo the normalisation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-12  # norm floor: F.normalize's default, a zero feature maps to zero instead of NaN


class CosineHead(nn.Module):
    """(N, D) features -> (N, C) scale * cos(x, w_j).

    Attributes:
        weight: (C, D) class rows (any norm; normalised in forward), the layout of
            nn.Linear.weight so tools that read `fc.weight` read the class directions.
        scale: 0-d tensor s; a Parameter when learn_scale, else a buffer.
    """

    def __init__(self, feature_dim: int, num_classes: int, scale: float = 1.0, learn_scale: bool = False):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"the cosine head's scale must be > 0, got {scale}")
        bound = 1.0 / math.sqrt(feature_dim)  # nn.Linear's bounds; only the directions matter
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim).uniform_(-bound, bound))
        self.register_parameter("bias", None)  # readers of fc.bias see "no bias", as nn.Linear(bias=False)
        value = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(value)
        else:
            self.register_buffer("scale", value)
        self.in_features, self.out_features = feature_dim, num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C): s * (x / ||x||) . (w_j / ||w_j||)."""
        cosines = F.normalize(features, dim=1, eps=_EPS) @ F.normalize(self.weight, dim=1, eps=_EPS).T
        return self.scale.to(cosines.dtype) * cosines
