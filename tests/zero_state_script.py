"""Run by tests/test_ds.py as every rank of a tiny ZeRO-1 job (gloo, CPU).

    python zero_state_script.py train  FOLDER OUT   3 steps, checkpoint "t3", 2 more steps
    python zero_state_script.py resume FOLDER OUT [regather|auto|module-only]
                                                    load "t3", the same 2 steps
OUT (rank 0): the module's final state dict. Every step trains on the same global batch
of 8 rows, split over the ranks, so any world size computes the same update (up to
the order of floating-point sums).
"""
import sys

import torch

from lt_dist.engine import ds

GLOBAL_BATCH = 8


def build_engine(world_size: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    config = ds.resolve_ds_config({"train_batch_size": GLOBAL_BATCH, "zero_optimization": {"stage": 1},
                                   "zero_allow_untested_optimizer": True, "steps_per_print": 10**6,
                                   "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9,
                                                                            "weight_decay": 5e-4}}},
                                  world_size, cuda=False, log=lambda _: None)
    return ds.initialize(model, config, total_steps=5, log=lambda _: None)


def train_step(engine, step: int, rank: int, world_size: int) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    inputs, labels = torch.randn(GLOBAL_BATCH, 6, generator=generator), torch.randint(0, 3, (GLOBAL_BATCH,),
                                                                                      generator=generator)
    micro = GLOBAL_BATCH // world_size
    rows = slice(rank * micro, (rank + 1) * micro)
    loss = torch.nn.functional.cross_entropy(engine(inputs[rows]), labels[rows])
    engine.backward(loss)
    engine.step()


def main() -> None:
    phase, folder, out = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "auto"
    ds.init_distributed()
    import torch.distributed as dist

    rank, world_size = dist.get_rank(), dist.get_world_size()
    engine = build_engine(world_size)
    if phase == "train":
        for step in range(3):
            train_step(engine, step, rank, world_size)
        ds.save_checkpoint(engine, folder, "t3", {"step": 3})
    elif mode == "module-only":  # the control: weights and schedule, no optimizer state
        engine.load_checkpoint(folder, tag="t3", load_optimizer_states=False)
    else:
        assert ds.load_checkpoint(engine, folder, "t3", regather={"regather": True, "legacy": False}.get(mode))["step"] == 3
    for step in range(3, 5):
        train_step(engine, step, rank, world_size)
    if rank == 0:
        torch.save({name: value.detach().clone() for name, value in engine.module.state_dict().items()}, out)
    dist.barrier()


if __name__ == "__main__":
    main()
