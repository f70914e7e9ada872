"""Where this process sits: rank, world size, local rank, node (and loader worker).

Computed once from the launcher's environment (deepspeed, torchrun and plain
single-process runs all set or omit the same variables); passed explicitly after.
The node facts have launcher-specific names: torchrun sets GROUP_RANK and
GROUP_WORLD_SIZE, DeepSpeed's launcher CROSS_RANK and CROSS_SIZE; a launcher that
sets only LOCAL_WORLD_SIZE (or DeepSpeed's LOCAL_SIZE) gives them by division.
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
    node_rank: int = 0  # index of this node, 0 .. num_nodes - 1
    num_nodes: int = 1  # nodes (launchers) in the job

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")
        if not 1 <= self.num_nodes <= self.world_size or not 0 <= self.node_rank < self.num_nodes:
            raise ValueError(f"node {self.node_rank} of {self.num_nodes} does not fit a world of size "
                             f"{self.world_size}")

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "World":
        """World from RANK / WORLD_SIZE / LOCAL_RANK and the node variables (defaults: one process)."""
        env = os.environ if environ is None else environ
        try:
            rank, world_size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
            local_size = int(_first(env, ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"), 0))
            node_rank = _first(env, ("GROUP_RANK", "CROSS_RANK", "NODE_RANK"), None)
            num_nodes = _first(env, ("GROUP_WORLD_SIZE", "CROSS_SIZE", "NNODES"), None)
            if node_rank is None:
                node_rank = rank // local_size if local_size > 0 else 0
            if num_nodes is None:
                num_nodes = -(-world_size // local_size) if local_size > 0 else 1
            return cls(rank, world_size, int(env.get("LOCAL_RANK", 0)), int(node_rank), int(num_nodes))
        except ValueError as error:
            raise ValueError(f"bad RANK/WORLD_SIZE/LOCAL_RANK/node variables in the environment: {error}") from None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes shared files."""
        return self.rank == 0


def _first(env, names: tuple[str, ...], default):
    """Value of the first variable in names that env sets (launchers name the same fact differently)."""
    return next((env[name] for name in names if env.get(name, "") != ""), default)


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


def gather_placements(world: World) -> list[dict]:
    """Collective: where every rank runs, in rank order (for config.json).

    Returns:
        world_size dicts {"rank", "local_rank", "node_rank", "host"}; without a
        process group, this process's alone.
    """
    import socket

    import torch.distributed as dist

    mine = {"rank": world.rank, "local_rank": world.local_rank, "node_rank": world.node_rank,
            "host": socket.gethostname()}
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    placements: list = [None] * dist.get_world_size()
    dist.all_gather_object(placements, mine)
    return placements
