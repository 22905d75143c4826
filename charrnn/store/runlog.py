"""A run directory's logs: one kind of log, of which metrics.jsonl (rows as charrnn.store.metrics reads them: one
JSON object a line) and samples.txt (training/samplelog.py: entries under a `--- step N ... ---` line) are two
instances. A log appends and flushes each entry. On resume, the entries past the checkpoint's step are dropped first
(they were written after it; so are lines cut short by a kill), atomically, so the log of a resumed run equals that
of an uninterrupted one. Only rank 0 writes. A failed write is a user error (disk full: exit 74); under
torch.distributed it is held (`failure`) and raised on every rank at the next save, so no rank is left in a
collective.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

from . import fileio
from ..errors import CharrnnError, unreadable
from .metrics import METRICS, rows

Entries = Callable[[str], list]  # a log's text -> [(step or None for a damaged entry, the entry's text), ...]


class RunLog:
    """An append-only log RUN_DIR/NAME of entries that each belong to a step. `keep_open`: the file is opened by
    `open` and held (a log written every few steps); else it is opened at each entry and created at the first."""

    def __init__(self, run_dir: str, name: str, what: str, entries: Entries, enabled: bool = True,
                 hold_failures: bool = False, keep_open: bool = False):
        self.path, self.what, self.entries = os.path.join(run_dir, name), what, entries
        self.enabled, self.hold_failures, self.keep_open = enabled, hold_failures, keep_open
        self.failure: Optional[CharrnnError] = None  # a held write failure (distributed runs)
        self._file = None

    def open(self, keep_upto: int = 0):
        """Keep the entries up to step `keep_upto` (a resumed run's), then append."""
        if not self.enabled:
            return self
        truncate(self.path, keep_upto, self.entries, self.what)
        if self.keep_open:
            self._file = self._open()
        return self

    def _open(self):
        try:
            return open(self.path, "a", encoding="utf-8", newline="")
        except OSError as exc:
            raise fileio.write_error(exc, self.path, self.what) from None

    def append(self, text: str) -> None:
        if not self.enabled or self.failure is not None or (self.keep_open and self._file is None):
            return
        try:
            f = self._file if self.keep_open else self._open()
            try:
                f.write(text)
                f.flush()
            finally:
                if not self.keep_open:
                    f.close()
        except (OSError, CharrnnError) as exc:
            failure = exc if isinstance(exc, CharrnnError) else fileio.write_error(exc, self.path, self.what)
            if not self.hold_failures:
                raise failure from None
            self.failure = failure  # the other ranks learn of it at the next save

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the entries were flushed one by one; a close error loses nothing
            self._file = None


def truncate(path: str, step: int, entries: Entries, what: str) -> None:
    """Drop the entries past `step` (and damaged ones) from the log at `path`, atomically; nothing if it is not
    there."""
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            text = f.read()
    except OSError as exc:
        raise unreadable(exc, path, what) from None
    kept = "".join(entry for entry_step, entry in entries(text) if entry_step is not None and entry_step <= step)
    if kept != text:
        fileio.write_text(path, kept, what)


def jsonl_entries(text: str) -> list:
    """metrics.jsonl's lines as (step, line); a line that is no row (cut short by a kill) has step None."""
    out = []
    for line in text.split("\n"):
        if line:
            parsed = rows([line])
            out.append((parsed[0]["step"] if parsed else None, line + "\n"))
    return out


class MetricsLog(RunLog):
    def __init__(self, run_dir: str, enabled: bool = True, hold_failures: bool = False):
        super().__init__(run_dir, METRICS, "metrics file", jsonl_entries, enabled, hold_failures, keep_open=True)

    def row(self, row: dict) -> None:
        self.append(json.dumps(row) + "\n")


def truncate_metrics(path: str, step: int) -> None:
    """Drop metric rows past `step` (and lines cut short by a kill), atomically."""
    truncate(path, step, jsonl_entries, "metrics file")


def step_row(step: int, epoch: int, loss: Optional[float], lr: float, grad_norm, elapsed: float, rate: float) -> dict:
    """A training row of metrics.jsonl (`grad_norm` a tensor or a number: read here, at a log point)."""
    return {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
            "elapsed": round(elapsed, 3), "chars_per_sec": round(rate, 1)}
