"""The interleaver at the level of indices: which manifest row comes next, per rank.

An epoch is a sequence of class draws ("which class next"), the same on every rank:
    instance (q = 1): a seeded permutation of the multiset {j repeated n_j times},
        so one epoch yields every sample exactly once (interleaving the class
        streams with probability ∝ what each has left);
    any other p_j, draw="stratified" (default): class j gets exactly its quota
        round(p_j * N) of the epoch's N draws (largest remainder), in a seeded random
        order: the epoch's class shares are p_j up to rounding, as the official
        class-balanced sampler's "every class once per cycle" intends;
    draw="iid": N independent draws from p_j (the textbook sampler, more variance).
The k-th draw of class j takes element k mod n_j of class j's stream: pass
k // n_j of the class, each pass a fresh seeded permutation of its images (so a
class that runs out starts again in a new order). Occurrences are counted over
the whole epoch, so ranks take disjoint parts of each class's order.

Rank r takes the contiguous block [r * per_rank, (r + 1) * per_rank) of the epoch;
inside a rank, batch b belongs to loader worker (b - first batch) mod num_workers,
so the rank's order is the same whatever the number of workers. Random numbers come from numpy
Generators seeded by (seed, epoch) for the draws and (seed, epoch, class) for the
class orders: the same seed gives the same sequence on any machine, and resuming
needs only (epoch, batches done).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lt_dist.data.balance import class_probs, is_exact_instance, resolve_strategy
from lt_dist.dist import World

REMAINDERS = ("pad", "drop")
DRAWS = ("stratified", "iid")
_DRAW_TAG, _ORDER_TAG = 0xD4A3, 0x0DE7  # keep the two seed streams apart


@dataclass(frozen=True)
class SamplerConfig:
    """How an epoch is drawn."""

    strategy: str | float = "instance"  # balance.BALANCERS name or q in [0, 1]
    seed: int = 0  # the only source of randomness
    num_epochs: int = 1  # T, for the progressive strategy
    remainder: str = "pad"  # samples that equal per-rank counts cannot split: "pad" or "drop"
    epoch_size: int | None = None  # samples per epoch over all ranks; default: the training-set size
    draw: str = "stratified"  # "stratified": exact per-epoch class quotas; "iid": independent draws


def rank_block(epoch_size: int, world_size: int, remainder: str) -> int:
    """Samples per rank: floor (drop) or ceil (pad) of epoch_size / world_size."""
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    per_rank = epoch_size // world_size if remainder == "drop" else -(-epoch_size // world_size)
    if per_rank < 1:
        raise ValueError(f"an epoch of {epoch_size} samples cannot feed {world_size} ranks")
    return per_rank


def draw_classes(samples_per_class: np.ndarray, config: SamplerConfig, epoch: int, num_draws: int) -> np.ndarray:
    """The epoch's class sequence.

    Returns:
        (num_draws,) int32 class labels. For exact instance sampling num_draws may
        exceed n: the permutation then wraps (that is the padding).
    """
    counts = np.asarray(samples_per_class, dtype=np.int64)
    rng = np.random.default_rng([config.seed, epoch, _DRAW_TAG])
    if is_exact_instance(config.strategy):
        labels = rng.permutation(np.repeat(np.arange(len(counts), dtype=np.int32), counts))
        return np.resize(labels, num_draws)  # np.resize repeats from the start when longer
    probs = class_probs(counts, config.strategy, epoch, config.num_epochs)
    if config.draw == "iid":
        return rng.choice(len(counts), size=num_draws, p=probs).astype(np.int32)
    quotas = class_quotas(probs, num_draws)
    return rng.permutation(np.repeat(np.arange(len(counts), dtype=np.int32), quotas))


def class_quotas(probs: np.ndarray, num_draws: int) -> np.ndarray:
    """Largest-remainder apportionment of num_draws by probs.

    Returns:
        (C,) int64 summing to num_draws, each within 1 of probs * num_draws.
    """
    exact = np.asarray(probs, dtype=np.float64) * num_draws
    quotas = np.floor(exact).astype(np.int64)
    short = num_draws - int(quotas.sum())
    if short > 0:  # the largest fractional parts get one more; ties go to the lower label
        order = np.argsort(-(exact - quotas), kind="stable")
        quotas[order[:short]] += 1
    return quotas


def occurrence_index(labels: np.ndarray, start: int, stop: int, num_classes: int) -> np.ndarray:
    """For positions start..stop-1: how many earlier positions drew the same class.

    Returns:
        (stop - start,) int64: k such that position p is the k-th draw of its class.
    """
    before = np.bincount(labels[:start], minlength=num_classes)
    block = labels[start:stop]
    order = np.argsort(block, kind="stable")
    sorted_labels = block[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_block = np.empty(len(block), dtype=np.int64)
    rank_in_block[order] = np.arange(len(block)) - first
    return before[block] + rank_in_block


def class_order(seed: int, epoch: int, label: int, size: int, passes: int) -> np.ndarray:
    """Class `label`'s stream for an epoch: `passes` fresh permutations of range(size), concatenated."""
    rng = np.random.default_rng([seed, epoch, label, _ORDER_TAG])
    return np.concatenate([rng.permutation(size) for _ in range(passes)])


class BalancedSampler:
    """Manifest rows of one rank's epoch, in order, batched and split over workers."""

    def __init__(self, samples_per_class: np.ndarray, config: SamplerConfig, world: World, batch_size: int):
        counts = np.asarray(samples_per_class, dtype=np.int64)
        resolve_strategy(config.strategy)  # unknown names and q outside [0, 1] fail here
        if config.draw not in DRAWS:
            raise ValueError(f"draw must be one of {DRAWS}, got {config.draw!r}")
        if counts.ndim != 1 or counts.size == 0 or counts.sum() == 0:
            raise ValueError("the manifest holds no samples: cannot sample an empty dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if config.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {config.num_epochs}")
        self.samples_per_class = counts
        self.class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first row of each class
        self.config, self.world, self.batch_size = config, world, batch_size
        self.epoch_size = int(config.epoch_size or counts.sum())
        self.per_rank = rank_block(self.epoch_size, world.world_size, config.remainder)

    @property
    def num_batches(self) -> int:
        """Batches per rank per epoch (the same on every rank)."""
        return -(-self.per_rank // self.batch_size)

    def padded_or_dropped(self) -> int:
        """Samples added (> 0, pad) or left out (< 0, drop) to give every rank the same count."""
        return self.per_rank * self.world.world_size - self.epoch_size

    def rank_rows(self, epoch: int) -> np.ndarray:
        """(per_rank,) int64 manifest rows this rank reads in `epoch`, in order."""
        start = self.world.rank * self.per_rank
        return self.rows_at(epoch, np.arange(start, start + self.per_rank), self.epoch_draws)

    @property
    def epoch_draws(self) -> int:
        """Draw positions of an epoch this world starts: per_rank * world_size."""
        return self.per_rank * self.world.world_size

    def rows_at(self, epoch: int, positions: np.ndarray, total: int) -> np.ndarray:
        """Manifest rows at draw positions of an epoch of `total` draws (fixed by the world that began it).

        Returns:
            (len(positions),) int64 rows; the same for a position whatever rank asks.
        """
        labels = draw_classes(self.samples_per_class, self.config, epoch, total)
        positions = np.asarray(positions, dtype=np.int64)
        if is_exact_instance(self.config.strategy):
            # padding repeats the epoch's first samples: count occurrences modulo one pass
            positions = positions % self.epoch_size
            base = labels[: self.epoch_size]
            occurrences = occurrence_index(base, 0, self.epoch_size, len(self.samples_per_class))[positions]
            block = base[positions]
        else:
            occurrences = occurrence_index(labels, 0, total, len(self.samples_per_class))[positions]
            block = labels[positions]
        return self._rows(epoch, block, occurrences, labels)

    def _rows(self, epoch: int, block: np.ndarray, occurrences: np.ndarray, labels: np.ndarray) -> np.ndarray:
        rows = np.empty(len(block), dtype=np.int64)
        totals = np.bincount(labels, minlength=len(self.samples_per_class))
        for label in np.unique(block):
            size = int(self.samples_per_class[label])
            passes = -(-int(totals[label]) // size)
            order = class_order(self.config.seed, epoch, int(label), size, passes)
            mask = block == label
            rows[mask] = self.class_start[label] + order[occurrences[mask]]
        return rows

    def worker_batches(self, epoch: int, worker: int = 0, num_workers: int = 1,
                       start_batch: int = 0) -> list[np.ndarray]:
        """This worker's batches of the epoch from `start_batch` on.

        Batch b goes to worker (b - start_batch) mod W: the DataLoader collects its
        workers' outputs round-robin from worker 0, so the rank's order is kept.
        """
        rows = self.rank_rows(epoch)
        return [rows[b * self.batch_size: (b + 1) * self.batch_size]
                for b in range(start_batch + worker, self.num_batches, num_workers)]


class SequentialSampler:
    """Every row once, in order, rank r taking rows r, r + W, ... (evaluation, extraction).

    Same interface as BalancedSampler; ranks may get one row more or less, which is
    fine where no per-batch collective runs (per-class counts are summed at the end).
    """

    def __init__(self, num_samples: int, world: World, batch_size: int):
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        self.world, self.batch_size = world, batch_size
        self.rows = np.arange(world.rank, num_samples, world.world_size, dtype=np.int64)
        self.per_rank = len(self.rows)

    @property
    def num_batches(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def rank_rows(self, epoch: int) -> np.ndarray:
        """(per_rank,) rows of this rank; the same every epoch."""
        return self.rows

    def worker_batches(self, epoch: int, worker: int = 0, num_workers: int = 1,
                       start_batch: int = 0) -> list[np.ndarray]:
        """Batches dealt round-robin to workers from start_batch on, as BalancedSampler."""
        return [self.rows[b * self.batch_size: (b + 1) * self.batch_size]
                for b in range(start_batch + worker, self.num_batches, num_workers)]
