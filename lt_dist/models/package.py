"""One model file: the stage-1 backbone and the chosen stage-2 head as a single nn.Module.

    model/model.pt      {"config": CONFIG, "state_dict": PackagedModel.state_dict()}
    model/config.json   CONFIG, for people and other tools:
        format, version        "lt-dist-model", 1
        arch, small_input      the backbone (lt_dist.models.resnet.MODELS)
        feature_dim, num_classes
        method, head_options   the stage-2 head (lt_dist.models.heads.HEADS) and its settings
        class_names, train_counts
        preset                 eval transform: name, crop_size, resize_size, mean, std (RGB, 0..1)
        source                 run, results, features it was assembled from; the search's scores
load_model(path) needs torch and torchvision only (no DeepSpeed, DALI or Ray).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from lt_dist.models.heads import build_head
from lt_dist.models.resnet import build_model

FORMAT, VERSION = "lt-dist-model", 1
MODEL_FILE, CONFIG_FILE = "model.pt", "config.json"


class PackagedModel(nn.Module):
    """images (N, 3, H, W), normalised as config["preset"] says -> logits (N, C)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, config: dict):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.config = config  # a plain dict: not part of the state dict, saved beside it

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D) backbone features."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C) logits of the stage-2 head."""
        return self.head(self.backbone(images))


def build_backbone(arch: str, num_classes: int, small_input: bool) -> nn.Module:
    """The feature extractor of lt_dist.models.resnet.build_model (its fc is left out)."""
    return build_model(arch, num_classes, small_input).backbone


def save_package(model: PackagedModel, out_dir: str) -> str:
    """Write out_dir/model.pt and out_dir/config.json (temp + rename); returns model.pt's path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, MODEL_FILE)
    temp = f"{path}.tmp-{os.getpid()}"
    torch.save({"config": model.config, "state_dict": model.state_dict()}, temp)
    os.replace(temp, path)
    with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(model.config, handle, indent=1)
    return path


def load_model(path: str, map_location: str | torch.device = "cpu") -> PackagedModel:
    """The packaged model in eval mode, from model/ (or model/model.pt).

    Raises:
        ValueError when the file is missing or is not an lt-dist model.
    """
    file = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(f"{path!r} is not an exported lt-dist model (no {MODEL_FILE}); "
                         f"write one with `lt_dist export`")
    saved = torch.load(file, map_location=map_location, weights_only=True)
    config = saved.get("config", {}) if isinstance(saved, dict) else {}
    if config.get("format") != FORMAT:
        raise ValueError(f"{file!r} is not an lt-dist model (format {config.get('format')!r})")
    if config.get("version") != VERSION:
        raise ValueError(f"{file!r} has model format version {config.get('version')}, this lt-dist reads {VERSION}")
    state = saved["state_dict"]
    head_tensors = {name[len("head."):]: value for name, value in state.items() if name.startswith("head.")}
    head = build_head(config["method"], head_tensors, config.get("head_options"))
    model = PackagedModel(build_backbone(config["arch"], config["num_classes"], config["small_input"]), head,
                          config)
    model.load_state_dict(state)  # also restores buffers the builder derived (NCM's empty classes)
    return model.eval()
