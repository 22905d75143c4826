"""What the Trainer is given and what it gives back: `Run` (everything decided before the loop starts:
training.launch builds it), `TrainResult`, and `TrainHooks` (the fault hooks tests inject; they do nothing)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional


class TrainHooks:
    """Fault injection for tests. Does nothing by default; tests replace `charrnn.training.trainer.hooks`
    (tests/faults.py). Each method gets the Trainer (its step, its dist.rank, its signals)."""

    def loss(self, trainer, loss):
        """The loss of step trainer.step + 1, before backward."""
        return loss

    def after_step(self, trainer) -> None:
        """Called after each optimizer step (trainer.step is the step just taken)."""

    def validating(self, trainer) -> None:
        """Called as each validation starts."""

    def clock(self) -> float:
        """The seconds the trainer times itself with (the time budget, training time, wall time)."""
        return time.perf_counter()


@dataclass
class TrainResult:
    run_dir: str
    latest: str
    best: Optional[str]
    step: int
    epoch: int
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]
    last_train_loss: Optional[float]
    elapsed: float
    stopped_by: str
    val_history: list = field(default_factory=list)
    wall: Optional[float] = None  # seconds from building the trainer to the end of this session
    elapsed_before: float = 0.0  # training time before this session (a resumed run's)
    step_limit: Optional[int] = None  # the max_steps the size choice set (charrnn.training.autosize), if it set one
    expected_steps: Optional[float] = None  # the steps the size choice expected this run to make
    shared_with: int = 0  # the most other charrnn runs seen training on this CPU at once (training/sharing.py)


@dataclass
class Run:
    """What a training run is made of, decided before the loop starts (charrnn.train builds it)."""

    model_config: object
    cfg: object
    text: object  # the loaded corpus (source, sha256, chars)
    vocab: object
    splits: object
    batcher: object
    stop: object  # schedule.StopRule
    run_dir: str
    dist: object
    shard: slice
    device: object
    plan: object  # precision.Plan
    resumed: Optional[dict] = None
    progress: bool = True
    on_step: Optional[Callable[[dict], None]] = None
    started: Optional[float] = None  # when the command started, on the hooks' clock (a time budget counts from it)
    size_choice: Optional[str] = None  # why the model has its size, when the run chose it (charrnn.training.autosize)
    step_limit: Optional[int] = None  # the max_steps that choice set, where more steps would overfit the corpus
    expected_steps: Optional[float] = None  # the steps that choice expected this run to make


def result_of(trainer, stopped_by: str) -> TrainResult:
    """What a Trainer did, once its loop has ended."""
    import os

    c, v, run = trainer.checkpoints, trainer.validation, trainer.run_
    return TrainResult(run_dir=run.run_dir, latest=c.latest_path,
                       best=c.best_path if os.path.exists(c.best_path) else None, step=trainer.step,
                       epoch=trainer.epoch, best_val_loss=v.best, last_val_loss=v.last,
                       last_train_loss=trainer.last_loss, elapsed=trainer.elapsed, stopped_by=stopped_by,
                       val_history=v.history, wall=trainer.clock() - trainer.command_started,
                       elapsed_before=trainer.elapsed_before, step_limit=run.step_limit,
                       expected_steps=run.expected_steps, shared_with=trainer.share.most_others)
