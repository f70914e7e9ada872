"""The chosen stage-2 classifiers on disk: results/NAME/heads/<method>.safetensors + <method>.json.

    <method>.safetensors   the tensors lt_dist.models.heads.build_head needs:
                           linear methods  weight (C, D) effective rows, bias (C,) if kept,
                                           scales (C,) for LWS (already folded into weight)
                           ncm             mean (D,) float64, centroids (C, D) float64
                           cosine          weight (C, D), scale (1,)
                           logit_adjust    the joint head's tensors + adjustment (C,) tau log pi_j
                           disalign        the joint head's tensors + align_scale (C,), align_shift (C,),
                                           gate_weight (D,), gate_bias (1,)
    <method>.json          method, params, options (NCM metric), tau / scale, the features
                           and stage-1 checkpoint it came from, class names, training
                           counts, and its val/test scores
Written by temp file + rename, so a reader never sees half a head.
"""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from lt_dist.errors import UserInputError
from lt_dist.stage2.heads import AdjustedPredictor, CosinePredictor, DisAlignPredictor, LinearPredictor, NCMPredictor

HEADS_DIR = "heads"


def predictor_tensors(predictor) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, options) of a fitted stage-2 predictor, in build_head's vocabulary."""
    if isinstance(predictor, AdjustedPredictor):  # the base head's tensors, plus the shift
        tensors, options = predictor_tensors(predictor.base)
        return {**tensors, "adjustment": predictor.adjustment}, {**options, "tau": float(predictor.tau)}
    if isinstance(predictor, DisAlignPredictor):
        tensors, options = predictor_tensors(predictor.base)
        return ({**tensors, "align_scale": predictor.scale, "align_shift": predictor.shift,
                 "gate_weight": predictor.gate_weight, "gate_bias": np.array([predictor.gate_bias], np.float32)},
                {**options, "rho": float(predictor.rho)})
    if isinstance(predictor, LinearPredictor):
        tensors = {"weight": predictor.weight}
        if predictor.bias is not None:
            tensors["bias"] = predictor.bias
        if getattr(predictor, "scales", None) is not None:
            tensors["scales"] = np.asarray(predictor.scales, dtype=np.float32)
        options = {"tau": float(predictor.tau)} if hasattr(predictor, "tau") else {}
        return tensors, options
    if isinstance(predictor, NCMPredictor):
        return ({"mean": np.asarray(predictor.mean, np.float64), "centroids": np.asarray(predictor.centroids,
                                                                                          np.float64)},
                {"metric": predictor.metric})
    if isinstance(predictor, CosinePredictor):
        # scale: one s, or (C,) per-class f_j * s (lws on a cosine stage-1 head)
        scale = np.asarray(predictor.scale, np.float32).reshape(-1)
        tensors = {"weight": predictor.weight, "scale": scale}
        if getattr(predictor, "scales", None) is not None:
            tensors["scales"] = np.asarray(predictor.scales, dtype=np.float32)
        options = {"scale": float(scale[0]) if scale.size == 1 else [float(v) for v in scale]}
        if hasattr(predictor, "tau"):
            options["tau"] = float(predictor.tau)
        return tensors, options
    raise ValueError(f"no saved form for a {type(predictor).__name__}")


def save_head(results_dir: str, method: str, predictor, info: dict) -> str:
    """Write heads/<method>.safetensors and heads/<method>.json; returns the JSON's path.

    info: what the JSON records besides the method, options and tensor names (params,
    scores, features folder, checkpoint, class names, training counts).
    """
    folder = os.path.join(results_dir, HEADS_DIR)
    os.makedirs(folder, exist_ok=True)
    tensors, options = predictor_tensors(predictor)
    base = os.path.join(folder, method)
    temp = f"{base}.safetensors.tmp-{os.getpid()}"
    save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, temp,
              metadata={"method": method})
    os.replace(temp, f"{base}.safetensors")
    record = {"method": method, "options": options, "tensors": {name: list(value.shape)
                                                               for name, value in tensors.items()}, **info}
    with open(f"{base}.json.tmp-{os.getpid()}", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    os.replace(f"{base}.json.tmp-{os.getpid()}", f"{base}.json")
    return f"{base}.json"


def saved_methods(results_dir: str) -> list[str]:
    """Methods with a complete saved head (both files) under results_dir/heads, sorted."""
    folder = os.path.join(results_dir, HEADS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(name[:-5] for name in os.listdir(folder) if name.endswith(".json")
                  and os.path.isfile(os.path.join(folder, name[:-5] + ".safetensors")))


def load_head(results_dir: str, method: str) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, record) of heads/<method>; UserInputError naming what is there when it is not."""
    base = os.path.join(results_dir, HEADS_DIR, method)
    if not (os.path.isfile(f"{base}.json") and os.path.isfile(f"{base}.safetensors")):
        there = saved_methods(results_dir)
        raise UserInputError(f"{results_dir!r} has no saved {method!r} head; saved: "
                             f"{', '.join(there) if there else 'none (re-run tune/search_stage2.py)'}")
    with open(f"{base}.json", encoding="utf-8") as handle:
        record = json.load(handle)
    return load_file(f"{base}.safetensors"), record
