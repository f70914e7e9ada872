"""Time-based checkpoints: a crash never loses more than `minutes` of training.

Each rank's clock runs on its own, so the decision is all-reduced (max): every rank
checkpoints at the same step, the first one any rank found due. The collective runs
only every `check_every` optimizer steps (all ranks count steps alike), which keeps
its cost out of the step time.
"""
from __future__ import annotations

import time

import torch


class CheckpointClock:
    """Says, at the same step on every rank, when `minutes` have passed since the last checkpoint."""

    def __init__(self, minutes: float, check_every: int = 10, clock=time.monotonic):
        if minutes < 0 or check_every < 1:
            raise ValueError(f"minutes must be >= 0 and check_every >= 1, got {minutes}, {check_every}")
        self.seconds, self.check_every, self._clock = minutes * 60.0, check_every, clock
        self._last = clock()

    def restart(self) -> None:
        """A checkpoint was just written (for whatever reason): count from now."""
        self._last = self._clock()

    def due(self, step: int, device: torch.device | str = "cpu") -> bool:
        """Collective on check steps (step % check_every == 0): True on every rank when any rank is due."""
        if self.seconds <= 0 or step % self.check_every:
            return False
        import torch.distributed as dist

        flag = torch.tensor([int(self._clock() - self._last >= self.seconds)], dtype=torch.int32, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
