"""Run logs on rank 0: one JSON object per line (log.jsonl) and TensorBoard events."""
from __future__ import annotations

import json
import os
import time


class RunLogger:
    """Writes log.jsonl and tb/ under the run folder; a no-op on ranks other than 0."""

    def __init__(self, run_dir: str, enabled: bool):
        self.enabled = enabled
        self._file = None
        self._writer = None
        if enabled:
            os.makedirs(run_dir, exist_ok=True)
            self._file = open(os.path.join(run_dir, "log.jsonl"), "a", encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(os.path.join(run_dir, "tb"))

    def log(self, kind: str, step: int, **values) -> None:
        """Append {"kind", "step", "time", **values}; numbers also go to TensorBoard as kind/name."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)) and value == value:  # skip NaN
                self._writer.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._writer.close()
