"""Pack the images of one class into that class's shards (runs in a worker).

Shards roll over when the next sample would push the closed archive past
shard_size bytes or shard_count samples. The roll-over depends only on the
sequence of encoded sizes, so a re-run cuts the same shards: finished shards found
on disk (renamed into place only when complete) are read back, not rewritten, and
packing carries on with the first item after the last finished shard.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from typing import Callable

from lt_dist.shards.format import (TAR_BLOCK, SampleRecord, ShardRecord, TarShardWriter, file_sha256,
                                   make_key, shard_name)
from lt_dist.shards.images import BadImage, load_image
from lt_dist.shards.sources import Item


@dataclass(frozen=True)
class ShardLimits:
    """Upper bounds for one shard."""

    shard_size: int  # bytes of the closed tar file
    shard_count: int  # samples


@dataclass(frozen=True)
class ClassTask:
    """Everything a worker needs to pack one class."""

    label: int
    items: list[Item]  # in pack order
    out_dir: str
    limits: ShardLimits
    check: str  # images.CHECKS
    skip_bad: bool  # --on-bad-image skip


@dataclass
class ClassResult:
    """What a worker hands back for one class."""

    label: int
    shards: list[ShardRecord]
    samples: list[SampleRecord]
    skipped: list[dict]  # {"id", "origin", "reason"}
    reused_shards: int  # finished shards found on disk and kept


class PackError(Exception):
    """A bad image with --on-bad-image error: the message names it."""


def pack_class(task: ClassTask, progress: Callable[[int], None] = lambda n: None) -> ClassResult:
    """Write (or complete) all shards of one class."""
    result = ClassResult(task.label, [], [], [], 0)
    position = _reuse_finished(task, result)
    progress(position)
    index = len(result.shards)
    while position < len(task.items):
        position = _write_one_shard(task, index, position, result, progress)
        index += 1
    return result


def _reuse_finished(task: ClassTask, result: ClassResult) -> int:
    """Read back the class's finished shards; returns the next item position."""
    position, index = 0, 0
    by_key = {make_key(item.id): i for i, item in enumerate(task.items)}
    while os.path.exists(path := os.path.join(task.out_dir, shard_name(task.label, index))):
        try:
            shard, samples = read_shard_index(path, task.label, task.items, by_key)
        except (tarfile.TarError, EOFError):  # damaged after it was finished: write it again
            os.remove(path)
            break
        last = by_key[samples[-1].key]
        present = {sample.key for sample in samples}
        for item in task.items[position:last]:  # skipped by the earlier run
            if make_key(item.id) not in present:
                result.skipped.append(_skip_entry(item, "skipped by an earlier run of this pack"))
        result.shards.append(shard)
        result.samples += samples
        result.reused_shards += 1
        position, index = last + 1, index + 1
    return position


def read_shard_index(path: str, label: int, items: list[Item],
                     by_key: dict[str, int]) -> tuple[ShardRecord, list[SampleRecord]]:
    """Rebuild the manifest rows of a finished shard from the tar itself."""
    samples, labels = [], 0
    with tarfile.open(path, "r") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext == "cls":
                labels += 1
                continue
            if key not in by_key:
                raise PackError(f"{path} holds {key!r}, which this pack does not contain; "
                                f"the folder holds another dataset (use --overwrite)")
            item = items[by_key[key]]
            samples.append(SampleRecord(key, item.id, label, os.path.basename(path),
                                        member.offset_data, member.size, ext, 0, 0))
        end = tar.offset  # where the last member's padded data ends
    _check_complete(path, end, len(samples), labels)
    shard = ShardRecord(os.path.basename(path), label, len(samples), os.path.getsize(path),
                        file_sha256(path))
    return shard, _with_sizes(samples, items, by_key)


def _check_complete(path: str, end: int, samples: int, labels: int) -> None:
    """tarfile reads a tar cut at a member boundary as a shorter archive without error:
    a finished shard must also hold a label per image and end in the end-of-archive blocks."""
    with open(path, "rb") as handle:
        handle.seek(end)
        tail = handle.read(2 * TAR_BLOCK)
    if not samples or labels != samples or tail != bytes(2 * TAR_BLOCK):
        raise tarfile.ReadError(f"{path} is not a complete shard")


def _with_sizes(samples: list[SampleRecord], items: list[Item], by_key: dict) -> list[SampleRecord]:
    """Fill width/height of re-read samples from the image headers (cheap)."""
    filled = []
    for sample in samples:
        _, _, width, height = load_image(items[by_key[sample.key]], check="header")
        filled.append(SampleRecord(**{**sample.__dict__, "width": width, "height": height}))
    return filled


def _write_one_shard(task: ClassTask, index: int, position: int, result: ClassResult,
                     progress: Callable[[int], None]) -> int:
    """Fill shard `index` from items[position:]; returns the next position."""
    name = shard_name(task.label, index)
    samples: list[SampleRecord] = []
    with TarShardWriter(os.path.join(task.out_dir, name)) as writer:
        while position < len(task.items):
            item = task.items[position]
            try:
                data, ext, width, height = load_image(item, task.check)
            except BadImage as error:
                if not task.skip_bad:
                    raise PackError(f"{error} (declared at {item.origin}); fix it or pass "
                                    f"--on-bad-image skip") from None
                result.skipped.append(_skip_entry(item, str(error)))
                position += 1
                progress(1)
                continue
            key = make_key(item.id)
            if samples and _would_overflow(writer, key, ext, len(data), task.limits):
                break
            offset, size = writer.add(key, ext, data, task.label)
            samples.append(SampleRecord(key, item.id, task.label, name, offset, size, ext, width, height))
            position += 1
            progress(1)
        if not samples:  # only bad images were left: no empty shard
            return position
        writer.commit()
    result.shards.append(ShardRecord(name, task.label, writer.count, writer.bytes, writer.sha256))
    result.samples += samples
    return position


def _would_overflow(writer: TarShardWriter, key: str, ext: str, size: int, limits: ShardLimits) -> bool:
    if writer.count >= limits.shard_count:
        return True
    extra = writer.member_bytes(f"{key}.{ext}", size) + writer.member_bytes(f"{key}.cls", 8)
    return writer.projected_size(extra) > limits.shard_size


def _skip_entry(item: Item, reason: str) -> dict:
    return {"id": item.id, "origin": item.origin, "reason": reason}
