"""bench/pipeline.py's ladder: one rank of the 2-rank process group that times stage 1 part by part.

The cases (LADDER) run in alternating rounds: the plain PyTorch step, plus a gradient
all-reduce, the DeepSpeed step, then stage 1's own loop adding one part at a time; the
parent merges the ranks' raw results of every process group into one ladder.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import multiprocessing
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Iterator

try:
    from bench.pipeline_procs import REPO, LoadMeter, tree_cpu
except ImportError:  # run as a script: python bench/pipeline.py
    from pipeline_procs import REPO, LoadMeter, tree_cpu

if TYPE_CHECKING:
    from lt_dist.data.loader import BalancedLoader

DS_CONFIG = "launch/ds_demo.json"
# The Makefile's `demo:` flags for launch/train_repr.py, less --data, --out and --epochs.
DEMO_FLAGS = ["--arch", "resnet10", "--small-input", "--train-preset", "small_train", "--eval-preset", "small_eval",
              "--image-size", "28", "--sampler", "instance", "--decoder", "dali", "--workers", "1", "--log-every", "10"]
DEMO_EPOCHS = 20
# The ladder's cases in the order they are added; (name, how the real run switches it).
LADDER = [
    ("plain", "plain PyTorch step (in-memory batches, no communication)", "-"),
    ("allreduce", "+ gradient all-reduce across the 2 ranks (torch.distributed, one flat buffer)", "no flag"),
    ("deepspeed", "DeepSpeed step (ZeRO 1, SGD): the engine in place of plain + all-reduce", "no flag"),
    ("loader", "+ loader and decode (DALI on the CPU, no augmentation), steady state", "no flag"),
    ("loader_start", "+ the loader's start each epoch (worker process, DALI pipeline), per 20-step epoch",
     "no flag"),
    ("augment", "+ augmentation (small_train: random resized crop, flip)", "--train-preset small_eval"),
    ("agree", "+ per-step agreement (pre-emption all-reduce each step, checkpoint clock every 10)",
     "no flag (--ckpt-minutes 0: the clock)"),
    ("logging", "+ logging every step (log.jsonl, TensorBoard; the demo logs every 10)", "--log-every"),
    ("progress", "+ progress display (rank 0; a line every 30 s off a terminal)", "--no-progress"),
    ("eval_ckpt", "+ per-epoch eval (200 val images) and checkpoint, per 20-step epoch", "no flag"),
]


class BatchSource:
    """Consecutive slices of a BalancedLoader's epochs for the timed blocks of the loop cases.

    Cases with the same loader share one epoch (in steady state the loader reads ahead, as
    between the steps of a real epoch); an epoch is started, and its first batch fetched,
    before a block that would not fit in what is left of it, so the epoch's start (the
    DataLoader worker, the DALI pipeline) is timed apart in `startups` and added to the
    ladder per 20-step epoch instead of weighing on a short block.
    """

    def __init__(self, loader: BalancedLoader) -> None:
        self.loader, self.startups = loader, []
        self._iterator, self._first, self._left, self._epoch = None, None, 0, 0

    def take(self, batches: int) -> Slice:
        """The next `batches` batches, from a new epoch (its start timed) when the current one has too few left."""
        if self._iterator is None or self._left < batches:
            if self._iterator is not None:
                self.close()
            self._epoch += 1
            self.loader.set_epoch(self._epoch % DEMO_EPOCHS)
            started = time.perf_counter()
            self._iterator = iter(self.loader)
            self._first = next(self._iterator)
            self.startups.append(time.perf_counter() - started)
            self._left = len(self.loader)
        self._left -= batches
        return Slice(self, batches)

    def close(self) -> None:
        """End the current epoch: its DataLoader worker and DALI pipeline stop."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = self._first = None

    def next_batch(self) -> Any:
        """The current epoch's next (images, labels) batch: first the one fetched when the epoch started."""
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        return next(self._iterator)


class Slice:
    """`batches` batches of a BatchSource, shaped as train_one_epoch's loader: len(), batches_done, iteration."""

    def __init__(self, source: BatchSource, batches: int) -> None:
        self.source, self.batches, self.batches_done = source, batches, 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.batches):
            yield self.source.next_batch()


def demo_argv(data: str, out: str, epochs: int) -> list[str]:
    """launch/train_repr.py's arguments for the demo's stage 1 on `data`, writing to `out`, for `epochs` epochs."""
    return ["--ds_config", DS_CONFIG, "--data", data, "--out", out, *DEMO_FLAGS, "--epochs", str(epochs)]


def worker(args: argparse.Namespace) -> None:
    """One rank of the ladder; rank 0 writes the results to args.worker (JSON)."""
    sys.path.insert(0, os.path.join(REPO, "launch"))
    import train_repr  # the entry point's own parser: the demo's flags become the same TrainConfig

    from lt_dist.quiet import quiet_startup

    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated")  # as train_repr.py
    quiet_startup(False)
    import torch
    import torch.distributed as dist

    from lt_dist.config import resolve_head
    from lt_dist.dist import World
    from lt_dist.engine import checkpoint as ckpt
    from lt_dist.engine import ds
    from lt_dist.engine.ckpt_clock import CheckpointClock
    from lt_dist.engine.logs import RunLogger
    from lt_dist.engine.loop import evaluate, train_one_epoch
    from lt_dist.engine.preempt import PreemptionWatch
    from lt_dist.engine.stage1 import build_loaders, plan_threads
    from lt_dist.losses import build_loss
    from lt_dist.models.resnet import build_model
    from lt_dist.shards.manifest import load_manifest, resolve_split

    out = os.path.join(args.work, "ladder")
    config = train_repr.config_from_args(train_repr.parse_args(demo_argv(args.data, out, DEMO_EPOCHS)))
    world = World.from_env()
    ds.init_distributed()
    threads = plan_threads(config, world)
    torch.set_num_threads(threads.torch_threads)
    ds_config = ds.resolve_ds_config(ds.load_ds_config(os.path.join(REPO, DS_CONFIG)), world.world_size,
                                     torch.cuda.is_available(), lambda line: None)
    micro = ds_config["train_micro_batch_size_per_gpu"]
    train, val = (load_manifest(resolve_split(config.data, split)) for split in ("train", "val"))
    counts = train.samples_per_class
    facts = {"train_dir": train.split_dir, "val_dir": val.split_dir, "counts": counts, "test_dir": None}
    loaders = {"augment": build_loaders(config, facts, world, micro, threads.dali_threads),
               "plain": build_loaders(dataclasses.replace(config, train_preset="small_eval"), facts, world, micro,
                                      threads.dali_threads)}
    sources = {kind: BatchSource(train_loader) for kind, (train_loader, _, _) in loaders.items()}
    steps_per_epoch = len(loaders["augment"][0])
    torch.manual_seed(config.seed)
    head, scale = resolve_head(config)
    model = build_model(config.arch, len(counts), config.small_input, head, scale)
    plain_model = build_model(config.arch, len(counts), config.small_input, head, scale)
    plain_model.load_state_dict(model.state_dict())
    engine = ds.initialize(model, ds_config, total_steps=config.epochs * steps_per_epoch, log=lambda line: None)
    params = ds_config["optimizer"]["params"]
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=params["lr"], momentum=params["momentum"],
                                weight_decay=params["weight_decay"])
    loss_fn = build_loss(config.loss, counts, **config.loss_params).to(engine.device)
    size = config.image_size
    batches = [(torch.randn(micro, 3, size, size), torch.randint(0, len(counts), (micro,))) for _ in range(4)]

    def plain_step(images, labels, reduce: bool):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(plain_model(images), labels).backward()
        if reduce:  # what DDP does, in one bucket: sum the gradients, divide by the world
            grads = [p.grad for p in plain_model.parameters()]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= world.world_size
            for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(synced)
        optimizer.step()

    def deepspeed_step(images, labels):  # as train_one_epoch runs it, less the loader
        loss = loss_fn(engine(images), labels)
        engine.backward(loss)
        engine.step()
        loss.detach().float().cpu()

    in_memory = {"plain": lambda inputs, targets: plain_step(inputs, targets, False),
                 "allreduce": lambda inputs, targets: plain_step(inputs, targets, True), "deepspeed": deepspeed_step}
    for name in ("plain", "deepspeed"):  # warm-up, untimed, on 8 images: the first step's one-off costs
        in_memory[name](batches[0][0][:8], batches[0][1][:8])  # (the all-reduce case shares the plain model)

    logger = RunLogger(os.path.join(out, "log"), world.is_main)
    watch, clock = PreemptionWatch(config.grace_seconds), CheckpointClock(config.ckpt_minutes)

    def agree() -> None:  # stage 1's on_step, less the save it triggers (never due here)
        clock.due(engine.global_steps, engine.device)
        watch.agreed(engine.device)

    # (loader kind, on_step, log_every, progress) of each real-loop case
    loop_cases = {"loader": ("plain", None, None, False), "augment": ("augment", None, None, False),
                  "agree": ("augment", agree, None, False), "logging": ("augment", agree, 1, False),
                  "progress": ("augment", agree, 1, True)}
    seconds = {name: 0.0 for name in [*in_memory, *loop_cases]}
    images = dict.fromkeys(seconds, 0)
    other = {name: [] for name in [*seconds, "eval_ckpt"]}
    waits, eval_ckpt = {name: [] for name in loop_cases}, []
    meter = LoadMeter()

    def collective_block(run) -> tuple[float, float, object]:
        """(seconds, other load, result) of run() on every rank: barrier to barrier, as rank 0 sees it."""
        dist.barrier()
        cpu = tree_cpu(os.getpid())  # this rank, its DALI threads and its loader worker
        meter.start()
        started = time.perf_counter()
        result = run()
        dist.barrier()
        elapsed = time.perf_counter() - started
        used = torch.tensor([tree_cpu(os.getpid()) - cpu], dtype=torch.float64)
        dist.all_reduce(used)  # both ranks' CPU seconds: the benchmark's own load
        return elapsed, meter.stop(float(used)), result

    for _ in range(args.rounds):
        for name, step in in_memory.items():
            def run(step=step):
                for index in range(args.steps):
                    step(*batches[index % len(batches)])
            elapsed, load, _ = collective_block(run)
            seconds[name] += elapsed
            images[name] += args.steps * micro * world.world_size
            other[name].append(load)
        for name, (kind, on_step, log_every, progress) in loop_cases.items():
            ready = sources[kind].take(args.loop_steps)

            def run(ready=ready, on_step=on_step, log_every=log_every, progress=progress):
                return train_one_epoch(engine, ready, loss_fn, epoch=0, num_epochs=DEMO_EPOCHS,
                                       log_every=log_every or 10**9, show_progress=world.is_main and progress,
                                       on_step=on_step or (lambda: None),
                                       on_log=lambda values: logger.log("train", engine.global_steps, **values))
            elapsed, load, summary = collective_block(run)
            seconds[name] += elapsed
            images[name] += args.loop_steps * micro * world.world_size
            other[name].append(load)
            waits[name].append(summary["data_wait"])

        def epoch_end():  # stage 1's end of epoch: validate, best model, checkpoint
            val_loader = loaders["augment"][1]
            evaluate(engine.module, val_loader, len(counts), counts, engine.device)
            if world.is_main:  # what stage 1 stores: lt_dist extract reads this model
                ckpt.save_best_model(out, engine.module, {
                    "arch": config.arch, "num_classes": len(counts), "small_input": config.small_input,
                    "epoch": 0, "val": {}, "train_counts": counts.tolist(), "class_names": train.class_names,
                    "eval_preset": config.eval_preset, "image_size": config.image_size, "head": head,
                    "cosine_scale": scale})
            ds.save_checkpoint(engine, os.path.join(out, "checkpoints"), f"bench{engine.global_steps}",
                               {"loader": loaders["augment"][0].state_dict()})
        elapsed, load, _ = collective_block(epoch_end)
        eval_ckpt.append(elapsed)
        other["eval_ckpt"].append(load)
    logger.close()
    startups = torch.tensor([t for source in sources.values() for t in source.startups], dtype=torch.float64)
    dist.all_reduce(startups, op=dist.ReduceOp.MAX)  # the slower rank's start holds both
    if world.is_main:
        result = {"threads": dataclasses.asdict(threads), "micro_batch": micro, "world_size": world.world_size,
                  "steps_per_epoch": steps_per_epoch, "seconds": seconds, "images": images,
                  "loader_starts": startups.tolist(), "eval_ckpt": eval_ckpt, "data_wait": waits,
                  "other_load": other}
        with open(args.worker, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    for source in sources.values():  # the loader workers end with their epochs, not orphaned by _exit
        source.close()
    gc.collect()
    for child in multiprocessing.active_children():
        child.join(timeout=10)
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the results are written: skip the seconds of tearing down DALI, DeepSpeed and torch


def summarise_ladder(parts: list[dict]) -> dict:
    """One ladder from the workers' raw results (rounds before and after the real run): rates from the
    summed seconds and images, means of the per-round figures."""
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    first = parts[0]
    seconds = {name: sum(part["seconds"][name] for part in parts) for name in first["seconds"]}
    images = {name: sum(part["images"][name] for part in parts) for name in first["images"]}
    lists = {key: {name: [v for part in parts for v in part[key][name]] for name in first[key]}
             for key in ("data_wait", "other_load")}
    return {"threads": first["threads"], "micro_batch": first["micro_batch"], "world_size": first["world_size"],
            "steps_per_epoch": first["steps_per_epoch"], "workers_launched": len(parts),
            "rates": {name: images[name] / seconds[name] for name in seconds}, "seconds": seconds, "images": images,
            "loader_start_s": mean([t for part in parts for t in part["loader_starts"]]),
            "eval_ckpt_s": mean([t for part in parts for t in part["eval_ckpt"]]),
            "data_wait": {name: mean(v) for name, v in lists["data_wait"].items()},
            "other_load": {name: mean(v) for name, v in lists["other_load"].items()},
            "other_load_rounds": lists["other_load"]}
