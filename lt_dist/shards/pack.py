"""`lt_dist pack`: plan the splits, pack classes in worker processes, write the index.

A split folder goes through three states:
    in progress  .pack-plan.json (the plan's fingerprint) + finished shards
                 + .*.tmp-PID files of shards being written
    finished     the above + ids.txt, shards.parquet, dataset.json, manifest.parquet
Re-running the same pack on an in-progress folder keeps its finished shards; on a
finished folder it does nothing. A folder holding anything else is refused.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from lt_dist import __version__
from lt_dist.errors import UserInputError
from lt_dist.shards.format import FORMAT_NAME, FORMAT_VERSION
from lt_dist.shards.images import CHECKS
from lt_dist.shards.manifest import is_split_dir, write_split_index
from lt_dist.shards.plan import SplitPlan, SubsetOptions, check_split, fingerprint, plan_splits
from lt_dist.shards.sources import Source
from lt_dist.shards.subset import group_by_label
from lt_dist.shards.writer import ClassResult, ClassTask, PackError, ShardLimits, pack_class

PLAN_FILE = ".pack-plan.json"


@dataclass(frozen=True)
class PackOptions:
    """How to write the shards."""

    out: str  # shards/NAME; split S goes to shards/NAME/S
    split: str = "train"  # name of the input split
    limits: ShardLimits = ShardLimits(shard_size=256 << 20, shard_count=10_000)
    workers: int = 1  # packing processes
    check: str = "decode"  # images.CHECKS
    skip_bad: bool = False  # --on-bad-image skip
    overwrite: bool = False  # delete what the split folders hold first
    progress: bool = True  # tqdm bar on stderr


def pack(source: Source, subset: SubsetOptions, options: PackOptions, command: list[str]) -> dict:
    """Pack every split of the plan; returns {split: summary dict}."""
    if options.check not in CHECKS:
        raise UserInputError(f"unknown --check {options.check!r}; choose one of {', '.join(CHECKS)}")
    if options.workers < 1:
        raise UserInputError(f"--workers must be >= 1, got {options.workers}")
    split_items = plan_splits(source, options.split, subset)
    num_classes = len(source.class_names)
    plans = {name: check_split(name, items, num_classes, options.skip_bad)
             for name, items in split_items.items()}
    sizes = {name: len(plan.items) for name, plan in plans.items()}
    context = {"command": command, "source": {"kind": source.kind, "location": source.location},
               "subset": asdict(subset), "split_sizes": sizes}
    with _Runner(options.workers) as runner:
        return {name: pack_split(plan, source.class_names, options, context, runner)
                for name, plan in plans.items()}


def pack_split(plan: SplitPlan, class_names: list[str], options: PackOptions, context: dict,
               runner: "_Runner") -> dict:
    """Pack one split into options.out/plan.name; returns its summary."""
    split_dir = os.path.join(options.out, plan.name)
    stamp = fingerprint(plan, class_names, options.limits.shard_size, options.limits.shard_count)
    if _prepare_output(split_dir, stamp, options.overwrite):
        _log(f"{split_dir}: already packed (same plan), nothing to do")
        with open(os.path.join(split_dir, "dataset.json"), encoding="utf-8") as handle:
            return _summary(json.load(handle), 0.0, reused=0)
    started = time.perf_counter()
    tasks = [ClassTask(label, items, split_dir, options.limits, options.check, options.skip_bad)
             for label, items in enumerate(group_by_label(plan.items, len(class_names)))]
    results = _run_tasks(tasks, runner, options.progress, f"pack {plan.name}")
    info = _dataset_info(plan, class_names, results, options, context)
    samples = [sample for result in results for sample in result.samples]
    shards = [shard for result in results for shard in result.shards]
    write_split_index(split_dir, samples, shards, info)
    elapsed = time.perf_counter() - started
    reused = sum(result.reused_shards for result in results)
    summary = _summary(info, elapsed, reused)
    _log(f"{split_dir}: {summary['num_samples']} images in {summary['num_shards']} shards "
           f"({summary['bytes'] / 1e6:.1f} MB) in {elapsed:.1f}s"
           + (f", {reused} finished shards reused" if reused else ""))
    for entry in info["skipped"]:
        _log(f"  skipped {entry['id']} ({entry['origin']}): {entry['reason']}")
    if info["skipped"]:
        _log(f"  {len(info['skipped'])} items skipped (listed in dataset.json)")
    return summary


def _prepare_output(split_dir: str, stamp: str, overwrite: bool) -> bool:
    """Make split_dir ready for this plan; True when it already holds the finished pack."""
    plan_path = os.path.join(split_dir, PLAN_FILE)
    if os.path.isdir(split_dir) and os.listdir(split_dir):
        if overwrite:
            shutil.rmtree(split_dir)
        elif not os.path.isfile(plan_path):
            raise UserInputError(f"output folder {split_dir!r} already holds files that are not an "
                                 f"lt-dist pack; choose another --out or pass --overwrite")
        else:
            with open(plan_path, encoding="utf-8") as handle:
                previous = json.load(handle).get("fingerprint")
            if previous != stamp:
                raise UserInputError(
                    f"output folder {split_dir!r} already holds a different dataset (plan "
                    f"{str(previous)[:12]} there, {stamp[:12]} now); choose another --out or pass --overwrite")
            if is_split_dir(split_dir):
                return True
    os.makedirs(split_dir, exist_ok=True)
    for name in os.listdir(split_dir):  # temp files of a killed run
        if name.startswith(".") and ".tmp-" in name:
            os.remove(os.path.join(split_dir, name))
    temp = plan_path + f".tmp-{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump({"fingerprint": stamp, "format_version": FORMAT_VERSION}, handle)
    os.replace(temp, plan_path)
    return False


def _run_tasks(tasks: list[ClassTask], runner: "_Runner", progress: bool, desc: str) -> list[ClassResult]:
    """Pack classes with the runner, under one progress bar."""
    total = sum(len(task.items) for task in tasks)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    # Largest classes first: the pool's tail is then made of small classes.
    order = sorted(tasks, key=lambda task: -len(task.items))
    try:
        results = runner.map(order, bar)
    finally:
        bar.close()
    return sorted(results, key=lambda result: result.label)


class _Runner:
    """Runs ClassTasks in this process (workers=1) or in one spawn pool kept for all splits."""

    def __init__(self, workers: int):
        self.workers, self.pool, self.bar = workers, None, None

    def __enter__(self) -> "_Runner":
        if self.workers > 1:
            context = mp.get_context("spawn")  # no fork of a process that may hold threads
            self.queue = context.Queue()
            self.pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.queue,))
            self.reader = threading.Thread(target=self._drain_progress, daemon=True)
            self.reader.start()
        return self

    def map(self, tasks: list[ClassTask], bar: tqdm) -> list[ClassResult]:
        self.bar = bar
        if self.pool is None:
            return [pack_class(task, bar.update) for task in tasks]
        return list(self.pool.imap_unordered(_pack_in_worker, tasks))

    def _drain_progress(self) -> None:
        while (count := self.queue.get()) is not None:
            self.bar.update(count)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc_type else self.pool.close()
            self.pool.join()
            self.queue.put(None)
            self.reader.join(timeout=5)


_PROGRESS_QUEUE = None


def _init_worker(queue) -> None:
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue


def _pack_in_worker(task: ClassTask) -> ClassResult:
    pending = [0]

    def report(count: int) -> None:  # batch the updates: one queue message per 64 images
        pending[0] += count
        if pending[0] >= 64:
            _PROGRESS_QUEUE.put(pending[0])
            pending[0] = 0

    result = pack_class(task, report)
    _PROGRESS_QUEUE.put(pending[0])
    return result


def _dataset_info(plan: SplitPlan, class_names: list[str], results: list[ClassResult],
                  options: PackOptions, context: dict) -> dict:
    counts = np.zeros(len(class_names), dtype=np.int64)
    for result in results:
        counts[result.label] = len(result.samples)
    if (counts == 0).any():
        label = int(np.flatnonzero(counts == 0)[0])
        raise PackError(f"class {label} ({class_names[label]}) is left with zero images in split "
                        f"{plan.name} after skipping bad images")
    skipped = plan.skipped + [entry for result in results for entry in result.skipped]
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "lt_dist_version": __version__,
        "name": os.path.basename(os.path.normpath(options.out)), "split": plan.name,
        "num_classes": len(class_names), "class_names": class_names,
        "samples_per_class": counts.tolist(), "num_samples": int(counts.sum()),
        "split_sizes": {**context["split_sizes"], plan.name: int(counts.sum())},
        "num_shards": sum(len(result.shards) for result in results),
        "bytes": sum(shard.bytes for result in results for shard in result.shards),
        "shard_size": options.limits.shard_size, "shard_count": options.limits.shard_count,
        "check": options.check, "command": context["command"], "source": context["source"],
        "subset": context["subset"], "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _summary(info: dict, seconds: float, reused: int) -> dict:
    return {"split": info["split"], "num_samples": info["num_samples"], "num_shards": info["num_shards"],
            "bytes": info["bytes"], "skipped": len(info["skipped"]), "seconds": seconds,
            "reused_shards": reused}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
