"""Checkpoint naming, pruning, the best-on-val model, and resume compatibility.

checkpoints/<tag>/ are DeepSpeed checkpoints (model, optimizer, scheduler, client
state: epoch, global step, loader state, best so far). Tags start with the global
step, so sorting by name is sorting by time. best_model.pt is the best-on-val
module weights alone (plus what a reader needs to rebuild the model), written
atomically: stage 2 reads it without DeepSpeed.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import torch

from lt_dist.errors import UserInputError

BEST_MODEL = "best_model.pt"


def checkpoint_tag(global_step: int, epoch: int, end_of_epoch: bool) -> str:
    """gs000001200-epoch0003-end | gs000001150-epoch0003-mid."""
    return f"gs{global_step:09d}-epoch{epoch:04d}-{'end' if end_of_epoch else 'mid'}"


def prune_checkpoints(folder: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` tags (rank 0 only, after every rank saved)."""
    tags = sorted(name for name in os.listdir(folder) if name.startswith("gs") and
                  os.path.isdir(os.path.join(folder, name)))
    removed = tags[:-keep] if len(tags) > keep else []
    for tag in removed:
        shutil.rmtree(os.path.join(folder, tag), ignore_errors=True)
    return removed


def save_best_model(run_dir: str, module: torch.nn.Module, info: dict) -> str:
    """Write best_model.pt = {"state_dict", **info} by temp file + rename."""
    path = os.path.join(run_dir, BEST_MODEL)
    temp = f"{path}.tmp-{os.getpid()}"
    torch.save({"state_dict": module.state_dict(), **info}, temp)
    os.replace(temp, path)
    return path


def load_best_model(run_dir: str) -> dict:
    """best_model.pt of a run (map_location cpu)."""
    path = run_dir if run_dir.endswith(".pt") else os.path.join(run_dir, BEST_MODEL)
    if not os.path.isfile(path):
        raise UserInputError(f"{path!r} does not exist: is {run_dir!r} a finished stage-1 run?")
    return torch.load(path, map_location="cpu", weights_only=False)


def check_resume_compatible(run_dir: str, arch: str, num_classes: int, small_input: bool) -> None:
    """Refuse to resume a run whose saved config has another arch or class count."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserInputError(f"--resume: {path!r} does not exist; nothing to resume in {run_dir!r}")
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    saved_train, saved_classes = saved.get("train", {}), saved.get("num_classes")
    for name, old, new in (("arch", saved_train.get("arch"), arch), ("num_classes", saved_classes, num_classes),
                           ("small_input", saved_train.get("small_input"), small_input)):
        if old != new:
            raise UserInputError(f"--resume: the checkpoint in {run_dir!r} was trained with {name}={old!r}, "
                                 f"this run has {name}={new!r}")


def check_resume_world(run_dir: str, world_size: int) -> None:
    """Refuse a resume whose newest ZeRO checkpoint was partitioned over another number of ranks.

    Without ZeRO (stage 0) every rank's optimizer state is whole and the loader re-splits
    the interrupted epoch, so any world size resumes. With ZeRO the optimizer state is split
    per rank, and DeepSpeed's legacy loader refuses another split; its universal checkpoint
    (ds_to_universal) converts only Adam's state (exp_avg, exp_avg_sq), not SGD's momentum.
    """
    folder = os.path.join(run_dir, "checkpoints")
    latest = os.path.join(folder, "latest")
    if not os.path.isfile(latest):
        return  # nothing to resume: the resume itself reports that
    with open(latest, encoding="utf-8") as handle:
        tag = handle.read().strip()
    saved = len(glob.glob(os.path.join(folder, tag, "*zero_pp_rank_*_optim_states.pt")))
    if saved and saved != world_size:
        raise UserInputError(f"--resume: checkpoint {tag} holds ZeRO optimizer state split over {saved} ranks, "
                             f"this run has {world_size}: resume on {saved} ranks (train_batch_size is kept, the "
                             f"micro-batch follows), or use zero_optimization stage 0 to resume on any world size")
