"""Where this process sits: rank, world size, local rank (and loader worker).

Computed once from the launcher's environment (deepspeed, torchrun and plain
single-process runs all set or omit the same variables); passed explicitly after.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


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
