"""The output split folder of a pack: its name, its lock, and which files are lt-dist's.

A pack writes only into OUT/<split>, and only files it can recognise again:
    cls<label>-<index>.tar          finished shards (format.shard_name)
    manifest.parquet, shards.parquet, dataset.json, ids.txt, .pack-plan.json
    .<any of the above>.tmp-<pid>    and <any of the above>.tmp-<pid>: files being written
    .lt-dist.lock                    the writer's lock (holds its pid and host)
`--overwrite` deletes exactly these and refuses a folder that holds anything else, so
a mistyped --out or --split can never take a user's own files with it.

The lock is an flock(2) on .lt-dist.lock: the kernel drops it when its process dies,
however it dies, so a lock left by a killed pack is stale by construction and the
next pack takes it over; a live holder makes a second writer stop with a message.
"""
from __future__ import annotations

import fcntl
import os
import re
import socket

from lt_dist.errors import UserInputError
from lt_dist.shards.format import parse_shard_name
from lt_dist.shards.manifest import DATASET_JSON, IDS_LIST, MANIFEST, PLAN_FILE, SHARD_TABLE

LOCK_FILE = ".lt-dist.lock"
INDEX_FILES = (MANIFEST, SHARD_TABLE, DATASET_JSON, IDS_LIST, PLAN_FILE)
# One plain path component: no separators, no leading dot (so never "." or ".."), not empty.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
_TEMP_SUFFIX = re.compile(r"\.tmp-\d+$")


def check_split_name(name: str) -> str:
    """The split name if it is one plain path component; UserInputError naming it if not."""
    if not _SPLIT_NAME.fullmatch(name):
        raise UserInputError(f"--split {name!r} is not a split name: use 1-100 letters, digits, '_', "
                             f"'-' or '.', not starting with '.' (one folder name, no path)")
    return name


def is_own_file(name: str) -> bool:
    """True for a file name that a pack writes (finished, temporary, index or lock)."""
    base = _TEMP_SUFFIX.sub("", name)
    if base in INDEX_FILES or base == LOCK_FILE:
        return True
    if base != name and base.startswith("."):  # shard temp files are ".cls...tar.tmp-PID"
        base = base[1:]
    return parse_shard_name(base) is not None


def foreign_entries(split_dir: str) -> list[str]:
    """Names in split_dir that lt-dist did not write (sub-folders count as foreign)."""
    return sorted(entry.name for entry in os.scandir(split_dir)
                  if not (entry.is_file(follow_symlinks=False) and is_own_file(entry.name)))


def remove_own_files(split_dir: str) -> int:
    """--overwrite: delete lt-dist's files in split_dir (not the lock); returns how many.

    Refuses, deleting nothing, when the folder also holds files lt-dist did not write.
    """
    foreign = foreign_entries(split_dir)
    if foreign:
        raise UserInputError(f"output folder {split_dir!r} holds files lt-dist did not "
                             f"write ({len(foreign)}, first: {foreign[0]!r}); --overwrite deletes only lt-dist's own "
                             f"files, so choose another --out or --split")
    # The manifest goes first: from then on the folder reads as unfinished, never as finished.
    names = sorted((n for n in os.listdir(split_dir) if n != LOCK_FILE), key=lambda n: n != MANIFEST)
    for name in names:
        os.remove(os.path.join(split_dir, name))
    return len(names)


class SplitLock:
    """Exclusive writer lock on one output split folder (a context manager).

    Entering creates split_dir if needed and takes the lock without waiting: when
    another live process holds it, UserInputError names that process.
    """

    def __init__(self, split_dir: str):
        self.split_dir = split_dir
        self.path = os.path.join(split_dir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> "SplitLock":
        if os.path.exists(self.split_dir) and not os.path.isdir(self.split_dir):
            raise UserInputError(f"output {self.split_dir!r} is a file, not a folder")
        os.makedirs(self.split_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserInputError(f"output folder {self.split_dir!r} is being written by {holder}; "
                                 f"wait for it to finish or stop it, then run again") from None
        # A lock file left by a dead process is simply unlocked: taking it over is safe.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"lt_dist pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays (removing it would race)
            self._fd = None
