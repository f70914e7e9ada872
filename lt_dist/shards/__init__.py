"""Packed datasets: per-class webdataset tar shards with an Arrow manifest.

Modules: format (sample and shard naming, the tar writer), sources (folder, split
list, IDX), subset (long-tailed profiles), images (read and check one image),
writer (pack one class), manifest (read/write the index), pack (the whole job),
verify, stats.
"""
