"""NodeCache against a real nginx on 127.0.0.1: once per node, atomic, checked, LRU."""
import hashlib
import time
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from lt_dist.errors import UserInputError
from lt_dist.storage.cache import NodeCache
from lt_dist.storage.retry import RemoteError
from lt_dist.storage.settings import StorageSettings
from servers import Nginx, nginx_binary, served_folder

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed: `make test` installs "
                                "Debian's package nginx as root (apt-get install nginx)")
BLOB_SIZES = {"a.bin": 3000, "b.bin": 5000, "c.bin": 7000}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = served_folder()
    for index, (name, size) in enumerate(BLOB_SIZES.items()):
        (root / name).write_bytes(bytes((index * 7 + k) % 251 for k in range(size)))
    nginx = Nginx(root, tmp_path_factory.mktemp("nginx")).start()
    yield nginx
    nginx.stop()
    shutil.rmtree(root, ignore_errors=True)


def gets(server, name: str, expect: int | None = None) -> int:
    """GETs of /NAME in nginx's access log. nginx logs a request after sending the response, so a
    client can finish first: with `expect`, re-read for up to 10 s until the log reaches it."""
    deadline = time.monotonic() + (10.0 if expect is not None else 0.0)
    while True:
        count = sum(1 for method, path, _ in server.requests() if method == "GET" and path == f"/{name}")
        if expect is None or count >= expect or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def cache_at(folder: Path, limit=None, **kw) -> NodeCache:
    return NodeCache(StorageSettings(cache_dir=str(folder), cache_limit=limit, node_id="node-a", retries=2, **kw))


def digest(server, name: str) -> str:
    return hashlib.sha256((server.root / name).read_bytes()).hexdigest()


def test_get_downloads_once_then_hits_and_keeps_nothing_partial(server, tmp_path):
    cache = cache_at(tmp_path)
    before = gets(server, "a.bin")
    url = f"{server.url}/a.bin"
    path = cache.get(url, BLOB_SIZES["a.bin"], digest(server, "a.bin"))
    again = cache.get(url, BLOB_SIZES["a.bin"], digest(server, "a.bin"))
    assert path == again and Path(path).read_bytes() == (server.root / "a.bin").read_bytes()
    assert gets(server, "a.bin", expect=before + 1) == before + 1
    assert (cache.counters.downloads, cache.counters.hits, cache.counters.bytes_fetched) == (1, 1, 3000)
    assert path.startswith(str(tmp_path / "node-a"))  # keyed per node
    leftovers = [p.name for p in Path(path).parent.iterdir() if ".part-" in p.name or ".reserve-" in p.name]
    assert leftovers == []


def test_two_processes_on_one_node_download_each_object_once(server, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from lt_dist.storage.cache import NodeCache
        from lt_dist.storage.settings import StorageSettings
        cache = NodeCache(StorageSettings(cache_dir={str(tmp_path)!r}, node_id="node-b"))
        sys.stdin.readline()  # both processes start downloading together
        for name in ("a.bin", "b.bin", "c.bin"):
            cache.get("{server.url}/" + name)
        print(cache.counters.downloads)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = {name: gets(server, name) for name in BLOB_SIZES}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    downloads = [int(proc.communicate(timeout=300)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sum(downloads) == 3  # the other process waited on the lock and found the files
    assert {name: gets(server, name, expect=before[name] + 1) - before[name] for name in BLOB_SIZES} == {
        name: 1 for name in BLOB_SIZES}


def test_sha256_mismatch_is_fetched_twice_then_named_and_never_visible(server, tmp_path):
    cache = cache_at(tmp_path)
    before = gets(server, "b.bin")
    url = f"{server.url}/b.bin"
    with pytest.raises(RemoteError, match=r"b\.bin: sha256 does not match"):
        cache.get(url, BLOB_SIZES["b.bin"], "0" * 64)
    assert gets(server, "b.bin", expect=before + 2) == before + 2
    assert not cache.contains(url)
    assert not any(".part-" in p.name for p in Path(cache.local_path(url)).parent.iterdir())


def test_404_stops_at_once_naming_the_url(server, tmp_path):
    cache = cache_at(tmp_path)
    before = len(server.requests())
    with pytest.raises(FileNotFoundError, match=r"127\.0\.0\.1:\d+/nope\.bin: not found \(404\)"):
        cache.get(f"{server.url}/nope.bin")
    assert len(server.requests()) == before + 1  # no retries for a 404


def test_limit_evicts_least_recently_used_and_skips_pinned(server, tmp_path):
    cache = cache_at(tmp_path, limit=3000 + 5000 + 100)
    a, b, c = (f"{server.url}/{name}" for name in BLOB_SIZES)
    cache.get(a)
    cache.get(b)
    os.utime(cache.local_path(a), (1, 1))  # a is the least recently used
    os.utime(cache.local_path(b), (2, 2))
    token = cache.pin(a)  # ...but pinned: b goes instead
    with pytest.raises(UserInputError, match="smallest limit that works here is 10000 bytes"):
        cache.get(c)  # a (pinned, 3000) + c (7000) exceed 8100
    assert cache.contains(a) and not cache.contains(b)
    cache.unpin(token)
    cache.get(c)  # a is free now: evicted for c
    assert not cache.contains(a) and cache.contains(c) and cache.usage() == 7000


def test_a_reservation_that_ends_while_the_cache_is_scanned_counts_nothing(tmp_path, monkeypatch):
    # A download that finishes removes its reservation outside the cache lock, so another
    # process's scan can list the file and find it gone by its stat (seen in CI as a
    # FileNotFoundError out of a loader worker). Here the listing itself lets it vanish.
    cache = cache_at(tmp_path, limit=10_000)
    folder = Path(cache.root) / "http-x"
    folder.mkdir()
    (folder / "a.tar").write_bytes(b"x" * 100)
    reserve = folder / f".b.tar.reserve-{os.getpid()}-1"
    with open(reserve, "wb") as handle:
        handle.truncate(500)
    assert cache.usage() == 600  # a live process's reservation counts
    real_scandir = os.scandir

    def listing_then_download_ends(path):
        entries = list(real_scandir(path))
        if reserve.exists() and any(e.name == reserve.name for e in entries):
            reserve.unlink()
        return iter(entries)

    monkeypatch.setattr("lt_dist.storage.cache.os.scandir", listing_then_download_ends)
    assert cache.usage() == 100
