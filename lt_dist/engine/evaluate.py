"""`lt_dist evaluate`: an exported model over every image of a packed split, scored as the search scores.

The split is read in manifest order with the model's own eval transform (the preset in its
config), the logits' top-1 per class is summed, and Many/Medium/Few/All come from the
model's training counts: the same numbers tune/search_stage2.py reports when the model
sees what extract saw (same decoder).
"""
from __future__ import annotations

import csv

import numpy as np
import torch

from lt_dist.data.loader import BalancedLoader, LoaderConfig
from lt_dist.data.presets import Preset, get_preset
from lt_dist.data.sampler import SequentialSampler
from lt_dist.dist import World
from lt_dist.errors import UserInputError
from lt_dist.metrics import group_accuracy, per_class_accuracy, shot_groups
from lt_dist.shards.manifest import load_manifest, resolve_split


def model_preset(config: dict) -> Preset:
    """The eval Preset recorded in an exported model's config."""
    preset = config["preset"]
    return get_preset(preset["name"], crop_size=preset["crop_size"], resize_size=preset["resize_size"],
                      mean=tuple(preset["mean"]), std=tuple(preset["std"]))


@torch.no_grad()
def evaluate_model(model, data: str, split: str, decoder: str = "dali", batch_size: int = 256,
                   workers: int = 2) -> tuple[dict, np.ndarray]:
    """({"many", "medium", "few", "all"} top-1 in percent, per-class accuracy (C,) in percent)."""
    split_dir = resolve_split(data, split)
    counts = load_manifest(split_dir).samples_per_class
    num_classes = model.config["num_classes"]
    if len(counts) != num_classes:
        raise UserInputError(f"{split_dir} has {len(counts)} classes, the model {num_classes}")
    world = World()
    sampler = SequentialSampler(int(counts.sum()), world, batch_size)
    loader = BalancedLoader(LoaderConfig(split_dir, batch_size, model_preset(model.config), decoder=decoder,
                                         num_workers=workers), world, sampler=sampler)
    device = next(model.parameters()).device
    correct, total = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    for images, labels in loader:
        hits = model(images.to(device)).argmax(dim=1).cpu() == labels  # ties: the lower index, as stage 2
        labels = labels.numpy()
        correct += np.bincount(labels[hits.numpy()], minlength=num_classes)
        total += np.bincount(labels, minlength=num_classes)
    train_counts = np.asarray(model.config["train_counts"])
    return group_accuracy(correct, total, train_counts), 100 * per_class_accuracy(correct, total)


def format_scores(method: str, split: str, scores: dict) -> str:
    """A two-line text table: header and the method's Many/Medium/Few/All."""
    return (f"{'method':<12} {'split':<6} {'many':>7} {'medium':>7} {'few':>7} {'all':>7}\n"
            f"{method:<12} {split:<6} " + " ".join(f"{scores[k]:7.2f}" for k in ("many", "medium", "few", "all")))


def write_per_class(path: str, accuracy: np.ndarray, config: dict) -> None:
    """One row per class: label, name, shot group, training count, accuracy in percent."""
    counts = np.asarray(config["train_counts"])
    groups = shot_groups(counts)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "class_name", "group", "train_count", "accuracy"])
        for label, name in enumerate(config["class_names"]):
            writer.writerow([label, name, groups[label], int(counts[label]), f"{accuracy[label]:.2f}"])
