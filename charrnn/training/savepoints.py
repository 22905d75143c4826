"""When a run saves and what a checkpoint holds.

Evaluation points (every --eval-every steps, and the end) save latest.pt, and best.pt when validation improved.
Between them, `SavePoints` is the one rule for --save-every: every N steps, or once so many seconds of training
time (which all ranks agree on) have passed since the last save. `Checkpoints` writes on rank 0 (a failure there
is raised on every rank together) and keeps --keep-last step files.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from ..config import to_dict
from ..errors import CharrnnError
from ..store import checkpoint as ckpt_io


class SavePoints:
    """--save-every as steps or seconds of training time (None, None: only at evaluation points)."""

    def __init__(self, steps: Optional[int], seconds: Optional[float], elapsed: float = 0.0):
        self.steps, self.seconds = steps, seconds
        self.last_save_elapsed = elapsed

    def due(self, step: int, elapsed: float) -> bool:
        return (self.steps is not None and step % self.steps == 0) or (
            self.seconds is not None and elapsed - self.last_save_elapsed >= self.seconds)

    def saved(self, elapsed: float) -> None:
        self.last_save_elapsed = elapsed


def to_cpu(obj):
    """A copy of a (nested) state dict with every tensor on the CPU; tuples become lists."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_cpu(v) for v in obj]
    return obj


class Checkpoints:
    """latest.pt, best.pt and --keep-last's step files of one run directory."""

    def __init__(self, run):
        self.run, self.dist, self.keep_last = run, run.dist, run.cfg.keep_last
        self.latest_path = os.path.join(run.run_dir, ckpt_io.LATEST)
        self.best_path = os.path.join(run.run_dir, ckpt_io.BEST)

    def save(self, trainer, best: bool, failure: Optional[CharrnnError] = None) -> None:
        """Save the trainer's state on rank 0; a failure there (or `failure`, a log's held write failure) is raised
        on every rank together."""
        paths = [self.latest_path] + ([self.best_path] if best else [])
        if self.keep_last:
            paths.append(os.path.join(self.run.run_dir, ckpt_io.step_name(trainer.step)))
        payload = self.snapshot(trainer)  # every rank takes part in its collectives
        if self.dist.is_main and failure is None:
            try:
                ckpt_io.save_checkpoint(payload, paths)
                if self.keep_last:
                    # only now that the new checkpoint is in place; never the file this run resumed from, and never
                    # a later one left by an abandoned continuation
                    resumed_from = self.run.resumed["path"] if self.run.resumed is not None else None
                    ckpt_io.prune_step_checkpoints(self.run.run_dir, self.keep_last, protect=resumed_from,
                                                   upto=trainer.step)
            except CharrnnError as exc:
                failure = exc
        failure = self.dist.agree_on_failure(failure)  # also the barrier that keeps ranks together
        if failure is not None:
            raise failure

    def snapshot(self, t) -> dict:
        import torch

        from .resume import rng_snapshot

        dist, run, step = self.dist, self.run, t.steps
        # collectives first: every rank must take part, whichever writes
        hidden = torch.cat(dist.all_gather(t.state.detach()), dim=-2) if dist.enabled else t.state.detach()
        rng = rng_snapshot(dist, run.device)
        return {
            "model_config": to_dict(step.model.config),
            "train_config": to_dict(run.cfg),
            "vocab": run.vocab.chars,
            "model": step.average.state_dict() if step.average is not None else step.weights(),
            "train_weights": step.weights() if step.average is not None else None,
            "optimizer": to_cpu(step.optimizer.state_dict()),
            "progress": self.progress(t),
            "hidden": hidden.cpu(),
            "rng": rng,
            "corpus": {"source": run.text.source, "sha256": run.text.sha256, "chars": run.text.chars},
            "precision": run.plan.as_dict(),
            "model_size": run.size_choice,
            "grad_scaler": step.scaler.state_dict() if step.scaler is not None else None,
            "torch_version": str(torch.__version__),
            "saved_at": time.time(),
        }

    def progress(self, t) -> dict:
        cfg = self.run.cfg
        return {
            "step": t.step,
            "epoch": t.epoch,
            "batch": t.batch_index,
            "elapsed": t.elapsed,
            "best_val_loss": t.validation.best,
            "chars_seen": t.step * cfg.batch_size * cfg.seq_len,
            "world_size": self.dist.world,
            "schedule_steps": self.run.stop.horizon,
            "skipped_in_a_row": t.nonfinite.skipped_in_a_row,
            "ema_updates": t.steps.average.updates if t.steps.average is not None else 0,
            "step_limit": self.run.step_limit,
            "planned_steps": self.run.stop.total_steps,  # the step limit (None: a time budget alone)
            "stopped_by": t.finishing,  # set in the run's last checkpoint: how it ended
        }
