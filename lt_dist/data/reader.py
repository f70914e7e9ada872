"""Read samples by manifest row: one pread at the recorded offset, no tar scan.

Open files are bounded: at most `max_open_files` shard descriptors are cached
(least recently used closed first), so a loader over 8,142 classes' shards holds a
handful of descriptors, never one per shard. Columns are kept as numpy arrays
(about 24 bytes per sample); keys stay in the memory-mapped Arrow table.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from lt_dist.shards.manifest import load_manifest


class ShardReader:
    """Random access to a packed split's image bytes."""

    def __init__(self, split_dir: str, max_open_files: int = 64):
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        manifest = load_manifest(split_dir)
        if manifest.samples.num_rows == 0:
            raise ValueError(f"{split_dir}: the manifest holds no samples")
        self.split_dir = manifest.split_dir
        self.samples_per_class = manifest.samples_per_class
        self.class_names = manifest.class_names
        shard_column = manifest.samples.column("shard").dictionary_encode().combine_chunks()
        self.shard_paths = [os.path.join(self.split_dir, name) for name in shard_column.dictionary.to_pylist()]
        self.shard_ids = shard_column.indices.to_numpy().astype(np.int32)
        self.offsets = manifest.samples.column("offset").to_numpy()
        self.sizes = manifest.samples.column("size").to_numpy()
        self.labels = manifest.samples.column("label").to_numpy().astype(np.int64)
        self._keys = manifest.samples.column("key")
        self.max_open_files = max_open_files
        self._files: OrderedDict[int, int] = OrderedDict()  # shard id -> descriptor, LRU order
        self._check_class_blocks()

    def _check_class_blocks(self) -> None:
        """The sampler addresses class j as rows [start_j, start_j + n_j): verify the sort."""
        expected = np.repeat(np.arange(len(self.samples_per_class)), self.samples_per_class)
        if len(expected) != len(self.labels) or not np.array_equal(expected, self.labels):
            raise ValueError(f"{self.split_dir}: manifest rows are not grouped by label as dataset.json "
                             f"counts say; re-pack or run `lt_dist verify`")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def open_files(self) -> int:
        """Descriptors held now (never more than max_open_files)."""
        return len(self._files)

    def _descriptor(self, shard_id: int) -> int:
        fd = self._files.pop(shard_id, None)
        if fd is None:
            if len(self._files) >= self.max_open_files:
                os.close(self._files.popitem(last=False)[1])
            fd = os.open(self.shard_paths[shard_id], os.O_RDONLY)
        self._files[shard_id] = fd  # most recently used last
        return fd

    def read(self, row: int) -> bytes:
        """Encoded image bytes of manifest row `row`."""
        size = int(self.sizes[row])
        data = os.pread(self._descriptor(int(self.shard_ids[row])), size, int(self.offsets[row]))
        if len(data) != size:
            raise OSError(f"{self.shard_paths[self.shard_ids[row]]}: short read at offset "
                          f"{self.offsets[row]} ({len(data)} of {size} bytes); run `lt_dist verify`")
        return data

    def key(self, row: int) -> str:
        """The sample's webdataset key."""
        return self._keys[int(row)].as_py()

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may be gone
            pass
