"""What the report says about how its results were made: the stage-1 run behind the features
(its config.json and log.jsonl), the feature index and the search, found from search.json."""
from __future__ import annotations

import json
import os

from lt_dist.stage2.store import INDEX


def _read_json(path: str) -> dict:
    """The JSON object in `path`, {} when it is missing or not an object (the report still renders)."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def find_sources(search_info: dict) -> tuple[dict, str | None]:
    """(the feature index, the stage-1 run folder or None) behind a search's search.json.

    The run folder is the folder of the checkpoint the features came from (runs/NAME/best_model.pt)
    when it still holds a config.json or log.jsonl.
    """
    features = search_info.get("features")
    index = _read_json(os.path.join(features, INDEX)) if isinstance(features, str) else {}
    ckpt = index.get("ckpt")
    if not isinstance(ckpt, str):
        return index, None
    run_dir = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
    held = any(os.path.isfile(os.path.join(run_dir, name)) for name in ("config.json", "log.jsonl"))
    return index, (run_dir if held else None)


def read_log(run_dir: str) -> tuple[list[dict], list[tuple[int, float]]]:
    """(epoch lines, (step, lr) of the train lines) of run_dir/log.jsonl.

    A resumed run can log an epoch twice (killed after the line, before the checkpoint): the last
    line of each epoch is kept. Torn or foreign lines are skipped.
    """
    by_epoch: dict[int, dict] = {}
    lr_steps: list[tuple[int, float]] = []
    try:
        with open(os.path.join(run_dir, "log.jsonl"), encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError:
        return [], []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("kind") == "epoch" and isinstance(record.get("epoch"), int) and "loss" in record:
            by_epoch[record["epoch"]] = record
        elif record.get("kind") == "train" and isinstance(record.get("lr"), (int, float)):
            lr_steps.append((int(record.get("step", len(lr_steps))), float(record["lr"])))
    return [by_epoch[epoch] for epoch in sorted(by_epoch)], sorted(set(lr_steps))


def provenance_rows(search_info: dict, index: dict, run_dir: str | None) -> list[tuple[str, str]]:
    """(what, value) rows: data, arch, epochs, sampler, loss, seed, world size, commits and commands."""
    config = _read_json(os.path.join(run_dir, "config.json")) if run_dir else {}
    train = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
    loss = train.get("loss")
    if loss and isinstance(train.get("loss_params"), dict) and train["loss_params"]:
        loss = f"{loss} ({', '.join(f'{k}={v}' for k, v in train['loss_params'].items())})"
    rows = [("stage-1 run", run_dir), ("data", train.get("data") or index.get("data")),
            ("arch", train.get("arch") or index.get("arch")), ("epochs", train.get("epochs")),
            ("best epoch on val (from 0)", index.get("best_epoch")),
            ("sampler", train.get("sampler")), ("loss", loss), ("stage-1 seed", train.get("seed")),
            ("world size", config.get("world_size")), ("nodes", config.get("num_nodes")),
            ("checkpoint", index.get("ckpt")), ("features", search_info.get("features")),
            ("stage-2 seed", search_info.get("seed")), ("selected on", search_info.get("select_on")),
            ("git commit (stage 1)", config.get("git_commit")), ("git commit (search)", search_info.get("git_commit")),
            ("stage 1", config.get("command")), ("extract", index.get("command")),
            ("search", search_info.get("command"))]
    return [(name, str(value)) for name, value in rows if value is not None and value != ""]
