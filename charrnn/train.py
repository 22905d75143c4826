"""`charrnn train`: set a run up, then hand it to the training loop (trainer.py).

    configuration (fresh, or the checkpoint's with the options that may change) -> corpus (once per node under
    torchrun) -> splits and stream batcher -> process group and device -> precision plan -> stop rule -> run
    directory (created, locked, cleaned) -> Trainer(...).run()

Everything that can be refused is refused here, before the run directory exists, with one clear line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Optional

from . import checkpoint as ckpt_io
from .config import ModelConfig, TrainConfig
from .errors import CannotCreateError, CharrnnError, DataError, Interrupted, NonFiniteLossError, UsageError, \
    WriteError
from .resume import LR_CHANGES, RESUMABLE_CHANGES, merge_configs
from .schedule import DEFAULT_EPOCHS, learning_rate
from .trainer import TrainHooks, TrainResult, clip_gradients, make_optimizer, to_cpu

log = logging.getLogger("charrnn")

__all__ = ["train", "TrainResult", "TrainHooks", "default_run_dir", "RESUMABLE_CHANGES", "LR_CHANGES",
           "DEFAULT_EPOCHS", "learning_rate", "clip_gradients", "make_optimizer", "to_cpu"]


def train(
    corpus: Optional[str] = None,
    model_config: Optional[ModelConfig] = None,
    train_config: Optional[TrainConfig] = None,
    run_dir: Optional[str] = None,
    resume: Optional[str] = None,
    explicit: Optional[set] = None,
    progress: bool = True,
    on_step: Optional[Callable[[dict], None]] = None,
    allow_lr_change: bool = False,
    hooks: Optional[TrainHooks] = None,
) -> TrainResult:
    """Train a CharRNN on `corpus` (a file, a directory, '-' for stdin, None for the demo corpus).

    `explicit` names the options the user set on purpose (the CLI passes them); when resuming, those must agree
    with the checkpoint except for the ones in RESUMABLE_CHANGES (and LR_CHANGES with `allow_lr_change`).
    `on_step`, if given, is called after every optimizer step with a dict (step, epoch, loss, lr). The configs
    passed in are not changed: what the run decides (vocabulary size, --dropout auto) is recorded in its
    checkpoints.
    """
    from . import distributed
    from . import trainer as trainer_mod

    # the run's own copies: decisions made at run time never write back into the caller's configs
    model_config = dataclasses.replace(model_config or ModelConfig())
    cfg = dataclasses.replace(train_config or TrainConfig())
    resumed = None
    if resume is not None:
        resumed = ckpt_io.load_checkpoint(ckpt_io.resolve_checkpoint(resume))
        model_config, cfg = merge_configs(resumed, model_config, cfg, set(explicit or ()), allow_lr_change)
        run_dir = run_dir or os.path.dirname(resumed["path"])
    model_config.validate()
    cfg.validate()
    corpus = _corpus_source(corpus, resumed)
    text = None
    if not distributed.launched_by_torchrun():  # a bad corpus fails in a blink, before torch is imported
        text = _load_corpus(corpus, cfg, progress)
    dist, device = distributed.from_environment(cfg.device)
    together = False  # whether every rank leaves at the same point (then they may meet at a last barrier)
    try:
        if text is None:  # under torchrun: one process per node reads (and downloads, encodes) the corpus first
            text = dist.first_on_each_node(lambda: _load_corpus(corpus, cfg, progress and dist.local_rank == 0))
        run = _make_run(text, resumed, model_config, cfg, dist, device)
        run.progress, run.on_step = progress and dist.is_main, on_step
        if not dist.is_main:
            log.addFilter(_quiet_rank)  # one voice: rank 0 reports (removed again below)
        run.run_dir = dist.broadcast_str(run_dir or default_run_dir(text.source))
        lock, failure = None, None
        if dist.is_main:
            try:
                lock = _prepare_run_dir(run.run_dir, resumed)
            except CharrnnError as exc:
                failure = exc
        failure = dist.agree_on_failure(failure)  # rank 0's verdict, on every rank (also the barrier)
        if failure is not None:
            together = True
            raise failure
        if dist.is_main:  # every refusal is behind: say what was read
            log.info(text.summary())
        try:
            result = trainer_mod.Trainer(run, hooks or trainer_mod.hooks).run()
            together = True
            return result
        except (Interrupted, NonFiniteLossError, WriteError):
            together = True  # decided on all-reduced values: every rank raises it at the same step
            raise
        finally:
            if lock is not None:
                lock.release()
    finally:
        log.removeFilter(_quiet_rank)
        distributed.shutdown(dist, together)


def _corpus_source(corpus: Optional[str], resumed: Optional[dict]) -> Optional[str]:
    from .data import DEMO_SOURCE

    if resumed is not None and corpus is None:
        corpus = resumed["corpus"]["source"]
        if corpus == "-":
            raise UsageError("this run was trained on standard input: pass the corpus again (`-`) to resume it")
    if corpus is None or corpus == DEMO_SOURCE:
        log.info("no corpus given: training on the built-in demo corpus (Python standard library source)")
    return corpus


def _load_corpus(corpus: Optional[str], cfg: TrainConfig, progress: bool):
    from .data import load_ids

    text = load_ids(corpus, cfg.glob, progress=progress, follow_links=cfg.follow_links)  # memory-mapped when big
    if not text.chars:
        raise DataError(
            f"the corpus {text.source} is empty: one batch needs {cfg.batch_size * cfg.seq_len + 1} characters "
            f"(--batch-size x --seq-len + 1)"
        )
    return text


def _make_run(text, resumed: Optional[dict], model_config: ModelConfig, cfg: TrainConfig, dist, device):
    """Splits, batcher, precision plan, stop rule and this rank's share of the streams; refuses what cannot run."""
    from .data import StreamBatcher, split_ids
    from .precision import plan_for
    from .resume import check_corpus
    from .schedule import StopRule
    from .trainer import Run

    if resumed is not None:
        check_corpus(resumed, text, text.vocab)
    model_config.vocab_size = len(text.vocab)
    splits = split_ids(text.ids, cfg.val_frac, cfg.test_frac)
    batcher = StreamBatcher(splits.train, cfg.batch_size, cfg.seq_len)
    if cfg.val_frac > 0 and len(splits.val) < cfg.seq_len + 1:
        raise DataError(
            f"the validation split has {len(splits.val)} characters but needs at least {cfg.seq_len + 1} "
            f"(one --seq-len window): raise --val-frac, lower --seq-len, or pass --val-frac 0"
        )
    # what runs in which dtype (refuses a request the device cannot honour)
    plan = plan_for(device, model_config.cell, model_config.hidden_size, cfg.precision, cfg.kernel)
    shard = dist.shard(cfg.batch_size)
    if resumed is not None and resumed["progress"].get("world_size", 1) != dist.world:
        raise UsageError(
            f"this run was trained with {resumed['progress'].get('world_size', 1)} process(es); resume it with "
            f"the same number (now {dist.world}), because each holds its own share of the streams' state"
        )
    return Run(model_config=model_config, cfg=cfg, text=text, vocab=text.vocab, splits=splits, batcher=batcher,
               stop=StopRule.for_run(cfg, len(batcher)), run_dir="", dist=dist, shard=shard, device=device, plan=plan,
               resumed=resumed)


def _quiet_rank(record: logging.LogRecord) -> bool:
    """A filter for ranks other than 0: warnings and errors only (the logger's own level stays the user's)."""
    return record.levelno >= logging.WARNING


def default_run_dir(source: str, base: Optional[str] = None) -> str:
    if base is None:
        from .paths import runs_dir

        base = runs_dir()  # $CHARRNN_HOME/checkpoints
    stem = "demo" if source.startswith("<demo") else ("stdin" if source == "-" else os.path.basename(source.rstrip("/")))
    stem = os.path.splitext(stem)[0] or "run"
    return os.path.join(base, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


def _prepare_run_dir(run_dir: str, resumed: Optional[dict]) -> "ckpt_io.RunLock":
    """Create the run directory, check it is writable, lock it, and clean up after a killed run."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise CannotCreateError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise CannotCreateError(f"run directory {run_dir} is not writable")
    lock = ckpt_io.RunLock(run_dir).acquire()
    same_run = resumed is not None and os.path.realpath(run_dir) == os.path.realpath(os.path.dirname(resumed["path"]))
    if not same_run and os.path.exists(os.path.join(run_dir, ckpt_io.LATEST)):
        lock.release()
        raise CannotCreateError(
            f"run directory {run_dir} already holds a run: continue it with --resume {run_dir}, "
            f"or pass another --run-dir"
        )
    removed = ckpt_io.remove_stale_temps(run_dir)
    if removed:
        log.info(f"removed {removed} unfinished checkpoint file(s) left in {run_dir} by an interrupted save")
    return lock
