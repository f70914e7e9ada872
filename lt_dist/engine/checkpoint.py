"""Checkpoint naming, pruning, the best-on-val model, and resume compatibility.

checkpoints/<tag>/ are DeepSpeed checkpoints (model, optimizer, scheduler, client
state: epoch, global step, loader state, best so far). Tags start with the global
step, so sorting by name is sorting by time. best_model.pt is the best-on-val
module weights alone (plus what a reader needs to rebuild the model), written
atomically: stage 2 reads it without DeepSpeed.

Once every rank has written a tag, rank 0 writes checkpoints/<tag>/lt_manifest.json
(size and sha256 of every file); only then does `latest` move. A tag without a
manifest, or whose files disagree with it, is incomplete or damaged: resume skips
it (with a log line) and takes the newest tag that verifies.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Callable

import torch

from lt_dist.errors import UserInputError
from lt_dist.files import file_sha256

BEST_MODEL = "best_model.pt"
MANIFEST = "lt_manifest.json"
FULL_ZERO_STATE = "lt_full_zero_state.pt"  # ZeRO 1/2: whole fp32 masters + optimizer state, any world
BEST_MODEL_KEYS = ("state_dict", "arch", "num_classes", "small_input", "train_counts", "class_names")


def checkpoint_tag(global_step: int, epoch: int, end_of_epoch: bool) -> str:
    """gs000001200-epoch0003-end | gs000001150-epoch0003-mid."""
    return f"gs{global_step:09d}-epoch{epoch:04d}-{'end' if end_of_epoch else 'mid'}"


def list_tags(folder: str) -> list[str]:
    """Checkpoint tags in folder, oldest first."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.startswith("gs") and
                  os.path.isdir(os.path.join(folder, name)))


def prune_checkpoints(folder: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` complete tags, and incomplete tags older than the newest
    complete one (rank 0 only, after every rank saved). Tags without a manifest never count
    towards `keep`, so a torn save cannot push out a good checkpoint."""
    tags = list_tags(folder)
    complete = [tag for tag in tags if os.path.isfile(os.path.join(folder, tag, MANIFEST))]
    newest = complete[-1] if complete else None
    removed = [tag for tag in tags if (tag in complete and tag not in complete[-keep:])
               or (tag not in complete and newest is not None and tag < newest)]
    for tag in removed:
        shutil.rmtree(os.path.join(folder, tag), ignore_errors=True)
    return removed


def write_tag_manifest(tag_dir: str) -> dict:
    """Record size and sha256 of every file in tag_dir in lt_manifest.json (temp + fsync + rename)."""
    files = {name: {"size": os.path.getsize(os.path.join(tag_dir, name)),
                    "sha256": file_sha256(os.path.join(tag_dir, name))}
             for name in sorted(os.listdir(tag_dir))
             if name != MANIFEST and not name.startswith(f"{MANIFEST}.tmp") and
             os.path.isfile(os.path.join(tag_dir, name))}
    temp = os.path.join(tag_dir, f"{MANIFEST}.tmp-{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, os.path.join(tag_dir, MANIFEST))
    return files


def tag_problem(tag_dir: str) -> str | None:
    """None when every file of the tag matches its manifest, else what is wrong (one phrase)."""
    try:
        with open(os.path.join(tag_dir, MANIFEST), encoding="utf-8") as handle:
            files = json.load(handle)["files"]
        expected = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST} (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable"
    if not expected:
        return f"{MANIFEST} lists no files"
    for name, (size, sha256) in sorted(expected.items()):
        path = os.path.join(tag_dir, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, {size} were written"
        if file_sha256(path) != sha256:
            return f"{name} does not match its sha256"
    return None


def choose_resume_tag(folder: str, log: Callable[[str], None] = print) -> str:
    """The newest tag that verifies: `latest`'s when it does, else the newest older one (with a log line).

    Raises UserInputError naming the folder and each tag's problem when none is usable.
    """
    tags = list_tags(folder)
    latest_path = os.path.join(folder, "latest")
    latest = None
    if os.path.isfile(latest_path):
        with open(latest_path, encoding="utf-8", errors="replace") as handle:
            latest = handle.read().strip()
        if latest not in tags:
            log(f"checkpoint: {latest_path} names {latest[:80]!r}, which is not in {folder}; "
                f"looking for the newest complete checkpoint")
    # `latest` moves only after a verified save, so tags newer than it are torn saves
    candidates = [tag for tag in reversed(tags) if latest not in tags or tag <= latest]
    problems = []
    for tag in candidates:
        problem = tag_problem(os.path.join(folder, tag))
        if problem is None:
            if problems:
                log(f"checkpoint: {'; '.join(problems)}; resuming from the older {tag}")
            return tag
        problems.append(f"{tag} is unusable: {problem}")
    if not tags:
        raise UserInputError(f"--resume: no checkpoint found in {folder!r} (the run stopped before its "
                             f"first save): start it again without --resume in a new --out")
    raise UserInputError(f"--resume: no usable checkpoint in {folder!r}: {'; '.join(problems)}")


def save_best_model(run_dir: str, module: torch.nn.Module, info: dict) -> str:
    """Write best_model.pt = {"state_dict", **info} by temp file + rename."""
    path = os.path.join(run_dir, BEST_MODEL)
    temp = f"{path}.tmp-{os.getpid()}"
    torch.save({"state_dict": module.state_dict(), **info}, temp)
    os.replace(temp, path)
    return path


def best_model_path(run_dir: str) -> str:
    """run_dir/best_model.pt, or run_dir itself when it names a .pt file."""
    return run_dir if run_dir.endswith(".pt") else os.path.join(run_dir, BEST_MODEL)


def load_best_model(run_dir: str) -> dict:
    """best_model.pt of a run (map_location cpu)."""
    path = best_model_path(run_dir)
    if not os.path.isfile(path):
        raise UserInputError(f"{path!r} does not exist: is {run_dir!r} a finished stage-1 run?")
    try:
        best = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise UserInputError(f"{path!r} is not a readable stage-1 model ({type(error).__name__})") from None
    missing = [key for key in BEST_MODEL_KEYS if not isinstance(best, dict) or key not in best]
    if missing:
        raise UserInputError(f"{path!r} is not a stage-1 model written by lt-dist (no {missing[0]!r})")
    return best


def check_resume_compatible(run_dir: str, arch: str, num_classes: int, small_input: bool,
                            same: dict | None = None) -> None:
    """Refuse to resume a run whose saved config has another arch or class count, or (where the
    saved config records them) other values of the fields in `same` (epochs, seed, sampler: the
    saved loader position only means something for the same sampling plan)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserInputError(f"--resume: {path!r} does not exist; nothing to resume in {run_dir!r}")
    try:
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        saved_train, saved_classes = dict(saved.get("train", {})), saved.get("num_classes")
    except (OSError, ValueError, TypeError, AttributeError):
        raise UserInputError(f"--resume: {path!r} is not a readable run config (JSON object)") from None
    for name, old, new in (("arch", saved_train.get("arch"), arch), ("num_classes", saved_classes, num_classes),
                           ("small_input", saved_train.get("small_input"), small_input),
                           *((key, saved_train[key], value) for key, value in (same or {}).items()
                             if key in saved_train)):
        if old != new:
            raise UserInputError(f"--resume: the checkpoint in {run_dir!r} was trained with {name}={old!r}, "
                                 f"this run has {name}={new!r}")


def check_resume_world(run_dir: str, world_size: int) -> None:
    """Refuse a resume on another world size that the newest checkpoint cannot serve.

    Without ZeRO (stage 0) every rank's optimizer state is whole. With ZeRO 1/2 it is split
    per rank and DeepSpeed's loader refuses another split; lt-dist's checkpoints also hold
    FULL_ZERO_STATE (every parameter's fp32 master and optimizer state, gathered with
    DeepSpeed's safe_get_full_* API), which engine.ds re-partitions over any world.
    Only a checkpoint without that file (written by an older lt-dist) is tied to its size.
    The loader re-splits the interrupted epoch in every case (data.elastic).
    """
    folder = os.path.join(run_dir, "checkpoints")
    latest = os.path.join(folder, "latest")
    if not os.path.isfile(latest):
        return  # nothing to resume: the resume itself reports that
    with open(latest, encoding="utf-8") as handle:
        tag = handle.read().strip()
    saved = len(glob.glob(os.path.join(folder, tag, "*zero_pp_rank_*_optim_states.pt")))
    if not saved or saved == world_size or os.path.isfile(os.path.join(folder, tag, FULL_ZERO_STATE)):
        return
    raise UserInputError(f"--resume: checkpoint {tag} holds ZeRO optimizer state split over {saved} ranks and "
                         f"no {FULL_ZERO_STATE} (an older lt-dist wrote it), this run has {world_size}: resume on "
                         f"{saved} ranks (train_batch_size is kept, the micro-batch follows)")
