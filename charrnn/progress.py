"""The progress display on stderr while training: a tqdm bar (steps of the step limit with its ETA, or seconds of
the time budget) and a postfix with step, epoch, loss, val, lr and chars/s. Rank 0 alone shows it."""

from __future__ import annotations

import sys
import time
from typing import Optional


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
    def __init__(self, enabled: bool, total_steps: Optional[int], budget: Optional[float], initial_step: int = 0):
        from tqdm import tqdm

        self.by_steps = total_steps is not None
        self.bar = tqdm(
            total=total_steps if self.by_steps else (int(budget) if budget else None),
            initial=initial_step if self.by_steps else 0,
            unit="step" if self.by_steps else "s",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )
        self.enabled = enabled

    def update(self, step: int, epoch: int, elapsed: float, loss: Optional[float], val: Optional[float], lr: float,
               rate: float) -> None:
        if not self.enabled:
            return
        postfix = {"step": step, "epoch": epoch, "loss": f"{loss:.3f}" if loss is not None else "-"}
        if val is not None:
            postfix["val"] = f"{val:.3f}"
        postfix["lr"] = f"{lr:.2e}"
        postfix["chars/s"] = f"{rate:,.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        if self.by_steps:
            self.bar.update(1)
        else:
            self.bar.n = min(int(elapsed), self.bar.total or int(elapsed))
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
