"""--init-from: start a stage-1 backbone from a state dict someone else trained.

Accepted files: lt-dist's best_model.pt ({"state_dict": {backbone.*, fc.*}, ...}) and
torchvision-format ResNet/ResNeXt state dicts (conv1.*, bn1.*, layer1-4.*, fc.*),
with or without a DataParallel "module." prefix. The classifier (fc.*) is never taken
(its class count is another dataset's); the skipped names go to a log line. Every
backbone tensor must be present with the model's shape, or the error names the first
that is not: a half-loaded backbone would train without anyone noticing.
"""
from __future__ import annotations

from typing import Callable

import torch

from lt_dist.errors import UserInputError


def backbone_state(state: dict) -> tuple[dict, list[str]]:
    """(backbone tensors keyed as Classifier.backbone's state dict, skipped classifier keys)."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors, skipped = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("fc.") or key.startswith("classifier."):
            skipped.append(key)
            continue
        tensors[key.removeprefix("backbone.")] = value
    return tensors, sorted(skipped)


def load_backbone(backbone: torch.nn.Module, path: str, log: Callable[[str], None] = print) -> list[str]:
    """Copy the file's backbone tensors into `backbone`; returns the skipped classifier keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as error:
        raise UserInputError(f"--init-from {path!r} cannot be read as a torch state dict: {error}") from None
    if not isinstance(state, dict):
        raise UserInputError(f"--init-from {path!r} holds a {type(state).__name__}, not a state dict")
    tensors, skipped = backbone_state(state)
    expected = backbone.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UserInputError(f"--init-from {path!r} does not fit this --arch: {len(missing)} missing and "
                             f"{len(unexpected)} unexpected backbone tensors ({first})")
    for key, value in expected.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise UserInputError(f"--init-from {path!r}: {key} has shape {tuple(tensors[key].shape)}, the model "
                                 f"{tuple(value.shape)} (another --arch or --small-input?)")
    backbone.load_state_dict(tensors)
    log(f"--init-from {path}: {len(tensors)} backbone tensors loaded; classifier skipped: "
        f"{', '.join(skipped) or 'none in the file'}")
    return skipped
