"""Benchmark one training step: DeepSpeed engine against a plain PyTorch loop, same model and data.

Both run in this process (a world of one) on identical in-memory batches, in
alternating blocks so machine noise hits both alike; the ratio is the engine's
overhead. Then the data-wait fraction of a short real run: `--run RUN_DIR` reads an
existing stage-1 run's log.jsonl (e.g. the demo's runs/demo), else the numbers
of a 1-epoch single-process run on the demo shards are taken.

    python bench/train_step.py [--arch resnet10 --size 28 --batch 64 --steps 20 --blocks 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

try:
    from bench.common import markdown_table, write_results
except ImportError:  # run as a script: python bench/train_step.py
    from common import markdown_table, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ds_engine(model: torch.nn.Module, batch: int, lr: float):
    """A DeepSpeed engine (ZeRO 1, SGD) around the model, in a world of one."""
    from lt_dist.engine import ds

    ds.init_distributed()
    config = ds.resolve_ds_config({"train_batch_size": batch, "zero_optimization": {"stage": 1},
                                   "bf16": {"enabled": True},  # switched off on a CPU
                                   "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
                                   "optimizer": {"type": "SGD", "params": {"lr": lr, "momentum": 0.9,
                                                                           "weight_decay": 5e-4}}},
                                  world_size=1, cuda=torch.cuda.is_available(), log=lambda text: None)
    return ds.initialize(model, config, total_steps=10**6, log=lambda text: None)


def time_steps(step, batches: list, steps: int) -> float:
    """Seconds for `steps` calls of step(images, labels) after one warm-up call."""
    step(*batches[0])
    started = time.perf_counter()
    for index in range(steps):
        step(*batches[index % len(batches)])
    return time.perf_counter() - started


def compare(args) -> dict:
    from lt_dist.models.resnet import build_model

    torch.manual_seed(0)
    plain_model = build_model(args.arch, 10, small_input=args.size <= 64)
    ds_model = build_model(args.arch, 10, small_input=args.size <= 64)
    ds_model.load_state_dict(plain_model.state_dict())
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    plain_model.to(device)
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    engine = ds_engine(ds_model, args.batch, 0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = [(torch.randn(args.batch, 3, args.size, args.size, device=device),
                torch.randint(0, 10, (args.batch,), device=device)) for _ in range(4)]

    def plain_step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):  # bf16 as DeepSpeed on a GPU
            loss = loss_fn(plain_model(images), labels)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()  # time the work, not the launch

    def deepspeed_step(images, labels):
        dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        engine.backward(loss_fn(engine(images.to(dtype)).float(), labels))
        engine.step()
        if cuda:
            torch.cuda.synchronize()

    times = {"plain PyTorch": 0.0, "DeepSpeed (ZeRO 1)": 0.0}
    for _ in range(args.blocks):  # alternate: noise hits both alike
        times["plain PyTorch"] += time_steps(plain_step, batches, args.steps)
        times["DeepSpeed (ZeRO 1)"] += time_steps(deepspeed_step, batches, args.steps)
    images = args.blocks * args.steps * args.batch
    return {name: images / seconds for name, seconds in times.items()}


def data_wait(run_dir: str) -> dict:
    """Per-epoch data-wait fraction and images/s from a stage-1 run's log.jsonl."""
    with open(os.path.join(run_dir, "log.jsonl"), encoding="utf-8") as handle:
        epochs = [json.loads(line) for line in handle if '"kind": "epoch"' in line]
    if not epochs:
        raise SystemExit(f"{run_dir}/log.jsonl has no epoch records")
    waits = [e["data_wait"] for e in epochs]
    return {"run": run_dir, "epochs": len(epochs), "data_wait_mean": sum(waits) / len(waits),
            "data_wait_max": max(waits), "images_per_s_mean": sum(e["images_per_s"] for e in epochs) / len(epochs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--size", type=int, default=28, help="image side (small-input stem up to 64)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per path")
    parser.add_argument("--run", default=os.path.join(REPO, "runs", "demo"), help="stage-1 run for the data wait")
    args = parser.parse_args(argv)
    rates = compare(args)
    plain = rates["plain PyTorch"]
    rows = [[name, f"{rate:.0f}", f"{rate / plain:.2f}"] for name, rate in rates.items()]
    print(f"{args.arch}, {args.size}px, batch {args.batch}, CPU, one process, {args.blocks}x{args.steps} steps each")
    print(markdown_table(["path", "images/s", "x plain"], rows))
    wait = data_wait(args.run) if os.path.isfile(os.path.join(args.run, "log.jsonl")) else None
    if wait:
        print(f"\ndata wait in {wait['run']}: mean {wait['data_wait_mean']:.1%}, max {wait['data_wait_max']:.1%} "
              f"over {wait['epochs']} epochs at {wait['images_per_s_mean']:.0f} images/s (2 ranks)")
    path = write_results("train_step", {"settings": vars(args), "images_per_s": rates,
                                        "overhead_ratio": rates["DeepSpeed (ZeRO 1)"] / plain, "data_wait": wait})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
