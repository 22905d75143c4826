"""A step whose loss (or, without loss scaling, gradient norm) is not finite: stop the run before anything is
saved, or with --on-nonfinite skip, skip the step (the weights stay; the next window starts from the last finite
state), up to MAX_SKIPS_IN_A_ROW in a row.

Without a per-step host read (no skip, one process, no on_step), a non-finite step is only noted on the device
(`note`) and acted on at the next read of the loss (`check_noted`: a log, evaluation or save point), before
anything is saved, naming the step it happened at.
"""

from __future__ import annotations

import logging
import os

from ..errors import NonFiniteLossError

log = logging.getLogger("charrnn")

# with on_nonfinite="skip", this many non-finite steps in a row mean the run has diverged: stop anyway
MAX_SKIPS_IN_A_ROW = 10


class NonFiniteGuard:
    def __init__(self, on_nonfinite: str, latest_path: str, device, skipped_in_a_row: int = 0):
        import torch

        self.skip_allowed, self.latest_path = on_nonfinite == "skip", latest_path
        self.skipped_in_a_row = skipped_in_a_row
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # the first noted bad step, or -1

    def note(self, bad, step: int) -> None:
        """Note on the device (no host sync) that `step` was non-finite, if `bad` and none was noted before."""
        import torch

        self.first_bad = torch.where((self.first_bad < 0) & bad, step, self.first_bad)

    def check_noted(self) -> None:
        """Stop (NonFiniteLossError) if a step noted since the start was non-finite. Reads from the device."""
        bad_step = int(self.first_bad.item())
        if bad_step >= 0:
            self.stop(bad_step)

    def step_taken(self) -> None:
        self.skipped_in_a_row = 0

    def skip_or_stop(self, step: int) -> None:
        """Step `step` was non-finite: return if it may be skipped (the caller drops its gradients and state), else
        stop."""
        if self.skip_allowed and self.skipped_in_a_row < MAX_SKIPS_IN_A_ROW:
            self.skipped_in_a_row += 1
            log.warning(f"non-finite loss at step {step}: skipped the step")
            return
        in_a_row = f" ({self.skipped_in_a_row + 1} steps in a row)" if self.skipped_in_a_row else ""
        self.stop(step, in_a_row)

    def stop(self, step: int, in_a_row: str = "") -> None:
        """Raised before any save, so the bad state never reaches latest.pt or best.pt."""
        where = (f"the last good checkpoint is {self.latest_path}" if os.path.exists(self.latest_path)
                 else "no checkpoint was saved")
        raise NonFiniteLossError(f"non-finite loss at step {step}{in_a_row}; {where}")
