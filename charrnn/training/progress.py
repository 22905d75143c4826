"""The progress display on stderr while training. Rank 0 alone shows it.

On a terminal: a bar (steps of the step limit, or elapsed of the time budget) and beside it the run's own reading,
like its summary: step (of the limit), elapsed (of the budget), chars/s, val, loss, epoch, lr; no tqdm clocks or rates; messages (the charrnn logger's lines, samples) are written above the bar
through tqdm, so they never land on a bar frame. Off a terminal (a file, a pipe): no bar frames at all, but one
plain line every --log-every steps (step, epoch, loss, val, lr, chars/s, elapsed) and each message on its own line.
Validations say what they are scoring while they run (charrnn.inference.progress shows how far scoring has got).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Optional, TextIO

from ..store.units import duration

# off a terminal, validations of at least this many characters are announced on a line of their own (with the
# defaults, tiny-shakespeare's 55,770 are; a 30,000-character corpus's 1,667, scored every 14 steps, are not)
ANNOUNCED_CHARS = 50_000


class RateMeter:
    """Characters per second over the last second or more (host time: no GPU sync)."""

    def __init__(self, chars_per_step: int, clock=time.perf_counter):
        self.chars_per_step, self.clock = chars_per_step, clock
        self.rate, self._t0, self._steps = 0.0, clock(), 0

    def tick(self) -> float:
        self._steps += 1
        now = self.clock()
        if now - self._t0 >= 1.0:
            self.rate = self._steps * self.chars_per_step / (now - self._t0)
            self._t0, self._steps = now, 0
        return self.rate


class ProgressDisplay:
    """`terminal` (default: whether `stream` is one) chooses the bar or the plain lines."""

    def __init__(self, enabled: bool, total_steps: Optional[int], budget: Optional[float], initial_step: int = 0,
                 log_every: int = 10, stream: Optional[TextIO] = None, terminal: Optional[bool] = None):
        from tqdm import tqdm

        self.stream = stream if stream is not None else sys.stderr
        if terminal is None:
            terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled, self.terminal, self.log_every = enabled, terminal, max(1, log_every)
        self.by_steps, self.total_steps, self.budget = total_steps is not None, total_steps, budget
        # the bar shows how far the run is (steps of the step limit, or elapsed of the budget); the text after it
        # is the run's own reading (self.status): one clock, the run's, and no tqdm rates or ETAs
        self.bar = tqdm(
            total=total_steps if self.by_steps else (int(budget) if budget else None),
            initial=initial_step if self.by_steps else 0,
            disable=not (enabled and terminal),
            file=self.stream,
            dynamic_ncols=True,
            leave=True,
            bar_format="{percentage:3.0f}%|{bar}| {desc}" if (total_steps or budget) else "{desc}",
        )
        self._status, self._doing = "", ""  # the run's reading and what it is doing now (a validation)
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []
        if self.showing_bar:
            self._log_above_the_bar()

    def _log_above_the_bar(self) -> None:
        """While the bar shows, the charrnn logger's handlers that write to the bar's stream write through the bar
        (tqdm.write clears the frame, writes the line, redraws the bar) instead of onto its current frame."""
        logger = logging.getLogger("charrnn")
        for i, handler in enumerate(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is self.stream:
                above = _AboveTheBar(self, handler)
                logger.handlers[i] = above
                self._swapped.append((above, handler))

    @property
    def showing_bar(self) -> bool:
        return self.enabled and self.terminal

    def update(self, step: int, epoch: int, elapsed: float, loss: Optional[float], val: Optional[float], lr: float,
               rate: float) -> None:
        if not self.enabled:
            return
        if not self.terminal:
            if step % self.log_every == 0:
                self.message(self.line(step, epoch, elapsed, loss, val, lr, rate))
            return
        self._status = self.status(step, epoch, elapsed, loss, val, lr, rate)
        self._describe(refresh=False)
        if self.by_steps:
            self.bar.update(step - self.bar.n)
        else:
            self.bar.n = min(int(elapsed), self.bar.total or int(elapsed))
            self.bar.refresh()

    def status(self, step: int, epoch: int, elapsed: float, loss: Optional[float], val: Optional[float], lr: float,
               rate: float) -> str:
        """The text beside the bar, read like the run's summary: step (of the limit), elapsed (of the budget),
        chars/s, the last validation loss, then loss, epoch and lr."""
        of = f" of {self.total_steps:,}" if self.by_steps else ""
        parts = [f"step {step:,}{of}", f"{duration(elapsed)}" + (f" of {duration(self.budget)}" if self.budget else ""),
                 f"{rate:,.0f} chars/s" if rate > 0 else "- chars/s", f"val {val:.3f}" if val is not None else "val -",
                 f"loss {loss:.3f}" if loss is not None else "loss -", f"epoch {epoch}", f"lr {lr:.1e}"]
        return "  ".join(parts)

    def line(self, step: int, epoch: int, elapsed: float, loss: Optional[float], val: Optional[float], lr: float,
             rate: float) -> str:
        """One plain progress line (the form used off a terminal)."""
        of = f"/{self.total_steps}" if self.by_steps else ""
        parts = [f"step {step}{of}", f"epoch {epoch}", f"loss {loss:.3f}" if loss is not None else "loss -"]
        if val is not None:
            parts.append(f"val {val:.3f}")
        parts += [f"lr {lr:.2e}", f"{rate:,.0f} chars/s" if rate > 0 else "- chars/s",  # measured after 1 s
                  f"elapsed {duration(elapsed)}" + (f" of {duration(self.budget)}" if self.budget else "")]
        return "  ".join(parts)

    def message(self, text: str) -> None:
        """A message on its own line(s): above the bar on a terminal, as it is elsewhere."""
        if not self.enabled:
            return
        if self.showing_bar:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    @contextlib.contextmanager
    def validating(self, chars: int, final: bool = False, of: Optional[int] = None):
        """Around a validation of `chars` characters (of the split's `of`, when it scores a slice): the bar's
        description says so (on a terminal), or a line does (elsewhere: the final one, and those of at least
        ANNOUNCED_CHARS, which take a moment; a short corpus's, frequent and quick, would only crowd the log)."""
        whole = of is None or of <= chars
        what = f"{'final ' if final else ''}validation on {chars:,}{'' if whole else f' of {of:,}'} characters"
        if self.showing_bar:
            self._doing = what
            self._describe(refresh=True)
        elif final or chars >= ANNOUNCED_CHARS:
            self.message(f"{what} ...")
        try:
            yield
        finally:
            if self.showing_bar:
                self._doing = ""
                self._describe(refresh=False)

    def _describe(self, refresh: bool) -> None:
        text = "  ".join(part for part in (self._status, self._doing and f"({self._doing})") if part)
        self.bar.set_description_str(text, refresh=refresh)

    def close(self) -> None:
        self.bar.close()
        logger = logging.getLogger("charrnn")
        for above, handler in self._swapped:
            if above in logger.handlers:
                logger.handlers[logger.handlers.index(above)] = handler
        self._swapped.clear()


class _AboveTheBar(logging.Handler):
    """A console handler's stand-in while a bar shows: the same level, filters and format, written above the bar."""

    def __init__(self, display: ProgressDisplay, like: logging.Handler):
        super().__init__(like.level)
        self.display, self.filters = display, list(like.filters)
        self.setFormatter(like.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.display.message(self.format(record))
        except Exception:  # noqa: BLE001 - logging's own policy: report, never raise
            self.handleError(record)
