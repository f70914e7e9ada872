"""Re-splitting an interrupted epoch over a different number of ranks.

An epoch is a sequence of `total` draw positions (sampler.py) fixed by the world that
started it; position p always maps to the same manifest row. A world of W ranks deals
the positions it has left in contiguous blocks (rank r: block r), each rank reading
its block batch by batch. When the job stops mid-epoch after b batches of B per rank,
the delivered positions are the first b * B of every block; a resume on M ranks deals
exactly the positions not yet delivered, in their order, in M new blocks. Repeating
this composes: the checkpoint keeps one Share per world the epoch has seen.

Over the whole epoch every position is delivered once (when the remaining count
divides by each world size; otherwise "pad" repeats the first remaining positions to
fill the last block and "drop" leaves the tail out, as for a fresh epoch), so an
instance-balanced epoch still yields each sample once and a class-balanced epoch
still meets each class's quota.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lt_dist.data.sampler import rank_block


@dataclass(frozen=True)
class Share:
    """What one world delivered of an epoch before it stopped."""

    world_size: int  # ranks of that world
    batch_size: int  # samples per batch per rank in that world
    batches_done: int  # batches each rank had delivered

    def to_dict(self) -> dict:
        """JSON/torch.save-ready dict."""
        return asdict(self)


def rank_positions(remaining: np.ndarray, world_size: int, rank: int, remainder: str) -> np.ndarray:
    """Rank `rank`'s block of the remaining positions (pad: the last block wraps to the start).

    Returns:
        (per_rank,) int64 positions, per_rank = ceil (pad) or floor (drop) of len / world_size.
    """
    per_rank = rank_block(len(remaining), world_size, remainder)
    index = (rank * per_rank + np.arange(per_rank)) % len(remaining)
    return np.asarray(remaining, dtype=np.int64)[index]


def undelivered(total: int, shares: list[Share], remainder: str) -> np.ndarray:
    """Positions of an epoch of `total` draws that the worlds in `shares` (in order) had not delivered.

    Returns:
        (k,) int64 increasing positions in [0, total).
    """
    remaining = np.arange(total, dtype=np.int64)
    for share in shares:
        if len(remaining) == 0:
            break
        per_rank = rank_block(len(remaining), share.world_size, remainder)
        done = min(share.batches_done * share.batch_size, per_rank)
        delivered = np.concatenate([rank_positions(remaining, share.world_size, rank, remainder)[:done]
                                    for rank in range(share.world_size)])
        remaining = remaining[~np.isin(remaining, delivered)]  # keeps the epoch's order
    return remaining


class ResplitSampler:
    """One rank's part of the rest of an interrupted epoch, on a new world (BalancedSampler's interface).

    Only epoch `epoch` is re-split; the loader uses the plain BalancedSampler for later epochs.
    """

    def __init__(self, base, epoch: int, total: int, shares: list[Share]):
        self.base, self.epoch, self.total, self.shares = base, epoch, total, list(shares)
        self.world, self.batch_size = base.world, base.batch_size
        remaining = undelivered(total, self.shares, base.config.remainder)
        if len(remaining) == 0:
            raise ValueError(f"epoch {epoch} has no samples left to re-split")
        self.positions = rank_positions(remaining, self.world.world_size, self.world.rank, base.config.remainder)
        self.per_rank = len(self.positions)

    @property
    def num_batches(self) -> int:
        """Batches of this rank in the rest of the epoch (the same on every rank)."""
        return -(-self.per_rank // self.batch_size)

    def rank_rows(self, epoch: int) -> np.ndarray:
        """(per_rank,) manifest rows of this rank's share of the rest of the epoch."""
        if epoch != self.epoch:
            raise ValueError(f"this sampler re-splits epoch {self.epoch}, not {epoch}")
        return self.base.rows_at(epoch, self.positions, self.total)

    def worker_batches(self, epoch: int, worker: int = 0, num_workers: int = 1,
                       start_batch: int = 0) -> list[np.ndarray]:
        """As BalancedSampler.worker_batches, over this rank's share."""
        rows = self.rank_rows(epoch)
        return [rows[b * self.batch_size: (b + 1) * self.batch_size]
                for b in range(start_batch + worker, self.num_batches, num_workers)]
