"""ResNet / ResNeXt backbones by name, built from torchvision's ResNet class.

Every model is a Classifier: a backbone that maps images to features (N, D) and a
head (D -> C): nn.Linear, or models.cosine.CosineHead (head="cosine", the normalised
head LDAM needs). Stage 2 swaps or re-weights the head on the frozen backbone.
small_input=True gives the CIFAR-style stem for 28-32 px images: one 3x3 conv,
stride 1, no max-pool (a 7x7/2 conv and a 3x3/2 pool would leave 7x7 maps of a
28 px image after the stem).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from lt_dist.models.cosine import CosineHead


@dataclass(frozen=True)
class ArchSpec:
    """One row of the model table."""

    block: type  # BasicBlock or Bottleneck
    layers: tuple[int, int, int, int]  # blocks per stage
    groups: int = 1  # ResNeXt cardinality
    width_per_group: int = 64  # ResNeXt bottleneck width


MODELS: dict[str, ArchSpec] = {
    "resnet10": ArchSpec(BasicBlock, (1, 1, 1, 1)),
    "resnet18": ArchSpec(BasicBlock, (2, 2, 2, 2)),
    "resnet50": ArchSpec(Bottleneck, (3, 4, 6, 3)),
    "resnet101": ArchSpec(Bottleneck, (3, 4, 23, 3)),
    "resnet152": ArchSpec(Bottleneck, (3, 8, 36, 3)),
    "resnext50_32x4d": ArchSpec(Bottleneck, (3, 4, 6, 3), 32, 4),
    "resnext101_32x4d": ArchSpec(Bottleneck, (3, 4, 23, 3), 32, 4),
    "resnext152_32x4d": ArchSpec(Bottleneck, (3, 8, 36, 3), 32, 4),  # the paper's best backbone
}
DEFAULT_ARCH = "resnext152_32x4d"
HEADS = ("linear", "cosine")


class Classifier(nn.Module):
    """backbone (images -> features) + fc (features -> logits)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, num_classes) if head is None else head
        self.feature_dim = feature_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D) pooled features."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C) logits."""
        return self.fc(self.backbone(images))


def build_model(arch: str, num_classes: int, small_input: bool = False, head: str = "linear",
                cosine_scale: float | None = None) -> Classifier:
    """The Classifier named `arch` (see MODELS) for num_classes classes.

    head "cosine": CosineHead with the fixed scale cosine_scale, or, when None, a
    learned scale that starts at 16 (the official cosine classifier's value).
    """
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(MODELS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    spec = MODELS[arch]
    backbone = ResNet(spec.block, list(spec.layers), groups=spec.groups, width_per_group=spec.width_per_group)
    if small_input:
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        backbone.maxpool = nn.Identity()
    feature_dim = backbone.fc.in_features
    backbone.fc = nn.Identity()  # the head lives in Classifier.fc
    module = None
    if head == "cosine":
        module = CosineHead(feature_dim, num_classes, 16.0 if cosine_scale is None else cosine_scale,
                            learn_scale=cosine_scale is None)
    return Classifier(backbone, feature_dim, num_classes, module)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


