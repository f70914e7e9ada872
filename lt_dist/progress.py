"""Progress you can watch: a bar on a terminal, periodic one-line summaries in a log file.

    progress = Progress(total, "epoch 3", enabled=is_main, run_left=lambda done: ...)
    progress.update(1, loss=2.3, lr=0.1)   # per batch; values shown as they come
    progress.close()
On a terminal it is a tqdm bar with the values as postfix; elsewhere (a batch job's
log) one line every `every_s` seconds, so a long epoch is never silent. Off entirely
with enabled=False (--no-progress, non-main ranks).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def format_seconds(seconds: float) -> str:
    """12 -> "12s", 250 -> "4m10s", 7380 -> "2h03m"."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """Counts done out of `total` units; shows rate, ETA and the latest values."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, unit: str = "batch", every_s: float = 30.0,
                 stream: TextIO | None = None, extra_left_s: Callable[[float], float] | None = None,
                 clock: Callable[[], float] = time.monotonic, terminal: bool | None = None):
        """extra_left_s(seconds_per_unit) -> seconds of work after this one (the rest of the run), for its ETA."""
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.extra_left_s, self._clock = enabled and total > 0, extra_left_s, clock
        self.done, self.values = 0, {}
        self._started = self._last_line = clock()
        is_terminal = terminal if terminal is not None else getattr(self.stream, "isatty", lambda: False)()
        self._bar = None
        if self.enabled and is_terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False)

    def _summary(self) -> str:
        elapsed = self._clock() - self._started
        per_unit = elapsed / self.done if self.done else 0.0
        left = per_unit * (self.total - self.done)
        parts = [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                 for key, value in self.values.items()]
        parts.append(f"ETA {format_seconds(left)}")
        if self.extra_left_s is not None and self.done:
            parts.append(f"run ETA {format_seconds(left + self.extra_left_s(per_unit))}")
        return ", ".join(parts)

    def update(self, n: int = 1, **values) -> None:
        """n more units done; values (loss, lr, images_per_s ...) replace the shown ones."""
        self.done += n
        self.values.update(values)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if values:
                self._bar.set_postfix_str(self._summary())  # values come on log steps only: cheap
            return
        now = self._clock()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}, {self._summary()}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        """Remove the bar (the caller prints the summary line)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
