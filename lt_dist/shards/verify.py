"""`lt_dist verify`: check a packed split against its manifest.

Per shard: the file exists, its size and sha256 match, its members are exactly the
manifest's samples (key, image member at the recorded offset and size, a `cls`
member equal to the shard's class). With decode=True every image is also decoded
from its manifest offset (the way the loader reads it). A split given as a URL is
checked from the node cache: each shard is downloaded once (and kept there).
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field

from lt_dist.shards.format import file_sha256
from lt_dist.shards.images import decode_image, stored_as_read
from lt_dist.shards.manifest import load_manifest
from lt_dist.storage.mirror import node_cache, source_url
from lt_dist.storage.retry import RemoteError
from lt_dist.storage.urls import join_url


@dataclass
class VerifyReport:
    """Outcome of verifying one split."""

    split_dir: str
    num_shards: int = 0
    num_samples: int = 0
    decoded: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_split(split_dir: str, decode: bool = False, progress=lambda n: None) -> VerifyReport:
    """Verify one finished split; problems are listed, never raised."""
    manifest = load_manifest(split_dir)
    report = VerifyReport(manifest.split_dir)
    rows_by_shard: dict[str, list[dict]] = {}
    for row in manifest.samples.to_pylist():
        rows_by_shard.setdefault(row["shard"], []).append(row)
    remote = source_url(manifest.split_dir)
    for shard in manifest.shards.to_pylist():
        report.num_shards += 1
        rows = rows_by_shard.pop(shard["path"], [])
        if remote is None or _fetched(join_url(remote, shard["path"]), shard, report):
            _verify_shard(os.path.join(report.split_dir, shard["path"]), shard, rows, decode, report)
        progress(len(rows))
    for name in rows_by_shard:
        report.problems.append(f"manifest rows point at {name}, which the shard table does not list")
    counts = manifest.samples.column("label").to_numpy()
    expected = manifest.samples_per_class
    for label, count in enumerate(expected):
        if int((counts == label).sum()) != int(count):
            report.problems.append(f"class {label}: dataset.json says {count} samples, manifest has "
                                   f"{int((counts == label).sum())}")
    return report


def _fetched(url: str, shard: dict, report: VerifyReport) -> bool:
    """Bring a remote shard into the cache (size and sha256 checked there); False and a
    problem when it is missing or does not match."""
    try:
        node_cache().get(url, shard["bytes"], shard["sha256"])
        return True
    except FileNotFoundError:
        report.problems.append(f"{shard['path']}: shard file is missing ({url} not found)")
    except (RemoteError, PermissionError) as error:
        report.problems.append(f"{shard['path']}: {error}")
    return False


def _verify_shard(path: str, shard: dict, rows: list[dict], decode: bool, report: VerifyReport) -> None:
    name = shard["path"]
    if not os.path.isfile(path):
        report.problems.append(f"{name}: shard file is missing")
        return
    size = os.path.getsize(path)
    if size != shard["bytes"]:
        report.problems.append(f"{name}: {size} bytes on disk, manifest says {shard['bytes']}")
    if file_sha256(path) != shard["sha256"]:
        report.problems.append(f"{name}: sha256 does not match the manifest")
    if len(rows) != shard["count"]:
        report.problems.append(f"{name}: shard table says {shard['count']} samples, manifest has {len(rows)}")
    _verify_members(path, shard, rows, report)
    report.num_samples += len(rows)
    if decode:
        _decode_rows(path, rows, report)


def _verify_members(path: str, shard: dict, rows: list[dict], report: VerifyReport) -> None:
    name = shard["path"]
    expected = {row["key"]: row for row in rows}
    seen = set()
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if key not in expected:
                    report.problems.append(f"{name}: member {member.name} is not in the manifest")
                    continue
                row = expected[key]
                if ext == "cls":
                    label = tar.extractfile(member).read().decode("ascii", "replace").strip()
                    if label != str(shard["label"]) or row["label"] != shard["label"]:
                        report.problems.append(f"{name}: {key} has class {label}, shard is class {shard['label']}")
                elif (member.offset_data, member.size, ext) != (row["offset"], row["size"], row["ext"]):
                    report.problems.append(f"{name}: {member.name} at offset {member.offset_data} size "
                                           f"{member.size}, manifest says {row['offset']} / {row['size']}")
                else:
                    seen.add(key)
    except (tarfile.TarError, OSError) as error:
        report.problems.append(f"{name}: not a readable tar: {error}")
        return
    for key in expected.keys() - seen:
        report.problems.append(f"{name}: sample {key} from the manifest is not in the shard")


def _decode_rows(path: str, rows: list[dict], report: VerifyReport) -> None:
    with open(path, "rb") as handle:
        for row in rows:
            handle.seek(row["offset"])
            data = handle.read(row["size"])
            try:
                image = decode_image(data)
                report.decoded += 1
            except Exception as error:  # PIL raises many types for broken data
                report.problems.append(f"{os.path.basename(path)}: {row['key']} does not decode: {error}")
                continue
            if not stored_as_read(image.format, image.mode, data):  # packed by an older lt-dist
                report.problems.append(f"{os.path.basename(path)}: {row['key']} is {image.format} "
                                       f"({image.mode}), which DALI and torchvision do not decode alike; "
                                       f"pack the split again with --overwrite")
