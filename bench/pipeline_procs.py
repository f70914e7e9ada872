"""bench/pipeline.py's processes: the CPU they and the rest of the machine use, and its launches.

The machine load (the cores everything but this benchmark kept busy while a case ran),
the CPU seconds of a process tree from /proc, SIGTERM to the training ranks below a
launcher, and running a command with its output in a log file.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

try:
    from bench.common import busy_jiffies, own_cpu
except ImportError:  # run as a script: python bench/pipeline.py
    from common import busy_jiffies, own_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


# ---------------------------------------------------------------- machine load

def process_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """(parent pid -> child pids, pid -> CPU seconds) of every live process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))  # fields[1]: ppid
        times[int(name)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    return children, times


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    """pid and every live process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of process `pid` and its live descendants."""
    children, times = process_table()
    return sum(times.get(p, 0.0) for p in descendants(pid, children))


def signal_ranks(pid: int) -> int:
    """SIGTERM to the training ranks below launcher `pid`, as a scheduler pre-empting the job; how many.

    Only the ranks: their DataLoader workers are forks with the same command line, and a
    worker killed by a signal makes its rank fail instead of checkpointing.
    """
    children, _ = process_table()
    ranks = []
    for process in descendants(pid, children)[1:]:
        try:
            with open(f"/proc/{process}/cmdline", "rb") as handle:
                words = handle.read().split(b"\0")
        except OSError:
            continue
        if any(w.startswith(b"--local_rank") for w in words) and any(w.endswith(b"train_repr.py") for w in words):
            ranks.append(process)
    forks = {child for rank in ranks for child in children.get(rank, [])}
    for rank in ranks:
        if rank not in forks:
            os.kill(rank, signal.SIGTERM)
    return len(set(ranks) - forks)


class LoadMeter:
    """Cores the rest of the machine kept busy between start() and stop(), less `own` CPU seconds."""

    def start(self) -> None:
        """Begin a measurement: the machine's busy ticks and the clock now."""
        self.busy, self.started = busy_jiffies(), time.perf_counter()

    def stop(self, own_seconds: float) -> float:
        """Cores the rest of the machine kept busy since start(), given this benchmark's own CPU seconds."""
        elapsed = time.perf_counter() - self.started
        busy = (busy_jiffies() - self.busy) / os.sysconf("SC_CLK_TCK")
        return max(busy - own_seconds, 0.0) / max(elapsed, 1e-9)


# ---------------------------------------------------------------- launches

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the launcher's --master_port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env() -> dict:
    """The demo's environment: DeepSpeed on the CPU, its compiled ops cached, no OMP_NUM_THREADS (the plan)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["DS_ACCELERATOR"] = "cpu"
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))
    return env


def run_logged(command: list[str], log_path: str, what: str,
               stop_when: Callable[[], bool] | None = None) -> tuple[float, float, float, float | None]:
    """Run command (cwd REPO), output to log_path; (start, end, other load in cores, time signalled or None).

    stop_when(): checked twice a second; once True, the ranks below the command get SIGTERM.
    """
    meter = LoadMeter()
    meter.start()
    started, signalled = time.time(), None
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO, env=launch_env(), stdout=log, stderr=subprocess.STDOUT)
        own = 0.0
        while process.poll() is None:  # sample the tree's CPU (children vanish when they end)
            time.sleep(0.5)
            own = max(own, tree_cpu(process.pid))
            if signalled is None and stop_when is not None and stop_when() and signal_ranks(process.pid):
                signalled = time.time()
    ended = time.time()
    load = meter.stop(own)
    if process.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            tail = handle.read()[-3000:]
        raise SystemExit(f"{what} failed (exit {process.returncode}); the end of {log_path}:\n{tail}")
    return started, ended, load, signalled


def steps_logged(log_path: str) -> int:
    """The highest step of a train record in a run's log.jsonl so far (0 before the first)."""
    try:
        with open(log_path, encoding="utf-8") as handle:
            return max([json.loads(line)["step"] for line in handle if '"kind": "train"' in line] or [0])
    except (OSError, ValueError):
        return 0


def data_view(data: str, work: str, with_test: bool) -> str:
    """A dataset folder of --data's train and val (and test) splits, as symlinks."""
    if with_test:
        return data
    view = os.path.join(work, "data")
    os.makedirs(view)
    for split in ("train", "val"):
        os.symlink(os.path.abspath(os.path.join(data, split)), os.path.join(view, split))
    return view
