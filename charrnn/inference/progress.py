"""How far scoring a long text has got (`charrnn eval`, the validations), on stderr: a bar on a terminal, a line
every tenth elsewhere, once it has run for a couple of seconds; nothing on stdout."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class ScoreProgress:
    """How far scoring a text has got, on stderr: on a terminal a tqdm bar of characters, elsewhere a plain line at
    each tenth ("charrnn: scoring FILE: 30% (300,000 of 1,000,000 characters)"). Nothing for a text scored within
    `delay` seconds (a short file), nothing on stdout. A context manager; `update(chars)` takes the count so far."""

    def __init__(self, total: int, what: str, enabled: bool = True, delay: float = 2.0,
                 stream: Optional[TextIO] = None, terminal: Optional[bool] = None, clock=time.perf_counter):
        self.total, self.what, self.enabled, self.delay, self.clock = max(1, total), what, enabled, delay, clock
        self.stream = stream if stream is not None else sys.stderr
        if terminal is None:
            terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.terminal, self.bar, self.shown_tenths = terminal, None, 0
        self.started = clock()

    def __enter__(self) -> "ScoreProgress":
        if self.enabled and self.terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=f"scoring {self.what}", unit="char", unit_scale=True,
                            file=self.stream, delay=self.delay, dynamic_ncols=True, leave=False)
        return self

    def update(self, chars: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(chars - self.bar.n)
            return
        tenths = min(10, chars * 10 // self.total)
        if tenths > self.shown_tenths and self.clock() - self.started >= self.delay:
            self.shown_tenths = tenths
            self.stream.write(f"charrnn: scoring {self.what}: {tenths * 10}% ({chars:,} of {self.total:,} "
                              f"characters)\n")
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
