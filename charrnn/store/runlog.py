"""Writing a run's metrics.jsonl (rows as charrnn.store.metrics reads them): one JSON object a line, flushed each row.

On resume, rows past the checkpoint's step are dropped first (they were written after it), so the log of a resumed
run equals that of an uninterrupted one. Only rank 0 writes. A failed write is a user error (disk full: exit 74);
under torch.distributed it is held and raised on every rank at the next save, so no rank is left in a collective.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from . import fileio
from ..errors import CharrnnError, unreadable
from .metrics import METRICS, rows


class MetricsLog:
    def __init__(self, run_dir: str, enabled: bool = True, hold_failures: bool = False):
        self.path = os.path.join(run_dir, METRICS)
        self.enabled, self.hold_failures = enabled, hold_failures
        self.failure: Optional[CharrnnError] = None  # a held write failure (distributed runs)
        self._file = None

    def open(self, keep_upto: int = 0) -> "MetricsLog":
        """Keep the rows up to step `keep_upto`, then append."""
        if not self.enabled:
            return self
        truncate_metrics(self.path, keep_upto)
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise fileio.write_error(exc, self.path, "metrics file") from None
        return self

    def row(self, row: dict) -> None:
        if self._file is None or self.failure is not None:
            return
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as exc:
            failure = fileio.write_error(exc, self.path, "metrics file")
            if not self.hold_failures:
                raise failure from None
            self.failure = failure  # the other ranks learn of it at the next save

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the rows were flushed one by one; a close error loses nothing
            self._file = None


def truncate_metrics(path: str, step: int) -> None:
    """Drop metric rows past `step` (and lines cut short by a kill), atomically."""
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            kept = [json.dumps(row) + "\n" for row in rows(f) if row["step"] <= step]
    except OSError as exc:
        raise unreadable(exc, path, "metrics file") from None
    fileio.write_text(path, "".join(kept), "metrics file")


def step_row(step: int, epoch: int, loss: Optional[float], lr: float, grad_norm, elapsed: float, rate: float) -> dict:
    """A training row of metrics.jsonl (`grad_norm` a tensor or a number: read here, at a log point)."""
    return {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
            "elapsed": round(elapsed, 3), "chars_per_sec": round(rate, 1)}
