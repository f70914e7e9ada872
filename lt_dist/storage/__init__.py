"""Where shards live: local paths, s3://, gs://, http(s):// behind one node-local cache.

    urls      is_url / join_url / split_url: string handling, no I/O
    settings  StorageSettings: cache folder and limit, node id, retries, prefetch depth,
              fsspec storage options (from flags or LT_DIST_* environment variables)
    retry     with_retries: backoff on transient errors, stop at once on 403/404
    remote    RemoteStore: the only module that imports fsspec (s3fs, gcsfs, HTTP)
    cache     NodeCache: per-node folder of downloaded objects, flock'ed so that every
              object is downloaded once per node, atomic rename, sha256 check, LRU cap
    prefetch  Prefetcher: background downloads of exactly the shards the next batches read
    mirror    mirror_split: a remote split's index files in the cache, so `shards/`,
              `data/` and `engine/` see an ordinary local split folder
Layers above ask for local files; none of them names a protocol.
"""
