"""Decisions a run makes from its own length: `--dropout auto`.

With a run whose length is known in steps, the dropout is decided before the first step from the passes over the
training split (config.auto_dropout). With a time budget, the run times a few steps first (DropoutProbe), projects
how many steps the budget allows, and decides from those. Every rank decides alike: it sees agreed step counts
and times. The decision is recorded in the checkpoint's model config, never written back into the caller's.
"""

from __future__ import annotations

from typing import Optional

from ..config import auto_dropout

WARMUP_STEPS = 5  # skip this many steps (start-up costs), then
PROBE_STEPS = 20  # time this many to know the speed


def dropout_for_steps(total_steps: int, batches_per_epoch: int) -> tuple[float, str]:
    passes = total_steps / batches_per_epoch
    return auto_dropout(passes), f"auto: {passes:.1f} passes over the training split"


class DropoutProbe:
    """Times PROBE_STEPS steps after WARMUP_STEPS and then decides the dropout once."""

    def __init__(self, first_step: int, budget: float, total_steps: Optional[int], batches_per_epoch: int,
                 chars_per_step: int):
        self.first_step, self.budget, self.total_steps = first_step, budget, total_steps
        self.batches_per_epoch, self.chars_per_step = batches_per_epoch, chars_per_step
        self.start: Optional[tuple[int, float]] = None

    def observe(self, step: int, elapsed: float) -> Optional[tuple[float, str]]:
        """(dropout, why) once the probe has seen enough steps, else None."""
        if step - self.first_step == WARMUP_STEPS:
            self.start = (step, elapsed)
        if self.start is None or step - self.start[0] < PROBE_STEPS:
            return None
        per_step = (elapsed - self.start[1]) / (step - self.start[0])
        planned = step + max(0.0, self.budget - elapsed) / max(per_step, 1e-9)
        if self.total_steps is not None:
            planned = min(planned, self.total_steps)
        passes = planned / self.batches_per_epoch
        return auto_dropout(passes), (f"auto: about {passes:.1f} passes over the training split in the time budget, "
                                      f"at {self.chars_per_step / per_step:,.0f} chars/s")


class AutoDropout:
    """--dropout auto in a run: with a length in steps, decided at once (into `model_config`, before the model is
    built); with a time budget, by a DropoutProbe from the steps after `first_step`, into the model."""

    def __init__(self, model_config, stop, batches_per_epoch: int, chars_per_step: int, first_step: int = 0):
        import logging

        self.log, self.probe = logging.getLogger("charrnn"), None
        if model_config.dropout is None and stop.budget is None:
            model_config.dropout, why = dropout_for_steps(stop.total_steps, batches_per_epoch)
            self.log.info(f"dropout {model_config.dropout:g} ({why})")
        elif model_config.dropout is None:
            self.probe = DropoutProbe(first_step, stop.budget, stop.total_steps, batches_per_epoch, chars_per_step)

    def observe(self, step: int, elapsed: float, model) -> None:
        """After each step, with `elapsed` the command's seconds so far (start-up included): set the model's dropout
        once the probe decides."""
        decided = self.probe.observe(step, elapsed) if self.probe is not None else None
        if decided is not None:
            model.set_dropout(decided[0])  # the model's own config copy, which checkpoints save
            self.log.info(f"dropout {decided[0]:g} ({decided[1]})")
            self.probe = None
