"""Where the time of stage 1 goes (issue 13, items 1 and 4), side by side in one run.

Same model, batch and world throughout: the demo's ResNet-10 (small-input stem) at 28 px,
64 images per rank, 2 ranks on this node, launch/ds_demo.json, the thread plan of
lt_dist/cpu_budget.py (what the real run logs as "cpus: ..."). Three parts:

1. The ladder, in a 2-rank process group started by DeepSpeed's launcher as the demo
   starts stage 1, its cases alternating in rounds so the machine's noise hits all alike:
   the plain PyTorch step on in-memory batches; plus a gradient all-reduce across the 2
   ranks; the DeepSpeed step (ZeRO 1, SGD); then the real loop (lt_dist.engine.loop.
   train_one_epoch with stage 1's own loaders, loss and engine), adding one part at a
   time: loader + decode (DALI, no augmentation: `--train-preset small_eval`), the
   loader's start each epoch, augmentation (small_train), the per-step agreement
   collectives (pre-emption watch, checkpoint clock), logging every step (log.jsonl and
   TensorBoard), the progress display (rank 0), per-epoch eval and checkpoint. A part's
   share is what it adds to the time per image over the whole loop's. With 2 rounds or
   more, half of them run after the real run, so a change in the machine's load between
   the two sides of R shows in both.
2. The real run: `deepspeed --num_gpus 2 launch/train_repr.py` with the demo's flags
   (Makefile, `demo:`) on the train and val splits of --data (the test split is left out,
   so its closing test reads val: 200 images instead of 10,000; --full-test keeps it).
   From its log.jsonl: the images/s its epoch lines report (R's numerator), the data wait
   of each 10-step window, the time of start-up, eval, checkpoints and the end. The
   loader, the all-reduce, the agreement collectives and eval/checkpoint have no flag
   that turns them off in the real run: the ladder measures them in-process, and the
   run's log.jsonl gives the data wait and the eval/checkpoint seconds. --quick stops the
   run with SIGTERM (as a scheduler would) once log.jsonl shows step 10: R then comes
   from that first 10-step window, loader start included.
3. Extraction (item 4): `lt_dist extract` (the demo's command, one split) with the model
   the ladder saved (same architecture, size and head as the demo's; speed does not
   depend on the weights) against the same model's forward pass alone (model.features,
   eval mode, batch 256, the torch threads a fresh process gets, as extract's) and the
   loader alone (the eval preset, batch 256, one worker, DALI's default threads: what
   extract builds).

The machine may be shared: "other load" is the cores the rest of the machine kept busy
(everything but this benchmark's processes) while a case ran; a note before the last
line says when it differed between the DeepSpeed step and the real run.

    python bench/pipeline.py [--quick] [--rounds 2] [--epochs 2] [--extract-split train] [--keep DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings

try:
    from bench.common import markdown_table, write_results
except ImportError:  # run as a script: python bench/pipeline.py
    from common import markdown_table, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
DEMO_DATA = os.path.join(REPO, "shards", "fashion_mnist_lt")
DS_CONFIG = "launch/ds_demo.json"
# The Makefile's `demo:` flags for launch/train_repr.py, less --data, --out and --epochs.
DEMO_FLAGS = ["--arch", "resnet10", "--small-input", "--train-preset", "small_train", "--eval-preset", "small_eval",
              "--image-size", "28", "--sampler", "instance", "--decoder", "dali", "--workers", "1", "--log-every", "10"]
DEMO_EPOCHS = 20
EXTRACT_BATCH = 256  # lt_dist extract's default --batch-size
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


# ---------------------------------------------------------------- machine load

def busy_jiffies() -> int:
    """Clock ticks the whole machine has spent busy since boot (bench/loader.py's measure)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def own_cpu() -> float:
    """CPU seconds of this process (all its threads) and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def process_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """(parent pid -> child pids, pid -> CPU seconds) of every live process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))  # fields[1]: ppid
        times[int(name)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    return children, times


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    """pid and every live process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of process `pid` and its live descendants."""
    children, times = process_table()
    return sum(times.get(p, 0.0) for p in descendants(pid, children))


def signal_ranks(pid: int) -> int:
    """SIGTERM to the training ranks below launcher `pid`, as a scheduler pre-empting the job; how many.

    Only the ranks: their DataLoader workers are forks with the same command line, and a
    worker killed by a signal makes its rank fail instead of checkpointing.
    """
    children, _ = process_table()
    ranks = []
    for process in descendants(pid, children)[1:]:
        try:
            with open(f"/proc/{process}/cmdline", "rb") as handle:
                words = handle.read().split(b"\0")
        except OSError:
            continue
        if any(w.startswith(b"--local_rank") for w in words) and any(w.endswith(b"train_repr.py") for w in words):
            ranks.append(process)
    forks = {child for rank in ranks for child in children.get(rank, [])}
    for rank in ranks:
        if rank not in forks:
            os.kill(rank, signal.SIGTERM)
    return len(set(ranks) - forks)


class LoadMeter:
    """Cores the rest of the machine kept busy between start() and stop(), less `own` CPU seconds."""

    def start(self) -> None:
        self.busy, self.started = busy_jiffies(), time.perf_counter()

    def stop(self, own_seconds: float) -> float:
        elapsed = time.perf_counter() - self.started
        busy = (busy_jiffies() - self.busy) / os.sysconf("SC_CLK_TCK")
        return max(busy - own_seconds, 0.0) / max(elapsed, 1e-9)


# ---------------------------------------------------------------- the ladder (2-rank worker)

class BatchSource:
    """Consecutive slices of a BalancedLoader's epochs for the timed blocks of the loop cases.

    Cases with the same loader share one epoch (in steady state the loader reads ahead, as
    between the steps of a real epoch); an epoch is started, and its first batch fetched,
    before a block that would not fit in what is left of it, so the epoch's start (the
    DataLoader worker, the DALI pipeline) is timed apart in `startups` and added to the
    ladder per 20-step epoch instead of weighing on a short block.
    """

    def __init__(self, loader):
        self.loader, self.startups = loader, []
        self._iterator, self._first, self._left, self._epoch = None, None, 0, 0

    def take(self, batches: int) -> "Slice":
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

    def next_batch(self):
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        return next(self._iterator)


class Slice:
    """`batches` batches of a BatchSource, shaped as train_one_epoch's loader: len(), batches_done, iteration."""

    def __init__(self, source: BatchSource, batches: int):
        self.source, self.batches, self.batches_done = source, batches, 0

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            yield self.source.next_batch()


def demo_argv(data: str, out: str, epochs: int) -> list[str]:
    return ["--ds_config", DS_CONFIG, "--data", data, "--out", out, *DEMO_FLAGS, "--epochs", str(epochs)]


def worker(args) -> None:
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

    in_memory = {"plain": lambda i, l: plain_step(i, l, False), "allreduce": lambda i, l: plain_step(i, l, True),
                 "deepspeed": deepspeed_step}
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


# ---------------------------------------------------------------- launches

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env() -> dict:
    """The demo's environment: DeepSpeed on the CPU, its compiled ops cached, no OMP_NUM_THREADS (the plan)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["DS_ACCELERATOR"] = "cpu"
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))
    return env


def run_logged(command: list[str], log_path: str, what: str,
               stop_when=None) -> tuple[float, float, float, float | None]:
    """Run command (cwd REPO), output to log_path; (start, end, other load in cores, time signalled or None).

    stop_when(): checked twice a second; once True, the ranks below the command get SIGTERM.
    """
    meter = LoadMeter()
    meter.start()
    started, signalled = time.time(), None
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO, env=launch_env(), stdout=log, stderr=subprocess.STDOUT)
        own = 0.0
        while process.poll() is None:  # sample the tree's CPU (children vanish when they end)
            time.sleep(0.5)
            own = max(own, tree_cpu(process.pid))
            if signalled is None and stop_when is not None and stop_when() and signal_ranks(process.pid):
                signalled = time.time()
    ended = time.time()
    load = meter.stop(own)
    if process.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            tail = handle.read()[-3000:]
        raise SystemExit(f"{what} failed (exit {process.returncode}); the end of {log_path}:\n{tail}")
    return started, ended, load, signalled


def steps_logged(log_path: str) -> int:
    """The highest step of a train record in a run's log.jsonl so far (0 before the first)."""
    try:
        with open(log_path, encoding="utf-8") as handle:
            return max([json.loads(line)["step"] for line in handle if '"kind": "train"' in line] or [0])
    except (OSError, ValueError):
        return 0


def data_view(data: str, work: str, with_test: bool) -> str:
    """A dataset folder of --data's train and val (and test) splits, as symlinks."""
    if with_test:
        return data
    view = os.path.join(work, "data")
    os.makedirs(view)
    for split in ("train", "val"):
        os.symlink(os.path.abspath(os.path.join(data, split)), os.path.join(view, split))
    return view


def read_log(path: str) -> list[dict]:
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


# ---------------------------------------------------------------- extraction

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


# ---------------------------------------------------------------- tables

def ladder_per_image(ladder: dict) -> dict[str, float]:
    """Cumulative seconds per image (whole world) after each case of LADDER.

    Measured cases give their own time; the loader's start and eval/checkpoint are spread
    over a 20-step epoch; augmentation, agreement, logging and progress each add their
    difference to the case before them in the loop (so noise in one does not shift the rest).
    """
    rates = ladder["rates"]
    per_epoch = ladder["steps_per_epoch"] * ladder["micro_batch"] * ladder["world_size"]
    per_image = {name: 1 / rates[name] for name in ("plain", "allreduce", "deepspeed", "loader")}
    per_image["loader_start"] = per_image["loader"] + ladder["loader_start_s"] / per_epoch
    previous, base = "loader_start", "loader"
    for name in ("augment", "agree", "logging", "progress"):
        per_image[name] = per_image[previous] + 1 / rates[name] - 1 / rates[base]
        previous = base = name
    per_image["eval_ckpt"] = per_image["progress"] + ladder["eval_ckpt_s"] / per_epoch
    return per_image


def ladder_rows(ladder: dict, per_image: dict[str, float]) -> list[list]:
    """The ladder table: images/s, x the DeepSpeed step, the part's share of the whole loop's time."""
    whole, deepspeed = per_image["eval_ckpt"], per_image["deepspeed"]
    rows, before = [], None
    for name, what, flag in LADDER:
        if before is None:
            share = f"{per_image[name] / whole:.0%}"
        else:  # DeepSpeed replaces plain + all-reduce: its share is the engine's difference to that
            cost = per_image[name] - per_image["allreduce" if name == "deepspeed" else before]
            share = f"{cost / whole:+.0%}"
        load = ladder["other_load"].get(name)
        rows.append([what, round(1 / per_image[name], 1), round(deepspeed / per_image[name], 2), share, flag,
                     "" if load is None else round(load, 2)])
        before = name
    return rows


def real_rows(real: dict, per_image: dict[str, float], ds_rate: float) -> list[list]:
    """The real run's rows under the ladder."""
    whole = per_image["eval_ckpt"]
    if real["preempted"] and not real["epochs"]:
        what = (f"real run: launch/train_repr.py, demo flags, first {real['steps']} steps then SIGTERM "
                f"(log.jsonl windows)")
    else:
        what = f"real run: launch/train_repr.py, demo flags, {real['epochs']} epoch(s) (log.jsonl epoch lines)"
    rate = real["images_per_s"]
    rows = [[what, round(rate, 1), round(rate / ds_rate, 2),
             f"{(1 / rate - per_image['progress']) / whole:+.0%} vs the loop", "", round(real["other_load"], 2)]]
    if real["images_per_s_with_eval_ckpt"]:
        rate = real["images_per_s_with_eval_ckpt"]
        rows.append(["real run with its per-epoch eval and checkpoint", round(rate, 1), round(rate / ds_rate, 2),
                     f"{(1 / rate - whole) / whole:+.0%} vs the loop", "", ""])
    return rows


def load_drift(step_load: float, run_load: float, tolerance: float = 0.25) -> str:
    """A warning when the rest of the machine was busier during one side of R than the other."""
    if abs(step_load - run_load) <= tolerance:
        return ""
    return (f"note: the rest of the machine kept {step_load:.2f} cores busy during the DeepSpeed step and "
            f"{run_load:.2f} during the real run: R mixes two machines; rerun when the load is steady")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one round of 2 steps per case, the real run stopped by SIGTERM after its first 10 "
                        "steps, extract on val: about 2.5 minutes on 2 quiet cores, more on a shared machine")
    parser.add_argument("--data", default=DEMO_DATA, help="packed dataset (default: the demo's shards)")
    parser.add_argument("--rounds", type=int, help="alternating rounds of the ladder (default 2; quick 1)")
    parser.add_argument("--steps", type=int, help="timed in-memory steps per case and round (default 3; quick 2)")
    parser.add_argument("--loop-steps", type=int, help="timed real-loop steps per case and round (default 4; "
                        "quick 2)")
    parser.add_argument("--epochs", type=int, help="epochs of the real run (default 2; quick 1)")
    parser.add_argument("--real-steps", type=int, help="stop the real run by SIGTERM once log.jsonl shows this "
                        "step (0: run its epochs; quick 10)")
    parser.add_argument("--extract-split", help="split lt_dist extract reads (default train; quick val)")
    parser.add_argument("--full-test", action="store_true", help="keep the test split: the run ends with a "
                        "10,000-image test pass, as `make demo`'s does")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (new or empty) and keep it: runs, logs, features")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a rank of the ladder: write its JSON here
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the launcher's
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"rounds": (2, 1), "steps": (3, 2), "loop_steps": (4, 2), "epochs": (2, 1), "real_steps": (0, 10),
                "extract_split": ("train", "val")}
    for key, (full, short) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    if args.worker:
        worker(args)
        return 0
    started = time.perf_counter()
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        parser.error(f"--keep {args.keep}: choose a new or empty folder")
    work = args.keep or tempfile.mkdtemp(prefix="lt-pipeline-")
    os.makedirs(work, exist_ok=True)
    try:
        return report(args, work, started)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(args, work: str, started: float) -> int:
    data = data_view(args.data, work, args.full_test)
    deepspeed = os.path.join(BIN, "deepspeed")

    def say(text: str) -> None:
        print(f"{text} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    def ladder_rounds(rounds: int, index: int) -> dict:
        """One 2-rank process group running `rounds` rounds of the ladder; its raw results."""
        path = os.path.join(work, f"ladder{index}.json")
        run_logged([deepspeed, "--num_gpus", "2", "--master_port", str(free_port()), os.path.abspath(__file__),
                    "--worker", path, "--work", work, "--data", data, "--rounds", str(rounds),
                    "--steps", str(args.steps), "--loop-steps", str(args.loop_steps)],
                   os.path.join(work, f"ladder{index}.log"), "the ladder (2 ranks)")
        with open(path, encoding="utf-8") as handle:
            part = json.load(handle)
        say(f"ladder: {rounds} round(s) done")
        return part

    # 1. the ladder; with 2 rounds or more, half of them after the real run (a sandwich: drift in the
    # machine's load then hits both sides of R alike)
    before = -(-args.rounds // 2) if args.rounds > 1 else 1
    parts = [ladder_rounds(before, 0)]
    # 2. the real run
    run_dir = os.path.join(work, "run")
    log_path = os.path.join(run_dir, "log.jsonl")
    stop = (lambda: steps_logged(log_path) >= args.real_steps) if args.real_steps else None
    launched, ended, run_load, _ = run_logged(
        [deepspeed, "--quiet", "--num_gpus", "2", "--master_port", str(free_port()), "launch/train_repr.py",
         *demo_argv(data, run_dir, args.epochs)], os.path.join(work, "run.log"), "the real run (launch/train_repr.py)",
        stop_when=stop)
    world_batch = parts[0]["micro_batch"] * parts[0]["world_size"]
    real = real_run_phases(read_log(log_path), launched, ended, world_batch,
                           checkpoint_commit_times(os.path.join(run_dir, "checkpoints")))
    real["other_load"] = run_load
    say("real run done")
    if args.rounds > before:
        parts.append(ladder_rounds(args.rounds - before, 1))
    ladder = summarise_ladder(parts)
    # 3. extraction, with the model the ladder saved (same architecture and size as the run's)
    extract = extraction(os.path.join(work, "ladder"), data, args.extract_split, work,
                         forward_batches=1 if args.quick else 4)
    total = time.perf_counter() - started

    per_image = ladder_per_image(ladder)
    rows = ladder_rows(ladder, per_image)
    ds_rate = ladder["rates"]["deepspeed"]
    rows += real_rows(real, per_image, ds_rate)
    threads = ladder["threads"]
    print(f"resnet10 (small-input), 28 px, {ladder['micro_batch']} images per rank x {ladder['world_size']} ranks, "
          f"CPU ({os.cpu_count()} cores), per rank {threads['torch_threads']} torch thread(s), "
          f"{threads['dali_threads']} DALI thread(s), {threads['workers']} loader worker(s); "
          f"{args.rounds} round(s) of {args.steps} in-memory and {args.loop_steps} loop steps per case")
    print(markdown_table(["case (each adds one part)", "images/s", "x DeepSpeed step", "share of the loop's time",
                          "real run: switched by", "other load"], rows))
    print("share: what the part adds to the time per image, over the whole loop's (the last ladder row). The "
          "parts with no flag are measured in the ladder and read from the real run's log.jsonl below.")
    phase_rows = [[name, round(seconds, 1), f"{seconds / real['wall_s']:.0%}"] for name, seconds in real["phases"].items()]
    phase_rows.append(["whole run (launch to exit)", round(real["wall_s"], 1), "100%"])
    rates = real["epoch_images_per_s"] or real["window_images_per_s"]
    print(f"\nthe real run, from its log.jsonl: {'epochs' if real['epochs'] else 'windows'} at "
          f"{', '.join(f'{r:.1f}' for r in rates)} images/s; data wait (no flag: log.jsonl) "
          f"{real['data_wait']:.1%} of the training time (windows of {real['window_steps']} steps: "
          f"{', '.join(f'{w:.1%}' for w in real['data_wait_windows'])}); other load {run_load:.2f} cores")
    print(markdown_table(["phase", "seconds", "share"], phase_rows))
    forward, loader = extract["forward"], extract["loader"]
    extract_rows = [
        [f"forward only (model.features, batch {EXTRACT_BATCH}, {forward['torch_threads']} torch threads)",
         round(forward["images_per_s"], 1), 1.0, round(forward["other_load"], 2)],
        [f"loader only (DALI, eval preset, batch {EXTRACT_BATCH}, {loader['workers']} worker, "
         f"{loader['dali_threads']} DALI threads)", round(loader["images_per_s"], 1),
         round(loader["images_per_s"] / forward["images_per_s"], 2), round(loader["other_load"], 2)],
        [f"lt_dist extract --split {extract['split']} ({extract['num_samples']} images, features.json's seconds)",
         round(extract["extract_images_per_s"], 1), round(extract["ratio"], 2),
         round(extract["extract_other_load"], 2)],
        ["lt_dist extract, the whole command (start-up included)", round(extract["command_images_per_s"], 1),
         round(extract["command_images_per_s"] / forward["images_per_s"], 2), ""]]
    print("\nextraction (item 4): the same ResNet-10, forward passes only")
    print(markdown_table(["what", "images/s", "x forward only", "other load"], extract_rows))
    print(f"extract / forward only: {extract['ratio']:.2f}")
    settings = {key: getattr(args, key) for key in ("quick", "data", "rounds", "steps", "loop_steps", "epochs",
                                                     "real_steps", "extract_split", "full_test")}
    ratio = real["images_per_s"] / ds_rate
    path = write_results("pipeline", {"settings": settings, "ladder": ladder, "ladder_table": rows,
                                      "real_run": real, "extraction": extract, "bench_seconds": total,
                                      "real_run_over_step": ratio})
    print(f"\nwrote {path} in {total:.0f} s")
    drift = load_drift(ladder["other_load"]["deepspeed"], real["other_load"])
    if drift:
        print(drift)
    print(f"real run / step: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
