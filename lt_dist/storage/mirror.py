"""A remote split seen as a local folder: its index files mirrored into the node cache.

mirror_split(URL, index files) fetches dataset.json, shards.parquet, manifest.parquet
(manifest last) into NodeCache.folder(URL) and writes `.source.json` there; every
reader of `shards/` then opens that folder as it opens a packed split on disk. The
shards themselves arrive later, one by one, through MirrorShards (on demand or by
the Prefetcher), under the same folder and their own names.

The index is refreshed when the remote manifest's size / ETag / mtime change (one
stat per mirror_split call); a changed split drops its cached shards.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Hashable, Iterable, Iterator, Sequence

from lt_dist.storage.cache import NodeCache, _Flock
from lt_dist.storage.prefetch import Prefetcher
from lt_dist.storage.settings import StorageSettings
from lt_dist.storage.urls import join_url

SOURCE_FILE = ".source.json"


_CACHES: dict[str, NodeCache] = {}


def node_cache(settings: StorageSettings | None = None) -> NodeCache:
    """This process's NodeCache for `settings` (default: from LT_DIST_* variables)."""
    settings = settings or StorageSettings.from_env()
    key = repr(settings)
    if key not in _CACHES:
        _CACHES[key] = NodeCache(settings)
    return _CACHES[key]


def source_url(split_dir: str) -> str | None:
    """The URL a mirrored split folder stands for; None for an ordinary folder."""
    try:
        with open(os.path.join(split_dir, SOURCE_FILE), encoding="utf-8") as handle:
            return json.load(handle)["url"]
    except FileNotFoundError:
        return None


def _fingerprint(info: dict) -> str:
    keys = ("size", "ETag", "etag", "LastModified", "mtime", "last_modified", "generation")
    return json.dumps({key: str(info[key]) for key in keys if key in info}, sort_keys=True)


def mirror_split(url: str, index_names: Sequence[str], cache: NodeCache | None = None) -> str:
    """Local folder standing for the remote split at `url`; index_names[-1] (the
    manifest) must exist remotely, else FileNotFoundError naming it."""
    cache = cache or node_cache()
    folder = cache.folder(url)
    manifest_url = join_url(url, index_names[-1])
    info = cache.store.info(manifest_url)
    if info is None:
        raise FileNotFoundError(f"{url!r} is not a packed split: {manifest_url} does not exist")
    stamp = _fingerprint(info)
    os.makedirs(folder, exist_ok=True)
    with _Flock(os.path.join(folder, ".index.lock"), fcntl.LOCK_EX):
        source = os.path.join(folder, SOURCE_FILE)
        if os.path.isfile(source):
            with open(source, encoding="utf-8") as handle:
                if json.load(handle).get("stamp") == stamp:
                    return folder
        _drop_folder_objects(folder)  # a changed (or new) remote split: nothing cached is trusted
        for name in index_names:  # the manifest last, as a pack writes it
            cache.get(join_url(url, name), keep=True)
        temp = f"{source}.tmp-{os.getpid()}"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump({"url": url, "stamp": stamp}, handle)
        os.replace(temp, source)
    return folder


def _drop_folder_objects(folder: str) -> None:
    for entry in os.scandir(folder):
        if entry.is_file() and (not entry.name.startswith(".") or entry.name.endswith(".keep")):
            os.remove(entry.path)


class MirrorShards:
    """The shards of a mirrored split, fetched into the cache when needed.

    names/sizes/sha256s: the split's shard table (shards.parquet), index = shard id."""

    def __init__(self, split_dir: str, names: Sequence[str], sizes: Sequence[int], sha256s: Sequence[str],
                 cache: NodeCache | None = None, settings: StorageSettings | None = None):
        url = source_url(split_dir)
        if url is None:
            raise ValueError(f"{split_dir} is not a mirrored split (no {SOURCE_FILE})")
        self.url, self.cache = url, cache or node_cache()
        self.settings = settings or StorageSettings.from_env()
        self.names, self.sizes, self.sha256s = list(names), list(sizes), list(sha256s)

    def path(self, shard_id: int) -> str:
        """Local path of the complete, checked shard (downloads it if absent)."""
        return self.cache.get(join_url(self.url, self.names[shard_id]), self.sizes[shard_id],
                              self.sha256s[shard_id])

    def fetch_and_pin(self, shard_id: Hashable) -> int:
        """Download shard_id if needed and pin it (see NodeCache.pin)."""
        url = join_url(self.url, self.names[shard_id])
        while True:
            self.path(shard_id)
            token = self.cache.pin(url)
            if token is not None:
                return token

    def ahead(self, batches: Iterable, shards_of, window: int | None = None) -> Iterator:
        """Yield `batches` in order while the shards of the next `window` batches
        (default settings.prefetch_batches) download; shards_of(batch) -> shard ids."""
        prefetcher = Prefetcher(self.fetch_and_pin, NodeCache.unpin, self.settings.prefetch_threads)
        return prefetcher.ahead(batches, shards_of, window or self.settings.prefetch_batches)
