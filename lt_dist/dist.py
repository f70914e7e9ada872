"""Where this process sits: rank, world size, local rank (and loader worker).

Computed once from the launcher's environment (deepspeed, torchrun and plain
single-process runs all set or omit the same variables); passed explicitly after.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class World:
    """A process's coordinates in the job."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    world_size: int = 1  # number of training processes
    local_rank: int = 0  # rank on this node (device index)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "World":
        """World from RANK / WORLD_SIZE / LOCAL_RANK (defaults: a single process)."""
        env = os.environ if environ is None else environ
        try:
            return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
        except ValueError as error:
            raise ValueError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {error}") from None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes shared files."""
        return self.rank == 0


@contextmanager
def process_group_closed_at_exit() -> Iterator[None]:
    """Run a distributed job's body; on the way out tear the process group down.

    On success every rank first waits for the others (rank 0 may still be writing
    results). A process that exits with a live gloo group can abort in its static
    destructors ("terminate called without an active exception") and the launcher then
    kills its peers mid-write. After an error there is no barrier: the peers may be gone.
    """
    import torch.distributed as dist

    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        if dist.is_available() and dist.is_initialized():
            if succeeded:
                dist.barrier()
            dist.destroy_process_group()
