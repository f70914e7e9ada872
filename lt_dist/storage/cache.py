"""NodeCache: one folder per node where remote objects are downloaded once and kept.

Layout (CACHE_DIR/NODE_ID is this node's cache; every rank and loader worker of
the node opens the same one):
    NODE/<url_key(parent URL)>/NAME            a finished object, complete and checked
    NODE/<...>/.NAME.lock                      flock'ed exclusive while downloading
    NODE/<...>/.NAME.pin                       flock'ed shared while pinned (in a look-ahead
                                               window); eviction tries it exclusive, never waits
(Two lock files: with one, a process waiting to download an object another process
has just fetched and pinned would wait for the pin, and two such processes can wait
on each other's pins for ever.)
    NODE/<...>/.NAME.part-PID-TID              the download in progress (never read)
    NODE/<...>/.NAME.reserve-PID-TID           sparse file as long as the object: counts
                                               the download against the limit while it runs
    NODE/<...>/.NAME.keep                      never evicted (a split's index files)
    NODE/.cache.lock                           flock'ed while space is made
A download goes to the .part file, is checked (size, sha256), then renamed: no
reader ever sees a partial object under its name. The first process to take the
exclusive lock downloads; the others wait on the lock and find the file there.
When the limit would be passed, finished objects are evicted oldest-used first
(a hit refreshes the file's mtime), skipping kept and pinned ones.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
from dataclasses import dataclass

from lt_dist.errors import UserInputError
from lt_dist.storage.remote import RemoteStore
from lt_dist.storage.retry import RemoteError
from lt_dist.storage.settings import StorageSettings
from lt_dist.storage.urls import split_url, url_key
from lt_dist.files import file_sha256


@dataclass
class CacheCounters:
    """What this process's NodeCache did (other processes keep their own)."""

    hits: int = 0  # get() found the object already there
    downloads: int = 0  # objects this process downloaded
    bytes_fetched: int = 0  # their bytes (a re-fetch after a sha256 mismatch counts twice)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    return True


class NodeCache:
    """Download-once, size-capped cache of remote objects on this node.

    get(url, size, sha256) -> local path of the complete object (downloads if absent)
    pin(url) / unpin(token)  -> keep an object from eviction while a window needs it
    contains(url), local_path(url), folder(url), usage(), counters
    """

    def __init__(self, settings: StorageSettings, store: RemoteStore | None = None):
        node = "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.node_id) or "node"
        self.root = os.path.join(settings.cache_dir, node)
        self.limit = settings.cache_limit
        self.store = store or RemoteStore(settings)
        self.counters = CacheCounters()
        self._counter_lock = threading.Lock()
        os.makedirs(self.root, exist_ok=True)

    def folder(self, parent_url: str) -> str:
        """Local folder holding the objects directly under `parent_url`."""
        return os.path.join(self.root, url_key(parent_url))

    def local_path(self, url: str) -> str:
        """Where the object at `url` lives once cached (it may not be there yet)."""
        parent, name = split_url(url)
        return os.path.join(self.folder(parent), name)

    def contains(self, url: str) -> bool:
        """True when the complete object is in the cache now."""
        return os.path.isfile(self.local_path(url))

    def get(self, url: str, size: int | None = None, sha256: str | None = None, keep: bool = False) -> str:
        """Local path of the complete object at `url`, downloading it if this node has
        not yet; `size`/`sha256` (when given) are checked before the object becomes
        visible. A mismatch is fetched once more, then raises RemoteError naming `url`.
        keep=True exempts the object from eviction."""
        path = self.local_path(url)
        if self._hit(path):
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _Flock(_lock_path(path), fcntl.LOCK_EX):
            if self._hit(path):  # another process or thread downloaded it while we waited
                return path
            self._download(url, path, size, sha256)
            if keep:
                open(_marker(path, "keep"), "w").close()
        return path

    def _hit(self, path: str) -> bool:
        try:
            os.utime(path)  # the LRU clock: eviction takes the oldest mtime first
        except FileNotFoundError:
            return False
        with self._counter_lock:
            self.counters.hits += 1
        return True

    def _download(self, url: str, path: str, size: int | None, sha256: str | None) -> None:
        tag = f"{os.getpid()}-{threading.get_ident()}"
        part, reserve = _marker(path, f"part-{tag}"), _marker(path, f"reserve-{tag}")
        expected = size
        if expected is None and self.limit is not None:  # the limit needs the size before the download
            expected = self.store.size(url)
        self._reserve(reserve, expected or 0)
        try:
            for attempt in (1, 2):
                fetched = self.store.download(url, part)
                with self._counter_lock:
                    self.counters.downloads += 1
                    self.counters.bytes_fetched += fetched
                problem = _mismatch(part, fetched, size, sha256)
                if problem is None:
                    os.replace(part, path)
                    return
                if attempt == 2:
                    raise RemoteError(f"{url}: {problem} after a second download; the remote object "
                                      f"differs from shards.parquet (run `lt_dist verify`)")
        finally:
            for leftover in (part, reserve):
                if os.path.exists(leftover):
                    os.remove(leftover)

    def _reserve(self, reserve: str, size: int) -> None:
        """Make room for `size` more bytes (evicting LRU objects), then hold it with a
        sparse file of that length until the download ends."""
        with _Flock(os.path.join(self.root, ".cache.lock"), fcntl.LOCK_EX):
            if self.limit is not None:
                self._evict_for(size)
            with open(reserve, "wb") as handle:
                handle.truncate(size)

    def _evict_for(self, size: int) -> None:
        objects, used = self._scan()
        held = 0
        for mtime, nbytes, path in sorted(objects):
            if used + size <= self.limit:
                return
            if os.path.exists(_marker(path, "keep")) or not _try_remove(path):
                held += nbytes  # kept or pinned: needed now
                continue
            used -= nbytes
        if used + size > self.limit:
            raise UserInputError(
                f"--cache-limit {self.limit} bytes is too small: {used} bytes are held by files in use "
                f"and the next object needs {size}; the smallest limit that works here is {used + size} "
                f"bytes (a limit must hold every shard of the look-ahead window)")

    def _scan(self) -> tuple[list[tuple[float, int, str]], int]:
        """(mtime, bytes, path) of every finished object, and the bytes held in all
        (objects + running downloads' reservations). Leftovers of dead processes go."""
        objects, used = [], 0
        for folder in os.scandir(self.root):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder.path):
                # A download that ends removes its reservation outside the lock (its bytes are the
                # object's now): a file listed here may be gone by its stat, and then counts nothing.
                name = entry.name
                try:
                    if not name.startswith("."):
                        stat = entry.stat()
                        objects.append((stat.st_mtime, stat.st_size, entry.path))
                        used += stat.st_size
                    elif ".reserve-" in name or ".part-" in name:
                        pid = int(name.rsplit("-", 2)[-2])
                        if not _pid_alive(pid):
                            _quiet_remove(entry.path)
                        elif ".reserve-" in name:
                            used += entry.stat().st_size
                except FileNotFoundError:
                    continue
        return objects, used

    def usage(self) -> int:
        """Bytes this node's cache holds now (finished objects and reservations)."""
        return self._scan()[1]

    def pin(self, url: str) -> int | None:
        """Keep the cached object at `url` from eviction until unpin(token); None when
        the object is not cached (fetch it with get() first)."""
        path = self.local_path(url)
        fd = os.open(_marker(path, "pin"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not os.path.isfile(path):  # evicted between get() and pin(): not held
            os.close(fd)
            return None
        return fd

    @staticmethod
    def unpin(token: int | None) -> None:
        """Release a pin()."""
        if token is not None:
            os.close(token)  # closing drops the flock


class _Flock:
    """flock on a lock file for the duration of a with-block."""

    def __init__(self, path: str, mode: int):
        self.path, self.mode = path, mode

    def __enter__(self) -> "_Flock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, self.mode)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _marker(path: str, suffix: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{suffix}")


def _lock_path(path: str) -> str:
    return _marker(path, "lock")


def _try_remove(path: str) -> bool:
    """Remove an unpinned object: True when it was removed, False when someone holds it."""
    fd = os.open(_marker(path, "pin"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        _quiet_remove(path)  # open descriptors keep reading the unlinked data (POSIX)
        return True
    finally:
        os.close(fd)


def _quiet_remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _mismatch(path: str, fetched: int, size: int | None, sha256: str | None) -> str | None:
    if size is not None and fetched != size:
        return f"{fetched} bytes downloaded, shards.parquet says {size}"
    if sha256 is not None and file_sha256(path) != sha256:
        return "sha256 does not match shards.parquet"
    return None
