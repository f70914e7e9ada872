"""The index of a packed split: manifest.parquet, shards.parquet, dataset.json.

    <split>/manifest.parquet  one row per sample (key, id, label, shard, offset, size,
                              ext, width, height), sorted by label, shard, offset
    <split>/shards.parquet    one row per shard (path, label, count, bytes, sha256)
    <split>/dataset.json      format version, class names, per-class counts, split
                              sizes, command, source, subset, skipped items
    <split>/ids.txt           the packed ids as a split list ("id label"): rebuilds
                              the exact subset with `lt_dist pack --list`/`--ids`
manifest.parquet is written last: a split folder without it is not finished.

A dataset may also be a URL (s3://, gs://, http(s)://): resolve_split and
find_splits then return the URL's mirror in the node cache (lt_dist.storage.mirror),
an ordinary local folder with the index files; the shards follow on demand.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lt_dist.errors import UserInputError
from lt_dist.shards.format import SampleRecord, ShardRecord, parse_shard_name
from lt_dist.storage.urls import is_url, join_url

MANIFEST = "manifest.parquet"
SHARD_TABLE = "shards.parquet"
DATASET_JSON = "dataset.json"
IDS_LIST = "ids.txt"
PLAN_FILE = ".pack-plan.json"  # written first by a pack: the folder is an lt-dist split

SAMPLE_SCHEMA = pa.schema([
    ("key", pa.string()), ("id", pa.string()), ("label", pa.int32()), ("shard", pa.string()),
    ("offset", pa.int64()), ("size", pa.int64()), ("ext", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()),
])
SHARD_SCHEMA = pa.schema([
    ("path", pa.string()), ("label", pa.int32()), ("count", pa.int64()),
    ("bytes", pa.int64()), ("sha256", pa.string()),
])


@dataclass
class Manifest:
    """A packed split as the readers see it."""

    split_dir: str
    samples: pa.Table  # SAMPLE_SCHEMA
    shards: pa.Table  # SHARD_SCHEMA
    info: dict  # dataset.json

    @property
    def samples_per_class(self) -> np.ndarray:
        """(C,) int64 packed samples per class."""
        return np.asarray(self.info["samples_per_class"], dtype=np.int64)

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])


def _write_atomic(path: str, write) -> None:
    temp = f"{path}.tmp-{os.getpid()}"
    write(temp)
    os.replace(temp, path)


def write_split_index(split_dir: str, samples: list[SampleRecord], shards: list[ShardRecord],
                      info: dict) -> None:
    """Write ids.txt, shards.parquet, dataset.json and, last, manifest.parquet."""
    samples = sorted(samples, key=lambda s: (s.label, s.shard, s.offset))
    shards = sorted(shards, key=lambda s: (s.label, s.path))
    sample_table = pa.Table.from_pylist([asdict(s) for s in samples], schema=SAMPLE_SCHEMA)
    shard_table = pa.Table.from_pylist([asdict(s) for s in shards], schema=SHARD_SCHEMA)

    def write_ids(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(f"{s.id} {s.label}\n" for s in samples)

    def write_json(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=1)
            handle.write("\n")

    _write_atomic(os.path.join(split_dir, IDS_LIST), write_ids)
    _write_atomic(os.path.join(split_dir, SHARD_TABLE), lambda p: pq.write_table(shard_table, p))
    _write_atomic(os.path.join(split_dir, DATASET_JSON), write_json)
    _write_atomic(os.path.join(split_dir, MANIFEST), lambda p: pq.write_table(sample_table, p))


def is_split_dir(path: str) -> bool:
    """True when path holds a finished packed split."""
    return os.path.isfile(os.path.join(path, MANIFEST))


def is_unfinished_split(path: str) -> bool:
    """True when path holds a pack's plan or shards but no manifest: a pack that has not
    finished (interrupted, or its manifest lost)."""
    if is_split_dir(path) or not os.path.isdir(path):
        return False
    return any(name == PLAN_FILE or parse_shard_name(name) is not None for name in os.listdir(path))


def unfinished_splits(path: str) -> list[str]:
    """Sub-folders of a dataset folder that hold an unfinished split."""
    if not os.path.isdir(path):
        return []
    return sorted(os.path.join(path, name) for name in os.listdir(path)
                  if is_unfinished_split(os.path.join(path, name)))


INDEX_FILES = (IDS_LIST, SHARD_TABLE, DATASET_JSON, MANIFEST)  # in the order a pack writes them
REMOTE_SPLIT_NAMES = ("train", "val", "test")  # a URL cannot be listed everywhere (HTTP): these are tried


def _mirror(url: str) -> str:
    from lt_dist.storage.mirror import mirror_split

    try:
        return mirror_split(url, INDEX_FILES)
    except (FileNotFoundError, PermissionError) as error:
        raise UserInputError(str(error)) from None


def _remote_is_split(url: str) -> bool:
    from lt_dist.storage.mirror import node_cache

    try:
        return node_cache().store.exists(join_url(url, MANIFEST))
    except PermissionError as error:
        raise UserInputError(str(error)) from None


def _find_remote_splits(url: str) -> list[str]:
    if _remote_is_split(url):
        return [url]
    found = [join_url(url, name) for name in REMOTE_SPLIT_NAMES if _remote_is_split(join_url(url, name))]
    if not found:
        raise UserInputError(f"{url!r} holds no packed split (none of {', '.join(REMOTE_SPLIT_NAMES)} "
                             f"has a {MANIFEST})")
    return found


def find_splits(path: str, allow_unfinished: bool = False) -> list[str]:
    """Split folders at path: path itself, or its sub-folders (train, val, test...).

    An unfinished split (shards but no manifest) is an error naming it, unless
    allow_unfinished (then it is listed too, for verify to report). For a URL: the
    split URLs (a URL's mirror is made by resolve_split).
    """
    if is_url(path):
        return _find_remote_splits(path)
    if is_split_dir(path) or (allow_unfinished and is_unfinished_split(path)):
        return [path]
    if is_unfinished_split(path):
        raise UserInputError(_unfinished_message(path))
    if not os.path.isdir(path):
        what = "a file" if os.path.exists(path) else "no such folder"
        raise UserInputError(f"{path!r} is not a packed dataset ({what})")
    order = {"train": 0, "val": 1, "test": 2}  # the usual order, others after by name
    names = sorted((name for name in os.listdir(path) if is_split_dir(os.path.join(path, name))
                    or is_unfinished_split(os.path.join(path, name))),
                   key=lambda name: (order.get(name, 3), name))
    found = [os.path.join(path, name) for name in names]
    unfinished = [split for split in found if not is_split_dir(split)]
    if unfinished and not allow_unfinished:
        raise UserInputError(_unfinished_message(unfinished[0]))
    if not found:
        raise UserInputError(f"{path!r} holds no packed split (no */{MANIFEST})")
    return found


def _unfinished_message(split_dir: str) -> str:
    return (f"split {split_dir!r} is unfinished: it holds shards but no {MANIFEST}; run the pack "
            f"that wrote it again to finish it")


def resolve_split(path: str, split: str | None = None) -> str:
    """The split folder for `path` (a dataset or split folder) and an optional split name;
    for a URL, the local folder mirroring it in the node cache."""
    if is_url(path):
        if split is not None and not _remote_is_split(path):
            path = join_url(path, split)
        return _mirror(path)
    if split is not None and not is_split_dir(path):
        path = os.path.join(path, split)
    if is_unfinished_split(path):
        raise UserInputError(_unfinished_message(path))
    if not is_split_dir(path):
        raise UserInputError(f"{path!r} is not a packed split: {MANIFEST} is missing")
    return path


def test_split(dataset: str) -> str | None:
    """The dataset's test split folder (a URL's mirror), or None when it has none."""
    if is_url(dataset):
        test_url = join_url(dataset, "test")
        return _mirror(test_url) if _remote_is_split(test_url) else None
    test_dir = os.path.join(dataset, "test")
    return resolve_split(test_dir) if os.path.isdir(test_dir) else None


def read_info(split_dir: str) -> dict:
    """dataset.json of a split as a dict; UserInputError naming the file when unreadable."""
    path = os.path.join(split_dir, DATASET_JSON)
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
    except FileNotFoundError:
        raise UserInputError(f"{path!r} is missing; the split is damaged: pack it again") from None
    except ValueError as error:  # bad JSON or bad UTF-8
        raise UserInputError(f"{path!r} is not readable JSON ({error}); pack the split again") from None
    if not isinstance(info, dict):
        raise UserInputError(f"{path!r} does not hold a JSON object; pack the split again")
    _check_info(path, info)
    return info


def _check_info(path: str, info: dict) -> None:
    """The fields the readers size things by: class names and per-class counts that agree."""
    names, counts = info.get("class_names"), info.get("samples_per_class")
    if not isinstance(names, list) or not isinstance(counts, list) or len(names) != len(counts):
        raise UserInputError(f"{path!r}: class_names and samples_per_class must be lists of one length "
                             f"(one entry per class); pack the split again")
    bad = next((c for c in counts if type(c) is not int or c < 0), None)
    if bad is not None:
        raise UserInputError(f"{path!r}: samples_per_class holds {bad!r}, not a count >= 0; pack the split again")


def read_index_table(split_dir: str, name: str, **options) -> pa.Table:
    """A Parquet index file of a split; UserInputError naming it when missing or unreadable."""
    path = os.path.join(split_dir, name)
    try:
        return pq.read_table(path, **options)
    except FileNotFoundError:
        raise UserInputError(f"{path!r} is missing; the split is damaged: pack it again") from None
    except (pa.ArrowException, OSError) as error:
        raise UserInputError(f"{path!r} is not a readable Parquet file ({error}); pack the split again") from None


def load_manifest(split_dir: str) -> Manifest:
    """Read a finished split's index (the sample table is memory-mapped)."""
    split_dir = resolve_split(split_dir)
    samples = read_index_table(split_dir, MANIFEST, memory_map=True)
    shards = read_index_table(split_dir, SHARD_TABLE)
    info = read_info(split_dir)
    for table, schema, name in ((samples, SAMPLE_SCHEMA, MANIFEST), (shards, SHARD_SCHEMA, SHARD_TABLE)):
        missing = [field.name for field in schema if field.name not in table.column_names]
        if missing:
            raise UserInputError(f"{os.path.join(split_dir, name)!r} lacks column {missing[0]!r}; pack the split again")
    if samples.num_rows != sum(info["samples_per_class"]):
        raise UserInputError(f"{os.path.join(split_dir, MANIFEST)!r} has {samples.num_rows} rows but "
                             f"{DATASET_JSON} counts {sum(info['samples_per_class'])} samples; pack the split again")
    return Manifest(split_dir, samples, shards, info)


def class_difference(theirs: object, ours: list[str], there: str = "there", here: str = "here") -> str | None:
    """How two class-name lists differ (None when equal), for messages."""
    if theirs == ours:
        return None
    if not isinstance(theirs, list) or len(theirs) != len(ours):
        return f"{len(theirs) if isinstance(theirs, list) else 'no'} classes {there}, {len(ours)} {here}"
    index = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
    return f"class {index} is {theirs[index]!r} {there}, {ours[index]!r} {here}"


def check_splits_agree(split_dirs: list[str]) -> list[str]:
    """The class names shared by finished splits of one dataset (train, val, test...).

    Raises UserInputError naming the first split whose class names or count differ
    from the first split's: labels of a split packed from another source mean other
    classes, and training or evaluating across them would be silently meaningless.
    """
    first = read_info(split_dirs[0])["class_names"]
    for split_dir in split_dirs[1:]:
        difference = class_difference(read_info(split_dir)["class_names"], first, "in it", "in the first")
        if difference:
            raise UserInputError(f"split {split_dir!r} has other classes than {split_dirs[0]!r} "
                                 f"({difference}); "
                                 f"pack every split of a dataset from one source")
    return first
