"""Benchmark reading a dataset by URL: local disk vs nginx on loopback, cold and warm cache.

Input: the loader benchmark's ~2,000 photo JPEGs (bench/common.photo_folder), packed
once. Every case is lt-dist's BalancedLoader with DALI on the CPU (imagenet_train
without jitter, 224 px), 2 loader workers, one epoch:

    local            the packed split on local disk
    http cold        Debian's nginx on 127.0.0.1, an empty cache (every shard downloaded)
    http warm        the same URL again: the cache holds the dataset
    http+20ms cold   through a proxy adding 20 ms to every request (an object store's
                     latency), an empty cache

for the instance- and class-balanced samplers. Requests and bytes come from nginx's
access log (GETs of the epoch; the index files are counted apart). Targets: warm >=
0.95x local, cold with 20 ms >= 0.8x local, bytes per epoch <= 1.05x the dataset.

    python bench/remote.py [--num-images 2000] [--batch-size 64] [--prefetch 8]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/servers.py: nginx helpers
try:
    from bench.common import markdown_table, photo_folder, write_results
    from bench.loader import ltdist_case, pack_photos
except ImportError:  # run as a script: python bench/remote.py
    from common import markdown_table, photo_folder, write_results
    from loader import ltdist_case, pack_photos
from servers import Nginx, free_port, nginx_binary  # noqa: E402

_LOG_LINE = re.compile(r'"GET (\S+) HTTP/[\d.]+" (\d{3}) (\d+)')


class DelayProxy:
    """TCP proxy on 127.0.0.1 that holds each request 20 ms before passing it on."""

    def __init__(self, upstream_port: int, delay_s: float):
        self.upstream, self.delay = upstream_port, delay_s
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(1 << 16):
                if delay:
                    time.sleep(delay)  # one recv is one request here (small GETs)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def log_totals(log: Path, start_line: int) -> tuple[int, int, int]:
    """(shard GETs, their bytes, index-file GETs) logged after line start_line."""
    shards = nbytes = index = 0
    for line in log.read_text().splitlines()[start_line:]:
        match = _LOG_LINE.search(line)
        if not match:
            continue
        if match.group(1).endswith(".tar"):
            shards, nbytes = shards + 1, nbytes + int(match.group(3))
        else:
            index += 1
    return shards, nbytes, index


def run_case(split: str, args, cache_dir: str | None, log: Path | None) -> dict:
    """One epoch of the loader on `split` (a path or URL); numbers from measure() and the log."""
    from lt_dist.shards.manifest import resolve_split

    if cache_dir:
        os.environ["LT_DIST_CACHE"] = cache_dir
    start = len(log.read_text().splitlines()) if log and log.exists() else 0
    split_dir = resolve_split(split)
    result = ltdist_case(split_dir, args.batch_size, "dali", args.strategy, 2, False, 1, args.warmup_batches)()
    result["requests"], result["bytes"], result["index_requests"] = log_totals(log, start) if log else (0, 0, 0)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup-batches", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=8, help="batches fetched ahead per worker")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    if nginx_binary() is None:
        sys.exit("bench/remote.py needs Debian's nginx (make nginx, as root)")
    os.environ["LT_DIST_PREFETCH"] = str(args.prefetch)
    split_dir = pack_photos(photo_folder(args.num_images))
    dataset_bytes = sum(f.stat().st_size for f in Path(split_dir).glob("*.tar"))
    work = Path(tempfile.mkdtemp(prefix="lt-bench-remote-"))
    work.chmod(0o755)
    shutil.copytree(os.path.dirname(split_dir), work / "www" / "photos")
    server = Nginx(work / "www", work / "nginx").start()
    proxy = DelayProxy(server.port, args.delay_ms / 1e3)
    rows, records = [], []
    try:
        url = f"{server.url}/photos/train"
        slow_url = f"http://127.0.0.1:{proxy.port}/photos/train"
        for strategy in ("instance", "class"):
            args.strategy = strategy
            cases = [("local", split_dir, None), ("http cold", url, str(work / f"cache-{strategy}")),
                     ("http warm", url, str(work / f"cache-{strategy}")),
                     (f"http+{args.delay_ms:g}ms cold", slow_url, str(work / f"cache-slow-{strategy}"))]
            local = None
            for name, split, cache in cases:
                result = run_case(split, args, cache, server.access_log if cache else None)
                local = local or result["rate"]
                records.append({"strategy": strategy, "case": name, **result})
                rows.append([strategy, name, round(result["rate"], 1), round(result["rate"] / local, 2),
                             result["requests"], round(result["bytes"] / dataset_bytes, 3)])
    finally:
        proxy.close()
        server.stop()
    table = markdown_table(["sampler", "source", "images/s", "x of local", "shard GETs", "bytes / dataset"], rows)
    print(table)
    path = write_results("remote", {"settings": vars(args), "dataset_bytes": dataset_bytes, "cases": records,
                                    "table": table})
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
