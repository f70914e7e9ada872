"""Assemble the stage-1 backbone and a saved stage-2 head into one model; write it as
torch (state dict + config), TorchScript or ONNX.

    assemble(run, results, method)        best_model.pt of the run + results/heads/<method>
    export_model(model, out, format)      model.pt + config.json | model.ts | model.onnx
The backbone's weights are checked against the head: the same class count and feature
size, and for "joint" the stage-1 classifier itself.
"""
from __future__ import annotations

import json
import os
import warnings

import torch

from lt_dist.data.presets import get_preset
from lt_dist.engine.checkpoint import load_best_model
from lt_dist.errors import UserInputError
from lt_dist.models.heads import build_head
from lt_dist.models.package import FORMAT, VERSION, PackagedModel, build_backbone, save_package
from lt_dist.stage2.saved import load_head

FORMATS = {"torch": "model.pt", "torchscript": "model.ts", "onnx": "model.onnx"}
ONNX_OPSET = 18  # the lowest opset torch's (dynamo) ONNX exporter writes; ONNX Runtime >= 1.14 runs it


def eval_preset_config(best: dict) -> dict:
    """The eval transform stage 1 and extract used: name, crop_size, resize_size, mean, std."""
    size = best.get("image_size")
    preset = get_preset(best.get("eval_preset", "imagenet_eval"), **({"size": size} if size else {}))
    return {"name": preset.name, "crop_size": preset.crop_size, "resize_size": preset.resize_size,
            "mean": list(preset.mean), "std": list(preset.std)}


def assemble(run: str | None, results: str, method: str) -> PackagedModel:
    """backbone of run's best_model.pt (default: the checkpoint the head's features came from)
    + results/heads/<method>, in eval mode, with its config."""
    tensors, record = load_head(results, method)
    run = run or record.get("ckpt")
    if not run:
        raise UserInputError(f"the {method} head does not name its stage-1 run: pass --run runs/NAME")
    best = load_best_model(run)
    head = build_head(method, {name: torch.from_numpy(value) for name, value in tensors.items()},
                      record.get("options"))
    _check_match(best, tensors, record, run, method)
    backbone = build_backbone(best["arch"], best["num_classes"], best["small_input"])
    backbone.load_state_dict({name[len("backbone."):]: value for name, value in best["state_dict"].items()
                              if name.startswith("backbone.")})
    config = {"format": FORMAT, "version": VERSION, "arch": best["arch"], "small_input": best["small_input"],
              "feature_dim": int(best["state_dict"]["fc.weight"].shape[1]), "num_classes": best["num_classes"],
              "method": method, "head_options": record.get("options", {}), "params": record.get("params", {}),
              "class_names": list(record.get("class_names") or best["class_names"]),
              "train_counts": list(record.get("train_counts") or best["train_counts"]),
              "preset": eval_preset_config(best),
              "source": {"run": os.path.abspath(run), "results": os.path.abspath(results),
                         "features": record.get("features"), "scores": record.get("scores", {})}}
    return PackagedModel(backbone, head, config).eval()


def _check_match(best: dict, tensors: dict, record: dict, run: str, method: str) -> None:
    """Refuse a head saved for another backbone: class count, feature size, and joint's W."""
    fc_weight = best["state_dict"]["fc.weight"].numpy()
    shapes = {name: value.shape for name, value in tensors.items()}
    num_classes, dim = (shapes["centroids"] if "centroids" in shapes else shapes["weight"])
    if (num_classes, dim) != fc_weight.shape:
        raise UserInputError(f"the {method} head is {num_classes} classes x {dim} features but {run!r} has "
                             f"{fc_weight.shape[0]} x {fc_weight.shape[1]}: pass the run its features came from")
    if method == "joint" and not (tensors["weight"] == fc_weight).all():
        raise UserInputError(f"the joint head in {record.get('features')!r} is not {run!r}'s classifier: "
                             f"pass the run its features came from")


def example_input(config: dict, batch: int = 2) -> torch.Tensor:
    """A seeded (batch, 3, crop, crop) input of the model's eval size (traces, checks)."""
    size = config["preset"]["crop_size"]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def export_model(model: PackagedModel, out_dir: str, fmt: str = "torch") -> str:
    """Write the model in `fmt` (torch | torchscript | onnx) under out_dir, config.json beside it;
    returns the model file's path. TorchScript and ONNX take any batch size."""
    if fmt not in FORMATS:
        raise UserInputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    os.makedirs(out_dir, exist_ok=True)
    if fmt == "torch":
        return save_package(model, out_dir)
    path = os.path.join(out_dir, FORMATS[fmt])
    temp = f"{path}.tmp-{os.getpid()}"
    model = model.eval()
    with torch.no_grad():
        if fmt == "torchscript":
            # torch marks TorchScript deprecated, but serving stacks still load .ts files: say it once
            # in the docs, not as a FutureWarning on every export
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(model, example_input(model.config), check_trace=False)
                torch.jit.save(traced, temp, _extra_files={"config.json": json.dumps(model.config)})
        else:
            _export_onnx(model, temp)
    os.replace(temp, path)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(model.config, handle, indent=1)
    return path


def _export_onnx(model: PackagedModel, path: str) -> None:
    """ONNX with input "images" (N, 3, H, W) and output "logits" (N, C), N dynamic."""
    # torch.export's exporter (the TorchScript-based one is deprecated); it needs onnxscript
    torch.onnx.export(model, (example_input(model.config),), path, input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                      opset_version=ONNX_OPSET, dynamo=True, external_data=False, verbose=False)
