"""bench/pipeline.py's reading of the real run: where its wall time went, from its log.jsonl and checkpoints."""
from __future__ import annotations

import json
import os


def read_log(path: str) -> list[dict]:
    """The records of a log.jsonl, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def real_run_phases(records: list[dict], launched: float, ended: float, world_batch: int,
                    checkpoint_times: dict[int, float]) -> dict:
    """Where a stage-1 run's wall time went, from its log.jsonl records.

    records: log.jsonl; launched/ended: wall clock of the launch and of its exit;
    world_batch: images per optimizer step; checkpoint_times: epoch -> time its end-of-epoch
    checkpoint was committed (mtime of lt_manifest.json), where the tag is still there.
    Train records come every log_every steps with that window's images/s and data wait
    (a window starts where the last ended, or at the epoch's start); an epoch record follows
    the epoch's validation, its checkpoint follows it; a run stopped by SIGTERM ends with a
    "preempted" record once its checkpoint is written.
    """
    epochs = [r for r in records if r["kind"] == "epoch"]
    train = [r for r in records if r["kind"] == "train"]
    preempted = next((r for r in records if r["kind"] == "preempted"), None)
    if not train:
        raise ValueError("the log has no train records: the run stopped before its first log line")
    steps = [r["step"] for r in train]
    window_steps = steps[0] if len(steps) == 1 else min(b - a for a, b in zip(steps, steps[1:]) if b > a)
    window_seconds = [window_steps * world_batch / r["images_per_s"] for r in train]
    training_started = train[0]["time"] - window_seconds[0]
    phases = {"start-up (launcher, imports, process group, engine, first batch)": training_started - launched}
    eval_total = ckpt_total = 0.0
    if epochs:
        train_seconds = sum(e["seconds"] for e in epochs)
        eval_seconds, ckpt_seconds = [], []
        for epoch in epochs:
            last_train = [r for r in train if r["epoch"] == epoch["epoch"]][-1]
            eval_seconds.append(epoch["time"] - last_train["time"])
            if epoch["epoch"] in checkpoint_times:
                ckpt_seconds.append(checkpoint_times[epoch["epoch"]] - epoch["time"])
        eval_total = sum(eval_seconds)
        ckpt_total = sum(ckpt_seconds) / len(ckpt_seconds) * len(epochs) if ckpt_seconds else 0.0
        last_mark = epochs[-1]["time"] + (ckpt_seconds[-1] if epochs[-1]["epoch"] in checkpoint_times else 0.0)
        phases["training epochs (log.jsonl's seconds)"] = train_seconds
        phases["per-epoch eval (val)"] = eval_total
        phases["per-epoch checkpoint (best model + DeepSpeed checkpoint)"] = ckpt_total
        images = sum(e["images_per_s"] * e["seconds"] for e in epochs)
        data_wait = sum(e["data_wait"] * e["seconds"] for e in epochs) / train_seconds
    else:
        train_seconds = sum(window_seconds)
        last_mark = train[-1]["time"]
        phases[f"training ({len(train)} log window(s) of {window_steps} steps)"] = train_seconds
        images = len(train) * window_steps * world_batch
        data_wait = sum(r["data_wait"] * t for r, t in zip(train, window_seconds)) / train_seconds
    if preempted:
        phases["SIGTERM: the step after the last log line, the pre-emption checkpoint"] = preempted["time"] - last_mark
        last_mark = preempted["time"]
    phases["exit" if preempted else "closing test, exit"] = ended - last_mark
    wall = ended - launched
    phases["unaccounted (between epochs)"] = wall - sum(phases.values())
    return {"phases": phases, "wall_s": wall, "epochs": len(epochs), "steps": max(steps), "images": images,
            "preempted": preempted is not None,
            "epoch_images_per_s": [e["images_per_s"] for e in epochs],
            "window_images_per_s": [r["images_per_s"] for r in train],
            "images_per_s": images / train_seconds,  # what the run's epoch (else window) lines say
            "images_per_s_with_eval_ckpt": images / (train_seconds + eval_total + ckpt_total) if epochs else None,
            "data_wait": data_wait, "data_wait_windows": [r["data_wait"] for r in train],
            "window_steps": window_steps,
            "eval_s_per_epoch": eval_total / len(epochs) if epochs else None,
            "ckpt_s_per_epoch": ckpt_total / len(epochs) if epochs else None}


def checkpoint_commit_times(ckpt_dir: str) -> dict[int, float]:
    """epoch -> commit time of its end-of-epoch checkpoint still on disk."""
    found = {}
    for tag in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []:
        manifest = os.path.join(ckpt_dir, tag, "lt_manifest.json")
        if tag.endswith("-end") and os.path.isfile(manifest):
            found[int(tag.split("-epoch")[1].split("-")[0])] = os.path.getmtime(manifest)
    return found
