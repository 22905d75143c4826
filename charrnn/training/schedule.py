"""When a run stops and how its learning rate moves: the stop rule (steps, epochs, time budget: one place), what the
end of a time-budgeted run costs (EndCost), and the schedule (linear warm-up, then cosine decay by progress, which is
steps over the horizon or time over the budget, whichever is further along, so a 5-minute run still ends at its low
learning rate).

A time budget is wall time: the command (start-up, training, validations, saves, the final validation and save)
ends within it, give or take a step. The trainer counts its training time (`elapsed`: steps and the periodic
evaluations, across resumes: what checkpoints record) and hands the stop rule the `overhead` the budget must cover
besides: this command's start-up before its first step, and what the end still needs after the step just taken
(EndCost.seconds). A resumed run's budget counts the earlier sessions' training time and this command's wall time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..config import DEFAULT_EPOCHS, step_limit  # noqa: F401  (DEFAULT_EPOCHS re-exported)


def learning_rate(cfg, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr down to lr * min_lr_frac as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    cosine = cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr * warm * cosine


@dataclass(frozen=True)
class StopRule:
    """Stop at `total_steps` (from --max-steps and/or --epochs, the smaller) or when `budget` seconds of training
    are spent, whichever comes first. With no stop given, DEFAULT_EPOCHS epochs."""

    total_steps: Optional[int]
    budget: Optional[float]
    max_steps: Optional[int]
    horizon: Optional[int]  # the cosine's length in steps: --schedule-steps, else total_steps

    @classmethod
    def for_run(cls, cfg, batches_per_epoch: int) -> "StopRule":
        total = step_limit(cfg.max_steps, cfg.epochs, cfg.time_budget, batches_per_epoch)
        return cls(total, cfg.time_budget, cfg.max_steps, cfg.schedule_steps or total)

    def reason(self, step: int, elapsed: float, overhead: float = 0.0) -> Optional[str]:
        """Why the run stops after `step` steps and `elapsed` seconds of training, with `overhead` more seconds the
        budget must also cover (start-up, what the end needs), or None to go on."""
        if self.total_steps is not None and step >= self.total_steps:
            return "max_steps" if self.max_steps and step >= self.max_steps else "epochs"
        if self.budget is not None and elapsed + overhead >= self.budget:
            return "time_budget"
        return None

    def progress(self, step: int, elapsed: float, overhead: float = 0.0) -> float:
        """How far along the schedule is, 0 -> 1: the further of step/horizon and elapsed over the training time the
        budget leaves once `overhead` is paid."""
        p = 0.0
        if self.horizon:
            p = max(p, step / self.horizon)
        if self.budget:
            training = self.budget - overhead
            p = max(p, elapsed / training if training > 0 else 1.0)
        return p


# an evaluation scores a character about this much faster than a training step trains on one (a forward pass
# against forward, backward and update; measured on a 2-core CPU with bf16: 2.2x at 1x32, where fixed costs weigh
# most, 3.8x at 2x512): the guess until the run has timed an evaluation
EVAL_SPEEDUP = 3.0


class EndCost:
    """The seconds a time-budgeted run must still have after a step before it takes another: that step, then the
    final validation and save. Learned from the run's training clock (agreed across ranks, so every rank decides
    alike), under the conditions the run is in now (a machine that gets busier makes every step and the end slower):

    - a step: the slower of the latest step and the moving average of steps;
    - the end: what an evaluating iteration (validation, save, sample) added to a step, the slowest so far, or, if
      steps have slowed since, that evaluation in steps of its time times the step now (the end scales with them);
    - a margin for how much step times vary now (their moving mean deviation over their mean, times the end).

    Until an evaluation has been timed, it is guessed: the validation's characters at EVAL_SPEEDUP times the
    training speed, plus `save_guess` seconds."""

    def __init__(self, val_chars: int, chars_per_step: int, save_guess: float, elapsed: float = 0.0):
        self.val_chars, self.chars_per_step, self.save_guess = val_chars, max(1, chars_per_step), save_guess
        self.step_seconds: Optional[float] = None  # a training step (a moving average, from the second step on)
        self.latest_step: Optional[float] = None  # the latest step's seconds
        self.spread = 0.0  # the moving mean deviation of step times from step_seconds
        self.end_seconds: Optional[float] = None  # what an evaluating iteration adds (the slowest timed)
        self.end_steps = 0.0  # the same in steps of the time steps took then (the largest timed)
        self._last, self._busy, self._first = elapsed, None, True

    @classmethod
    def for_run(cls, val_chars: int, chars_per_step: int, parameters: int, ema: bool,
                elapsed: float = 0.0) -> "EndCost":
        """With a first guess at a save: the checkpoint's bytes (weights and at most two moments a weight, AdamW's;
        Muon keeps one, and --ema's averages) at 100 MB/s, plus a tenth of a second."""
        return cls(val_chars, chars_per_step, 0.1 + (12 + 4 * ema) * parameters / 100e6, elapsed)

    def busy(self, kind: str) -> None:
        """This iteration did more than a step: "eval" (a validation and a save) or "other" (a save or sample)."""
        if self._busy != "eval":
            self._busy = kind

    def observe(self, elapsed: float) -> None:
        """After each step, the training clock: the time since the last step is a step's, plus what the iteration
        before it did besides."""
        took, busy, first = elapsed - self._last, self._busy, self._first
        self._last, self._busy, self._first = elapsed, None, False
        if first:
            return  # a run's first step pays one-time costs (allocations, threads starting): not a step's time
        if busy is None:
            if self.step_seconds is not None:
                self.spread = 0.7 * self.spread + 0.3 * abs(took - self.step_seconds)
            self.step_seconds = took if self.step_seconds is None else 0.7 * self.step_seconds + 0.3 * took
            self.latest_step = took
        elif busy == "eval" and self.step_seconds is not None:
            # the slowest evaluation so far: on a loaded machine the final one may be slower than the last one
            extra = took - self.step_seconds
            self.end_seconds = max(self.end_seconds or 0.0, extra)
            self.end_steps = max(self.end_steps, extra / self.step_seconds if self.step_seconds > 0 else 0.0)

    def step_now(self) -> float:
        """A step's seconds under the conditions now: the slower of the latest and the moving average."""
        return max(self.step_seconds or 0.0, self.latest_step or 0.0)

    def seconds(self, twice: bool = False) -> float:
        """What to keep in hand: a step and the end; `twice`: an evaluation is due now, and after it, one more step
        must still leave room for the final one."""
        step = self.step_now()
        if self.end_seconds is None:
            end = self.val_chars * step / self.chars_per_step / EVAL_SPEEDUP + self.save_guess
        else:
            end = max(self.end_seconds, self.end_steps * step)
        if self.step_seconds:
            end *= 1.0 + self.spread / self.step_seconds  # steps vary this much now: so may the end
        return step + end * (2 if twice else 1)
