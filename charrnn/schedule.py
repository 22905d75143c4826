"""When a run stops and how its learning rate moves: the stop rule (steps, epochs, time budget: one place) and the
schedule (linear warm-up, then cosine decay by progress, which is steps over the horizon or time over the budget,
whichever is further along, so a 5-minute run still ends at its low learning rate)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

DEFAULT_EPOCHS = 10.0  # when no stop is given at all


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
        total, epochs = cfg.max_steps, cfg.epochs
        if cfg.max_steps is None and cfg.epochs is None and cfg.time_budget is None:
            epochs = DEFAULT_EPOCHS
        if epochs is not None:
            by_epochs = max(1, math.ceil(epochs * batches_per_epoch))
            total = by_epochs if total is None else min(total, by_epochs)
        return cls(total, cfg.time_budget, cfg.max_steps, cfg.schedule_steps or total)

    def reason(self, step: int, elapsed: float) -> Optional[str]:
        """Why the run stops after `step` steps and `elapsed` seconds of training, or None to go on."""
        if self.total_steps is not None and step >= self.total_steps:
            return "max_steps" if self.max_steps and step >= self.max_steps else "epochs"
        if self.budget is not None and elapsed >= self.budget:
            return "time_budget"
        return None

    def progress(self, step: int, elapsed: float) -> float:
        """How far along the schedule is, 0 -> 1: the further of step/horizon and elapsed/budget."""
        p = 0.0
        if self.horizon:
            p = max(p, step / self.horizon)
        if self.budget:
            p = max(p, elapsed / self.budget)
        return p
