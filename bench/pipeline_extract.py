"""bench/pipeline.py's extraction (issue 13, item 4): `lt_dist extract` against the forward pass and loader alone."""
from __future__ import annotations

import json
import os
import time

try:
    from bench.pipeline_procs import BIN, LoadMeter, own_cpu, run_logged, tree_cpu
except ImportError:  # run as a script: python bench/pipeline.py
    from pipeline_procs import BIN, LoadMeter, own_cpu, run_logged, tree_cpu

EXTRACT_BATCH = 256  # lt_dist extract's default --batch-size


def forward_only(best: dict, batches: int) -> dict:
    """model.features of the best model on random batches of EXTRACT_BATCH: images/s, torch threads."""
    import torch

    from lt_dist.models.resnet import build_model

    model = build_model(best["arch"], best["num_classes"], best["small_input"], best.get("head", "linear"),
                        best.get("cosine_scale"))
    model.load_state_dict(best["state_dict"])
    model.eval()
    size = best["image_size"]
    inputs = torch.randn(EXTRACT_BATCH, 3, size, size)
    meter = LoadMeter()
    with torch.no_grad():
        model.features(inputs)  # warm-up
        cpu = own_cpu()
        meter.start()
        started = time.perf_counter()
        for _ in range(batches):
            model.features(inputs).float().cpu().numpy()
        elapsed = time.perf_counter() - started
    return {"images_per_s": batches * EXTRACT_BATCH / elapsed, "torch_threads": torch.get_num_threads(),
            "other_load": meter.stop(own_cpu() - cpu)}


def loader_only(split_dir: str, preset: str, image_size: int, workers: int) -> dict:
    """What extract's loader delivers alone: the eval preset, batch EXTRACT_BATCH, its workers and DALI threads."""
    from lt_dist.data.loader import BalancedLoader, LoaderConfig
    from lt_dist.data.presets import get_preset
    from lt_dist.data.sampler import SamplerConfig, SequentialSampler
    from lt_dist.dist import World
    from lt_dist.shards.manifest import load_manifest

    num_samples = int(load_manifest(split_dir).samples_per_class.sum())
    config = LoaderConfig(split_dir, EXTRACT_BATCH, get_preset(preset, size=image_size), SamplerConfig(),
                          "dali", workers)
    loader = BalancedLoader(config, World(), sampler=SequentialSampler(num_samples, World(), EXTRACT_BATCH))
    meter = LoadMeter()
    cpu = tree_cpu(os.getpid())
    meter.start()
    started, count = time.perf_counter(), 0
    for _, labels in loader:
        count += len(labels)
    elapsed = time.perf_counter() - started
    return {"images_per_s": count / elapsed, "images": count, "dali_threads": config.dali_threads,
            "workers": workers, "other_load": meter.stop(tree_cpu(os.getpid()) - cpu)}


def extraction(model_dir: str, data: str, split: str, work: str, forward_batches: int) -> dict:
    """`lt_dist extract` (the demo's command, one split) against forward-only and loader-only rates."""
    from lt_dist.engine.checkpoint import load_best_model

    out = os.path.join(work, "features")
    command = [os.path.join(BIN, "lt_dist"), "extract", "--ckpt", model_dir, "--data", data, "--out", out,
               "--workers", "1", "--split", split]
    started, ended, load, _ = run_logged(command, os.path.join(work, "extract.log"), "lt_dist extract")
    with open(os.path.join(out, "features.json"), encoding="utf-8") as handle:
        entry = json.load(handle)["splits"][split]
    best = load_best_model(model_dir)
    forward = forward_only(best, forward_batches)
    loader = loader_only(os.path.join(data, split), best["eval_preset"], best["image_size"], workers=1)
    extract_rate = entry["num_samples"] / entry["seconds"]
    return {"split": split, "num_samples": entry["num_samples"], "extract_seconds": entry["seconds"],
            "extract_images_per_s": extract_rate, "command_wall_s": ended - started,
            "command_images_per_s": entry["num_samples"] / (ended - started), "extract_other_load": load,
            "forward": forward, "loader": loader, "ratio": extract_rate / forward["images_per_s"]}
