"""The on-disk sample format and a tar writer that records where each member lands.

A sample in a shard is two tar members sharing a key (webdataset convention):
    <key>.<ext>   the encoded image, bytes as read from the source (or lossless PNG)
    <key>.cls     the label as decimal ASCII text
Every shard holds one class only; its name says which class and which of that
class's shards it is: cls00042-00003.tar.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from lt_dist.files import file_sha256  # noqa: F401  (shards.format.file_sha256 is the name callers use)
from dataclasses import dataclass

FORMAT_NAME = "lt-dist-shards"
FORMAT_VERSION = 1
TAR_BLOCK = 512
# tarfile pads a closed archive to a multiple of its record size (20 blocks).
TAR_RECORD = tarfile.RECORDSIZE
# Fixed member metadata makes the same input pack to byte-identical shards.
MEMBER_MTIME = 0
_SHARD_RE = re.compile(r"^cls(\d{5,})-(\d{5,})\.tar$")


@dataclass(frozen=True)
class SampleRecord:
    """One row of the manifest: where a sample's image member lives."""

    key: str  # webdataset __key__
    id: str  # the source's id (relative path, or "train/000123" for IDX)
    label: int
    shard: str  # shard file name, relative to the split folder
    offset: int  # byte offset of the image member's data inside the tar
    size: int  # byte length of the image data
    ext: str  # image extension: jpg, jpeg, png, ...
    width: int
    height: int


@dataclass(frozen=True)
class ShardRecord:
    """One row of the shard table."""

    path: str  # file name relative to the split folder
    label: int
    count: int  # samples in the shard
    bytes: int  # file size
    sha256: str


def shard_name(label: int, index: int) -> str:
    """File name of shard `index` (0-based) of class `label`."""
    return f"cls{label:05d}-{index:05d}.tar"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """(label, index) of a shard file name, or None when it is not one."""
    match = _SHARD_RE.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def make_key(sample_id: str) -> str:
    """webdataset key for a source id: the id without its extension.

    webdataset splits a member name at the first dot of its last path component,
    so remaining dots become underscores; spaces and backslashes are normalised too.
    """
    stem, _ = os.path.splitext(sample_id)
    stem = stem.replace("\\", "/").lstrip("./")
    head, _, base = stem.rpartition("/")
    base = base.replace(".", "_").replace(" ", "_")
    return f"{head}/{base}" if head else base


def padded(size: int) -> int:
    """Bytes a member's data occupies in a tar, padded to whole blocks."""
    return (size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK


class _HashingFile(io.RawIOBase):
    """Write-only file that hashes what passes through it (one pass, no re-read)."""

    def __init__(self, path: str):
        super().__init__()
        self._file = open(path, "wb")
        self._hash = hashlib.sha256()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._file.write(view)
        self._pos += len(view)
        return len(view)

    def tell(self) -> int:
        return self._pos

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        super().close()


class TarShardWriter:
    """Write one shard under a temporary name; `commit()` renames it into place.

    Used as a context manager: leaving the block without `commit()` (an exception)
    deletes the temporary file, so no finished-looking shard is ever half written.
    """

    def __init__(self, final_path: str):
        self.final_path = final_path
        folder, name = os.path.split(final_path)
        self.temp_path = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
        self._file = _HashingFile(self.temp_path)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.count = 0
        self.sha256 = ""
        self.bytes = 0

    def _member(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, MEMBER_MTIME, 0o644
        return info

    def member_bytes(self, name: str, size: int) -> int:
        """Bytes a member (header + padded data) would add to the archive."""
        info = self._member(name, size)
        header = info.tobuf(self._tar.format, self._tar.encoding, self._tar.errors)
        return len(header) + padded(size)

    def projected_size(self, extra: int = 0) -> int:
        """File size the archive would have if closed after `extra` more bytes."""
        end = self._tar.offset + extra + 2 * TAR_BLOCK
        return (end + TAR_RECORD - 1) // TAR_RECORD * TAR_RECORD

    def add(self, key: str, ext: str, data: bytes, label: int) -> tuple[int, int]:
        """Append one sample; returns (offset, size) of the image data in the tar."""
        self._tar.addfile(self._member(f"{key}.{ext}", len(data)), io.BytesIO(data))
        offset = self._tar.offset - padded(len(data))
        cls_text = str(label).encode("ascii")
        self._tar.addfile(self._member(f"{key}.cls", len(cls_text)), io.BytesIO(cls_text))
        self.count += 1
        return offset, len(data)

    def commit(self) -> None:
        """Close the archive, fsync it and rename it to its final name."""
        self._tar.close()
        self._file.close()
        self.sha256 = self._file.hexdigest()
        self.bytes = os.path.getsize(self.temp_path)
        os.replace(self.temp_path, self.final_path)

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if os.path.exists(self.temp_path):  # not committed: leave nothing behind
            self._file.close()
            os.remove(self.temp_path)
