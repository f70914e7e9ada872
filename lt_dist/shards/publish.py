"""`lt_dist pack --out URL`: pack into a local staging folder, then upload.

The staging folder is CACHE_DIR/staging/<url_key(URL)>: an ordinary local pack,
with its own resume rules. A split is uploaded shards first, then ids.txt,
shards.parquet, dataset.json and manifest.parquet last, so a remote split has a
manifest only once everything it names is there. Objects already at the URL with
the right size are not sent again (a re-run after a kill finishes the upload);
when anything must be replaced, the remote manifest is deleted first, so a
half-replaced split never looks finished.
"""
from __future__ import annotations

import os
from dataclasses import replace

from lt_dist.shards.manifest import DATASET_JSON, IDS_LIST, MANIFEST, SHARD_TABLE
from lt_dist.storage.mirror import node_cache
from lt_dist.storage.settings import StorageSettings
from lt_dist.storage.urls import join_url, url_key

INDEX_ORDER = (IDS_LIST, SHARD_TABLE, DATASET_JSON, MANIFEST)


def staging_dir(url: str, settings: StorageSettings | None = None) -> str:
    """Local folder where a pack to `url` is written before it is uploaded."""
    settings = settings or StorageSettings.from_env()
    return os.path.join(settings.cache_dir, "staging", url_key(url))


def upload_split(split_dir: str, url: str, log=print) -> int:
    """Upload a finished local split to `url` (see the module doc); returns objects sent."""
    store = node_cache().store
    shards = sorted(name for name in os.listdir(split_dir)
                    if not name.startswith(".") and name not in INDEX_ORDER)
    names = [*shards, *INDEX_ORDER]
    stale = [name for name in names
             if store.size(join_url(url, name)) != os.path.getsize(os.path.join(split_dir, name))]
    if stale and MANIFEST not in stale:  # same-sized manifest but other files differ
        stale.append(MANIFEST)
    if stale and store.exists(join_url(url, MANIFEST)):
        store.remove(join_url(url, MANIFEST))  # the split stops looking finished first
    for name in names:  # shards, then the index with the manifest last
        if name in stale:
            store.upload(os.path.join(split_dir, name), join_url(url, name))
    log(f"{url}: {len(stale)} of {len(names)} objects uploaded")
    return len(stale)


def pack_to_url(pack, source, subset, options, command: list[str]) -> dict:
    """Run `pack` (lt_dist.shards.pack.pack) into the staging folder, then upload every
    split it packed to options.out/SPLIT; returns pack's summaries."""
    url = options.out
    staged = staging_dir(url)
    summaries = pack(source, subset, replace(options, out=staged), command)
    for split in summaries:
        upload_split(os.path.join(staged, split), join_url(url, split))
    return summaries
