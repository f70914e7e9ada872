"""`lt_dist pack`: plan the splits, pack classes in worker processes, write the index.

A split folder goes through three states:
    in progress  .pack-plan.json (the plan's fingerprint) + finished shards
                 + .*.tmp-PID files of shards being written
    finished     the above + ids.txt, shards.parquet, dataset.json, manifest.parquet
Re-running the same pack on an in-progress folder keeps its finished shards; on a
finished folder it checks every shard's size and sha256 against the shard table and
does nothing when all match, else packs the missing or damaged shards again. A
folder holding anything else is refused; one pack at a time writes a split folder
(outdir.SplitLock), and --overwrite deletes only lt-dist's own files.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from lt_dist import __version__
from lt_dist.errors import UserInputError
from lt_dist.shards.format import FORMAT_NAME, FORMAT_VERSION, file_sha256, parse_shard_name
from lt_dist.shards.images import CHECKS
from lt_dist.shards.manifest import (IDS_LIST, MANIFEST, PLAN_FILE, SHARD_TABLE, class_difference, is_split_dir,
                                     read_info, write_split_index)
from lt_dist.shards.outdir import (LOCK_FILE, SplitLock, check_split_name, foreign_entries,
                                   remove_own_files)
from lt_dist.shards.plan import SplitPlan, SubsetOptions, check_split, fingerprint, plan_splits
from lt_dist.shards.sources import Source
from lt_dist.shards.subset import group_by_label
from lt_dist.shards.writer import ClassResult, ClassTask, PackError, ShardLimits, pack_class


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
    max_workers = 4 * (os.cpu_count() or 1)
    if not 1 <= options.workers <= max_workers:
        raise UserInputError(f"--workers {options.workers} is out of range: 1 to {max_workers} "
                             f"(4 per CPU of this machine)")
    check_split_name(options.split)
    if os.path.exists(options.out) and not os.path.isdir(options.out):
        raise UserInputError(f"--out {options.out!r} is a file, not a folder")
    split_items = plan_splits(source, options.split, subset)
    num_classes = len(source.class_names)
    plans = {name: check_split(name, items, num_classes, options.skip_bad)
             for name, items in split_items.items()}
    check_same_classes(options.out, list(plans), source.class_names)
    for name in plans:  # before any lock file is created in a folder that is not ours
        split_dir = os.path.join(options.out, check_split_name(name))
        if os.path.isdir(split_dir) and (foreign := foreign_entries(split_dir)):
            raise UserInputError(f"output folder {split_dir!r} holds files lt-dist did "
                                 f"not write ({len(foreign)}, first: {foreign[0]!r}); pack leaves them alone: choose "
                                 f"another --out or --split")
    sizes = {name: len(plan.items) for name, plan in plans.items()}
    context = {"command": command, "source": {"kind": source.kind, "location": source.location},
               "subset": asdict(subset), "split_sizes": sizes}
    with contextlib.ExitStack() as locks:
        for name in sorted(plans):  # every split locked before any is touched
            locks.enter_context(SplitLock(os.path.join(options.out, check_split_name(name))))
        with _Runner(min(options.workers, num_classes)) as runner:
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
    for entry in info["skipped"]:
        _log(f"  skipped {entry['id']} ({entry['origin']}): {entry['reason']}")
    if info["skipped"]:
        _log(f"  {len(info['skipped'])} items skipped (listed in dataset.json)")
    return summary


def _prepare_output(split_dir: str, stamp: str, overwrite: bool) -> bool:
    """Make split_dir (created and locked by the caller) ready for this plan.

    Returns True when it already holds this finished pack, intact. Deletes only
    lt-dist's own files (outdir.is_own_file), and only with --overwrite or to repair
    shards of this same plan that are missing or damaged.
    """
    plan_path = os.path.join(split_dir, PLAN_FILE)
    if overwrite:
        removed = remove_own_files(split_dir)
        if removed:
            _log(f"{split_dir}: --overwrite deleted {removed} files of an earlier pack")
    foreign = foreign_entries(split_dir)
    if foreign:
        raise UserInputError(f"output folder {split_dir!r} already holds files that are not an lt-dist "
                             f"pack (first: {foreign[0]!r}); choose another --out or --split")
    own = [name for name in os.listdir(split_dir) if name != LOCK_FILE]
    if own and not os.path.isfile(plan_path):
        raise UserInputError(f"output folder {split_dir!r} holds lt-dist files without {PLAN_FILE}; "
                             f"pass --overwrite to pack it anew")
    if own:
        previous = _read_plan(plan_path)
        if previous != stamp:
            raise UserInputError(
                f"output folder {split_dir!r} already holds a different dataset (plan "
                f"{str(previous)[:12]} there, {stamp[:12]} now); choose another --out or pass --overwrite")
        if is_split_dir(split_dir):
            damaged = damaged_shards(split_dir)
            if not damaged and _index_readable(split_dir):
                return True
            _log(f"{split_dir}: {len(damaged)} finished shards are missing or damaged "
                 f"(first: {damaged[0]}); packing them again" if damaged else
                 f"{split_dir}: its index files are damaged; writing them again")
            os.remove(os.path.join(split_dir, MANIFEST))  # first: the folder is unfinished from here on
            # Only names lt-dist writes (plain basenames): a shard table edited to hold "../x" must
            # not make the repair delete a file outside the split folder.
            for name in (n for n in damaged if n == SHARD_TABLE or parse_shard_name(n) is not None):
                if os.path.exists(path := os.path.join(split_dir, name)):
                    os.remove(path)
    for name in os.listdir(split_dir):  # temp files of a killed run
        if name.startswith(".") and ".tmp-" in name:
            os.remove(os.path.join(split_dir, name))
    temp = plan_path + f".tmp-{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump({"fingerprint": stamp, "format_version": FORMAT_VERSION}, handle)
    os.replace(temp, plan_path)
    return False


def _read_plan(plan_path: str) -> str | None:
    """The fingerprint recorded in .pack-plan.json (None when unreadable)."""
    try:
        with open(plan_path, encoding="utf-8") as handle:
            return json.load(handle).get("fingerprint")
    except (ValueError, AttributeError):  # torn or hand-edited: not this plan
        return None


def _index_readable(split_dir: str) -> bool:
    """dataset.json reads and ids.txt is there (the shard table was checked shard by shard)."""
    try:
        read_info(split_dir)
    except UserInputError:
        return False
    return os.path.isfile(os.path.join(split_dir, IDS_LIST))


def damaged_shards(split_dir: str) -> list[str]:
    """Shards of a finished split whose file is missing or whose size or sha256 differs
    from the shard table (the whole table when shards.parquet itself is unreadable)."""
    try:
        rows = pq.read_table(os.path.join(split_dir, SHARD_TABLE)).to_pylist()
    except (OSError, pa.ArrowException):
        return [SHARD_TABLE]
    damaged = []
    for row in rows:
        path = os.path.join(split_dir, row["path"])
        if (not os.path.isfile(path) or os.path.getsize(path) != row["bytes"]
                or file_sha256(path) != row["sha256"]):
            damaged.append(row["path"])
    return damaged


def check_same_classes(out: str, splits: list[str], class_names: list[str]) -> None:
    """Refuse to pack splits whose classes differ from the finished splits beside them."""
    for entry in sorted(os.scandir(out), key=lambda e: e.name) if os.path.isdir(out) else []:
        if entry.name in splits or not is_split_dir(entry.path):
            continue
        difference = class_difference(read_info(entry.path).get("class_names"), class_names)
        if difference:
            raise UserInputError(f"split {entry.name!r} in {out!r} has other classes ({difference}); splits "
                                 f"of one dataset must share class names: choose another --out")


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


class PackWorkerDied(RuntimeError):
    """A packing process ended without a result (killed, out of memory): a machine fault."""


class _Runner:
    """Runs ClassTasks in this process (workers=1) or in one spawn pool kept for all splits.

    A ProcessPoolExecutor rather than multiprocessing.Pool: when a worker is killed,
    Pool waits forever for the task it held; the executor fails every pending task
    with BrokenProcessPool, which becomes PackWorkerDied.
    """

    def __init__(self, workers: int):
        self.workers, self.pool, self.bar = workers, None, None

    def __enter__(self) -> "_Runner":
        if self.workers > 1:
            context = mp.get_context("spawn")  # no fork of a process that may hold threads
            self.queue = context.Queue()
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                            initargs=(self.queue,))
            self.reader = threading.Thread(target=self._drain_progress, daemon=True)
            self.reader.start()
        return self

    def map(self, tasks: list[ClassTask], bar: tqdm) -> list[ClassResult]:
        self.bar = bar
        if self.pool is None:
            return [pack_class(task, bar.update) for task in tasks]
        try:  # submit raises BrokenProcessPool too, when a worker died before the last task went in
            futures = [self.pool.submit(_pack_in_worker, task) for task in tasks]
            return [future.result() for future in as_completed(futures)]
        except BrokenProcessPool:
            raise PackWorkerDied("a packing process died (killed, or out of memory); the shards finished "
                                 "so far are kept: run the same command again to carry on") from None

    def _drain_progress(self) -> None:
        while (count := self.queue.get()) is not None:
            self.bar.update(count)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            if exc_type:  # stop now, as Pool.terminate did: the other classes' work is not wanted
                for process in list(getattr(self.pool, "_processes", {}).values()):
                    process.terminate()
            self.pool.shutdown(wait=True, cancel_futures=bool(exc_type))
            if exc_type:  # a killed worker may hold the queue's write lock: do not wait on it at exit
                self.queue.cancel_join_thread()
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
            "reused_shards": reused, "largest_class": max(info["samples_per_class"]),
            "smallest_class": min(info["samples_per_class"])}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
