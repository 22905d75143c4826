"""Validation while training: at each evaluation point the weights a user gets (--ema's averages, else as trained)
score --val-chars of the validation split (the same windows each time), in fp32, each rank its share; the best and
latest scores are kept for checkpoints, the summary and samples."""

from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger("charrnn")


class Validation:
    def __init__(self, run, hooks, best: Optional[float] = None):
        self.val, self.cfg, self.dist, self.device, self.hooks = run.splits.val, run.cfg, run.dist, run.device, hooks
        self.best: Optional[float] = best
        self.last: Optional[float] = None
        self.last_step: Optional[int] = None
        self.history: list = []

    def scored_chars(self) -> int:
        """The characters each evaluation scores (0 without a validation split)."""
        from ..inference.evaluation import scored_chars

        return scored_chars(len(self.val), self.cfg.batch_size, self.cfg.val_chars) if len(self.val) >= 2 else 0

    def say_what_it_scores(self) -> None:
        split = len(self.val) - 1  # every character but the first is predicted
        chars = self.scored_chars()
        if 0 < chars < split:
            log.info(f"validation: {chars:,} of the split's {split:,} characters at each evaluation, in evenly spaced "
                     f"windows (--val-chars)")

    def score(self, trainer, display, final: bool) -> Optional[float]:
        """Mean nats/char, summed across ranks; None without a validation split."""
        from ..inference.evaluation import score_ids

        if len(self.val) < 2:
            return None
        self.hooks.validating(trainer)
        model = trainer.steps.model
        compute_dtype, model.compute_dtype = model.compute_dtype, None
        try:
            with trainer.steps.averaged(), display.validating(self.scored_chars(), final=final, of=len(self.val) - 1):
                score = score_ids(model, self.val, streams=self.cfg.batch_size, chunk=self.cfg.seq_len,
                                  device=self.device, rank=self.dist.rank, world=self.dist.world,
                                  limit=self.cfg.val_chars)
        finally:
            model.compute_dtype = compute_dtype
        nats, chars = self.dist.sum_values([score.nats, float(score.chars)])
        return nats / chars

    def record(self, step: int, val: Optional[float]) -> bool:
        """Keep `val` as the latest score; returns whether it is the best so far (without a split: always)."""
        if val is None:
            return True
        self.last, self.last_step = val, step
        self.history.append(val)
        improved = self.best is None or val < self.best
        self.best = val if improved else self.best
        return improved
