"""Run logs on rank 0: one JSON object per line (log.jsonl) and TensorBoard events.

TensorBoard is optional: without the package (a bare GPU image) there is no tb/ and
one line says so; log.jsonl carries the same numbers.
"""
from __future__ import annotations

import json
import os
import time

from lt_dist.optional import installed


class RunLogger:
    """Writes log.jsonl and tb/ under the run folder; a no-op on ranks other than 0."""

    def __init__(self, run_dir: str, enabled: bool):
        self.enabled = enabled
        self._file = None
        self._writer = None
        if enabled:
            os.makedirs(run_dir, exist_ok=True)
            self._file = open(os.path.join(run_dir, "log.jsonl"), "a", encoding="utf-8")
            if installed("tensorboard"):
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(os.path.join(run_dir, "tb"))
            else:
                print("tensorboard is not installed: no tb/ events (log.jsonl has every number)")

    def log(self, kind: str, step: int, **values) -> None:
        """Append {"kind", "step", "time", **values}; numbers also go to TensorBoard as kind/name."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in values.items():
            if self._writer is not None and isinstance(value, (int, float)) and value == value:  # skip NaN
                self._writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._writer:
            self._writer.close()
