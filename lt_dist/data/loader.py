"""The balanced streaming loader: sampler -> shard reads -> decode -> batches.

    BalancedSampler (rows of this rank's epoch, batches dealt round-robin to workers)
      -> RowStream (a torch IterableDataset run by each DataLoader worker)
         # -> dict(rows=int64 (N,), data=list[bytes] | images=float32 (N,3,H,W), labels=int64 (N,))
      -> DataLoader (workers' batches come back round-robin: the rank's order)
      -> decoder: "dali" (main process; DALI threads decode, "mixed" on a GPU)
                  "torchvision" (inside the workers on a CPU; with CUDA, or an explicit
                      `device`, batch by batch in the main process: data.tvbatch, nvJPEG)
                  "bytes" (encoded bytes, no decoding) | "none" (manifest rows, no reads)
      -> (images, labels)
Sample order is exact on resume for every decoder. Augmentation is exact too with
"torchvision" (seeded per batch by (seed, epoch, rank, batch)); DALI's generator
is seeded per epoch and per resume point, so its crops after a resume differ.
BalancedLoader counts the batches it hands out; state_dict() / load_state_dict()
make a mid-epoch resume yield exactly what an uninterrupted run would have next; on
another world size (or batch size) the rest of the interrupted epoch is re-split
over the new ranks (data/elastic.py) and later epochs are drawn for the new world.
"""
from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lt_dist.data.elastic import ResplitSampler, Share
from lt_dist.data.presets import Preset
from lt_dist.data.reader import ShardReader
from lt_dist.data.sampler import BalancedSampler, SamplerConfig, SequentialSampler
from lt_dist.data.tvbatch import decode_batch, resolve_device
from lt_dist.dist import World
from lt_dist.errors import UserInputError
from lt_dist.shards.manifest import INDEX_FILES
from lt_dist.storage.settings import StorageSettings

DECODERS = ("dali", "torchvision", "bytes", "none")


@dataclass(frozen=True)
class LoaderConfig:
    """Everything a loader needs besides the world."""

    split_dir: str  # shards/NAME/SPLIT
    batch_size: int  # samples per batch on this rank
    preset: Preset | None = None  # augmentation recipe; None with decoder "none"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    decoder: str = "dali"  # "dali" | "torchvision" | "bytes" | "none"
    num_workers: int = 2  # DataLoader worker processes feeding (or, torchvision, decoding)
    dali_threads: int = 2  # DALI decode threads
    max_open_files: int = 64  # per worker process
    # torchvision only, where batches are decoded: None = the GPU when CUDA is there (nvJPEG,
    # main process), else the CPU in the workers; "cpu" / "cuda[:N]" = batches in the main process
    device: str | None = None


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """Augmentation seed of one batch: fixed by (seed, epoch, rank, batch index)."""
    return int(np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(1)[0])


class RowStream(torch.utils.data.IterableDataset):
    """One rank's batches for one epoch, split over DataLoader workers."""

    def __init__(self, config: LoaderConfig, sampler: BalancedSampler, epoch: int, start_batch: int,
                 decode_in_workers: bool = True):
        super().__init__()
        self.config, self.sampler, self.epoch, self.start_batch = config, sampler, epoch, start_batch
        self.decode_in_workers = decode_in_workers  # torchvision: False = bytes out, decoded by the caller

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        reader = ShardReader(self.config.split_dir, self.config.max_open_files)
        rows_per_batch = self.sampler.worker_batches(self.epoch, worker, num_workers, self.start_batch)
        if self.config.decoder != "none":  # "none" reads manifest rows only: no shard is fetched
            rows_per_batch = reader.prefetched(rows_per_batch)  # a remote split: exact look-ahead downloads
        first = self.start_batch + worker  # this worker's first batch (see worker_batches)
        try:
            for step, rows in enumerate(rows_per_batch):
                yield self._batch(reader, rows, first + step * num_workers)
        finally:
            reader.close()

    def _batch(self, reader: ShardReader, rows: np.ndarray, batch_index: int) -> dict:
        batch = {"rows": torch.from_numpy(rows), "labels": torch.from_numpy(reader.labels[rows])}
        if self.config.decoder == "none":
            return batch
        data = reader.read_many(rows)
        if self.config.decoder != "torchvision" or not self.decode_in_workers:
            batch["data"] = data
            return batch
        from lt_dist.data.tvdecode import decode_sample

        generator = torch.Generator().manual_seed(
            batch_seed(self.config.sampler.seed, self.epoch, self.sampler.world.rank, batch_index))
        batch["images"] = torch.stack([decode_sample(item, self.config.preset, generator) for item in data])
        return batch


class BalancedLoader:
    """Iterate (images, labels) batches of the current epoch; resumable mid-epoch."""

    def __init__(self, config: LoaderConfig, world: World, samples_per_class: np.ndarray | None = None,
                 sampler: "BalancedSampler | SequentialSampler | None" = None):
        if config.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {config.decoder!r}; choose one of {', '.join(DECODERS)}")
        if config.decoder in ("dali", "torchvision") and config.preset is None:
            raise ValueError(f"decoder {config.decoder!r} needs an augmentation preset")
        if config.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {config.num_workers}")
        self.config, self.world = config, world
        # Decided once, from torch.cuda.is_available(): nothing is tried and caught later.
        self.decode_device = (resolve_device(config.device, world.local_rank) if config.decoder == "torchvision"
                              else None)
        if sampler is None:  # the default: balanced sampling as config.sampler says
            if samples_per_class is None:
                samples_per_class = ShardReader(config.split_dir, 1).samples_per_class
            sampler = BalancedSampler(samples_per_class, config.sampler, world, config.batch_size)
        self.sampler = sampler
        self.resplit: ResplitSampler | None = None  # the rest of an epoch begun by another world
        self.epoch, self.batches_done = 0, 0

    def _epoch_sampler(self):
        """The sampler of the current epoch: the re-split one for an epoch begun by another world."""
        return self.resplit if self.resplit is not None and self.resplit.epoch == self.epoch else self.sampler

    def __len__(self) -> int:
        """Batches of the current epoch on this rank."""
        return self._epoch_sampler().num_batches

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch at the next iteration."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def __iter__(self):
        """Yield the rest of the current epoch: (images, labels); with decoder "bytes"
        (list of encoded bytes, labels), with "none" (manifest rows, labels)."""
        self._check_cache_holds_window()
        stream = RowStream(self.config, self._epoch_sampler(), self.epoch, self.batches_done,
                           decode_in_workers=self.decode_device is None)
        workers = self.config.num_workers
        batches = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=workers, collate_fn=_identity,
            prefetch_factor=4 if workers else None, persistent_workers=False,
            worker_init_fn=_leave_signals_to_the_rank if workers else None)
        for images, labels in self._decoded(iter(batches)):
            self.batches_done += 1
            yield images, labels
        self.epoch, self.batches_done = self.epoch + 1, 0

    def _check_cache_holds_window(self) -> None:
        """Refuse, before any download, a --cache-limit that cannot hold the shards this
        node's look-ahead windows pin at once (else the epoch would stop half-way)."""
        settings = StorageSettings.from_env()
        if settings.cache_limit is None or self.config.decoder == "none":
            return
        reader = ShardReader(self.config.split_dir, 1)
        if not reader.is_remote:
            return
        sampler, workers = self._epoch_sampler(), max(self.config.num_workers, 1)
        per_rank = sum(reader.look_ahead_bytes(sampler.worker_batches(self.epoch, worker, workers, self.batches_done),
                                               settings.prefetch_batches) for worker in range(workers))
        ranks = -(-self.world.world_size // self.world.num_nodes)  # the most ranks one node runs
        index_bytes = sum(os.path.getsize(os.path.join(reader.split_dir, name)) for name in INDEX_FILES
                          if os.path.isfile(os.path.join(reader.split_dir, name)))  # kept, never evicted
        needed = per_rank * ranks + index_bytes
        if needed > settings.cache_limit:
            raise UserInputError(
                f"--cache-limit {settings.cache_limit} bytes is smaller than one look-ahead window: "
                f"{ranks} rank(s) x {workers} loader worker(s) on this node, each {settings.prefetch_batches} "
                f"batches ahead, pin up to {needed} bytes of shards and index files; use --cache-limit "
                f"{needed} or more, or a smaller --prefetch")

    def _decoded(self, batches):
        if self.config.decoder == "torchvision" and self.decode_device is None:
            return ((batch["images"], batch["labels"]) for batch in batches)
        if self.config.decoder == "torchvision":
            return self._decoded_on_device(batches)
        if self.config.decoder in ("bytes", "none"):
            first = "data" if self.config.decoder == "bytes" else "rows"
            return ((batch[first], batch["labels"]) for batch in batches)
        from lt_dist.data.dali import DaliDecoder

        # tolist(): one conversion per batch, not a 0-d tensor and int() per sample
        raw = (list(zip(batch["data"], batch["labels"].tolist())) for batch in batches)
        seed = batch_seed(self.config.sampler.seed, self.epoch, self.world.rank, self.batches_done)
        return DaliDecoder(raw, self.config.preset, self.config.batch_size,
                           num_threads=self.config.dali_threads, seed=seed % (2**31))

    def _decoded_on_device(self, batches):
        """torchvision batches decoded here on decode_device, seeded as the workers' path is.

        Runs while batches_done is the index of the batch being decoded, so the seed is
        batch_seed(seed, epoch, rank, that index): the same draws as a CPU run.
        """
        for batch in batches:
            generator = torch.Generator().manual_seed(
                batch_seed(self.config.sampler.seed, self.epoch, self.world.rank, self.batches_done))
            images = decode_batch(batch["data"], self.config.preset, generator, self.decode_device)
            yield images, batch["labels"].to(self.decode_device, non_blocking=True)

    def state_dict(self) -> dict:
        """Where the loader stands: enough to resume mid-epoch, on this or another world size."""
        sampler = self._epoch_sampler()
        resplit = sampler is self.resplit
        return {"epoch": self.epoch, "batches_done": self.batches_done, "world_size": self.world.world_size,
                "batch_size": self.config.batch_size, "sampler": asdict(self.config.sampler),
                # the epoch's draws are fixed by the world that began it; shares: earlier worlds' progress
                "epoch_draws": sampler.total if resplit else getattr(sampler, "epoch_draws", None),
                "shares": [share.to_dict() for share in sampler.shares] if resplit else []}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration continues `state`'s epoch after its last batch.

        Saved on another world size or batch size (or inside an epoch that was already
        re-split), the undelivered rest of the epoch is dealt over this world's ranks.
        """
        if state.get("sampler") != asdict(self.config.sampler):
            raise ValueError(f"cannot resume: the saved loader has sampler={state.get('sampler')!r}, "
                             f"this one has {asdict(self.config.sampler)!r}")
        self.epoch, self.batches_done, self.resplit = int(state["epoch"]), int(state["batches_done"]), None
        shares = [Share(**share) for share in state.get("shares", [])]
        same_world = (state.get("world_size"), state.get("batch_size")) == (self.world.world_size,
                                                                           self.config.batch_size)
        if (same_world and not shares) or self.batches_done == 0 and not shares:
            return  # the plain case, or an epoch nobody started: draw it for this world
        if state.get("epoch_draws") is None:
            raise ValueError("cannot resume on another world size: the checkpoint predates elastic resume "
                             f"(saved on {state.get('world_size')} ranks; resume on that many)")
        shares.append(Share(int(state["world_size"]), int(state["batch_size"]), self.batches_done))
        self.resplit = ResplitSampler(self.sampler, self.epoch, int(state["epoch_draws"]), shares)
        self.batches_done = 0


def _leave_signals_to_the_rank(worker_id: int) -> None:
    """A loader worker ignores SIGTERM and SIGINT: they are the rank's to handle.

    Slurm's time limit signals every process of the job and Ctrl-C the whole foreground
    group. A worker that died of the signal would make torch's SIGCHLD handler raise in the
    rank before it could checkpoint; ignored, the worker keeps feeding batches until the
    rank's pre-emption checkpoint is written, and ends with the DataLoader (or by torch's
    watchdog when the rank itself is gone).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _identity(batch):
    return batch
