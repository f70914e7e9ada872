"""Pre-emption: SIGTERM / SIGINT become a checkpoint at a step every rank agrees on.

Slurm and Kubernetes send SIGTERM some seconds before they kill a job; Ctrl-C sends
SIGINT. The handler only records the request. After each optimizer step every rank
all-reduces (max) its flag, so all ranks see the request at the same step even when
the signal reached them between different steps (or reached only some of them); they
then write one checkpoint together and leave the training loop with `Preempted`.

A watchdog started by the first signal bounds the time to exit: if the checkpoint is
not written within `grace_seconds` (a dead peer, a hung file system) the process
exits with EXIT_GRACE_EXCEEDED instead of waiting for the scheduler's SIGKILL.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType

import torch

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_GRACE_EXCEEDED = 128 + signal.SIGTERM  # what a shell reports for "killed by SIGTERM"
EXIT_INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for Ctrl-C


class Preempted(Exception):
    """Raised on every rank after the pre-emption checkpoint `tag` was committed."""

    def __init__(self, tag: str, step: int):
        super().__init__(f"pre-empted: checkpoint {tag} written at step {step}")
        self.tag, self.step = tag, step


class PreemptionWatch:
    """Records SIGTERM/SIGINT and tells every rank the same answer at each step.

    Use as a context manager around training: it installs the handlers on entry and
    restores the previous ones (and stops the watchdog) on exit.
    """

    def __init__(self, grace_seconds: float, signals: tuple[int, ...] = SIGNALS):
        if grace_seconds <= 0:
            raise ValueError(f"grace_seconds must be > 0, got {grace_seconds}")
        self.grace_seconds, self.signals = float(grace_seconds), signals
        self.received: int | None = None  # the first signal's number
        self.received_at: float | None = None  # time.monotonic() of the first signal
        self._previous: dict[int, object] = {}
        self._watchdog: threading.Timer | None = None

    def __enter__(self) -> "PreemptionWatch":
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: record, start the clock, nothing more.
        if self.received is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now, checkpoint or not
                print(f"interrupted again: exiting now without waiting for the checkpoint", file=sys.stderr,
                      flush=True)
                os._exit(EXIT_INTERRUPTED)
            return  # a repeated SIGTERM (launchers forward theirs) changes nothing: the watchdog bounds the wait
        self.received, self.received_at = signum, time.monotonic()
        self._watchdog = threading.Timer(self.grace_seconds, self._give_up)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _give_up(self) -> None:
        print(f"pre-emption: no checkpoint within --grace-seconds {self.grace_seconds:g}; exiting "
              f"with {EXIT_GRACE_EXCEEDED} (the previous checkpoint stays the newest)", file=sys.stderr, flush=True)
        os._exit(EXIT_GRACE_EXCEEDED)  # skips cleanup on purpose: a collective may be hung

    @property
    def requested(self) -> bool:
        """True once this process received one of the signals."""
        return self.received is not None

    @property
    def received_name(self) -> str:
        """"SIGTERM" / "SIGINT", or "a peer's signal" where only other ranks were signalled."""
        return signal.Signals(self.received).name if self.received is not None else "a peer's signal"

    def agreed(self, device: torch.device | str = "cpu") -> bool:
        """Collective: True on every rank when any rank received a signal (all-reduce max)."""
        import torch.distributed as dist

        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
