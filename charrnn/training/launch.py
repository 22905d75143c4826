"""`charrnn train`: set a run up, then hand it to the training loop (training/trainer.py).

    configuration (fresh, or the checkpoint's with the options that may change) -> corpus argument checked (no
    I/O) -> run directory (created, locked) -> corpus read, downloaded, hashed (once per node under torchrun) ->
    process group and device -> splits and stream batcher -> precision plan -> stop rule -> Trainer(...).run()

What needs no reading is refused before the run directory exists; a later refusal removes what was made. Either
way: one clear line, and nothing left behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, NamedTuple, Optional

from ..store import checkpoint as ckpt_io
from ..config import EVAL_EVERY_MAX, ModelConfig, TrainConfig, auto_eval_every, auto_val_chars, resolve_optimizer
from ..errors import DataError, Interrupted, NonFiniteLossError, UsageError, WriteError
from .memory import _out_of_memory_as_error, check_memory, memory_needed  # noqa: F401  (memory_needed: re-exported)
from .resume import LR_CHANGES, RESUMABLE_CHANGES, merge_configs
from .rundir import _discard_unsaved, _prepare_run_dir, _prepare_run_dir_on_rank_0, default_run_dir
from .schedule import DEFAULT_EPOCHS, learning_rate
from .signals import startup_signals
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
    memory_check: bool = True,
    started: Optional[float] = None,
    name: Optional[str] = None,
    remeasure: bool = False,
    sha256: Optional[str] = None,
) -> TrainResult:
    """Train a CharRNN on `corpus` (a file, a directory, '-' for stdin, a corpus name or URL, None for the demo corpus).

    `explicit` names the options the user set on purpose (the CLI passes them); when resuming, those must agree
    with the checkpoint except for the ones in RESUMABLE_CHANGES (and LR_CHANGES with `allow_lr_change`); with a
    time budget and neither size option in it, a new tanh run chooses its size (charrnn.training.autosize).
    `on_step`, if given, is called after every optimizer step with a dict (step, epoch, loss, lr). The configs
    passed in are not changed: what the run decides is recorded in its checkpoints. `memory_check`: refuse what
    will not fit in memory (UsageError). `started`: the command's start, on the hooks' clock (default: now).
    `name`: the new run directory's prefix (default: the corpus's name). The run directory is created (exclusively:
    runs started together never share one) and locked before the corpus is downloaded, hashed (`sha256`) or read. A
    run that fails before its first checkpoint removes what it created; SIGINT/SIGTERM before training begins raise
    StartupInterrupted. `remeasure`: time the size candidates again, not reading their kept speeds.
    """
    from . import distributed, trainer as trainer_mod

    with startup_signals() as guard:
        hooks = hooks or trainer_mod.hooks
        started = hooks.clock() if started is None else started  # start-up, the end's validation and save: in the budget
        check_run_name(name, run_dir, resume)
        model_config, cfg, resumed, run_dir = _configs(model_config, train_config, resume, run_dir, explicit,
                                                       allow_lr_change)
        corpus = _corpus_source(corpus, resumed, sha256)  # where a name or URL goes: nothing downloaded or hashed yet
        torchrun = distributed.launched_by_torchrun()
        lock, dist, together, began = None, None, False, False  # together: every rank leaves at the same point
        if not torchrun:  # what can refuse the run comes first: the run directory, before the corpus is read
            lock, run_dir = _prepare_run_dir(run_dir, resumed, corpus.local, name)
        try:
            # a bad corpus fails in a blink, before torch is imported (under torchrun: below, once per node)
            text = None if torchrun else _load_corpus(corpus, cfg, progress)
            dist, device = distributed.from_environment(cfg.device)
            if torchrun:
                together = True  # a refusal of the run directory is agreed: every rank raises it
                lock, run_dir = _prepare_run_dir_on_rank_0(dist, run_dir, resumed, corpus.local, name)
                # one process per node reads (and downloads, encodes) the corpus first; all ranks raise its failure
                text = dist.first_on_each_node(lambda: _load_corpus(corpus, cfg, progress and dist.local_rank == 0))
                together = False
            spent = lambda: hooks.clock() - started  # noqa: E731  (of the time budget, before the first step)
            run = _make_run(text, resumed, model_config, cfg, dist, device, memory_check, explicit, spent, remeasure)
            run.progress, run.on_step, run.started, run.run_dir = progress and dist.is_main, on_step, started, run_dir
            if not dist.is_main:
                log.addFilter(_quiet_rank)  # one voice: rank 0 reports (removed again below)
            else:  # every refusal is behind: say what was read
                log.info(text.summary())
            began = True
            try:
                result = _out_of_memory_as_error(lambda: trainer_mod.Trainer(run, hooks).run())
                together = True
                return result
            except BaseException as exc:
                # decided on all-reduced values: every rank raises these at the same step
                together = isinstance(exc, (Interrupted, NonFiniteLossError, WriteError))
                raise
        except BaseException as exc:
            if lock is not None:  # before the trainer, the directory made a moment ago goes without a word
                _discard_unsaved(run_dir, lock, exc, say=began)
            raise
        finally:
            guard.done = True
            _release(lock, dist, together)


def _release(lock, dist, together: bool) -> None:
    """What train() holds, let go however it ends: the run directory's lock (and its file: only a killed run leaves
    one), rank 0's voice, the process group (`together`: every rank leaves at the same point)."""
    from . import distributed

    if lock is not None:
        lock.release()
    log.removeFilter(_quiet_rank)
    if dist is not None:
        distributed.shutdown(dist, together)


def check_run_name(name: Optional[str], run_dir: Optional[str], resume: Optional[str]) -> None:
    """--name: the prefix of a new run directory's name (NAME-YYYYmmdd-HHMMSS), one path component."""
    if name is None:
        return
    if run_dir is not None or resume is not None:
        raise UsageError(f"--name names a new run directory under checkpoints/; it cannot be combined with "
                         f"{'--run-dir' if run_dir is not None else '--resume'}")
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name or not name.isprintable():
        raise UsageError(f"--name must be a plain directory-name prefix (no '/'), not {name!r}")


def _configs(model_config, train_config, resume, run_dir, explicit, allow_lr_change):
    """The run's own copies of the configs (decisions made at run time never write back into the caller's), merged
    with the resumed checkpoint's (and its run directory), validated. Returns (model, train, resumed, run_dir)."""
    model_config = dataclasses.replace(model_config or ModelConfig())
    cfg = dataclasses.replace(train_config or TrainConfig())
    resumed = None
    if resume is not None:
        resumed = ckpt_io.load_checkpoint(ckpt_io.resolve_checkpoint(resume))
        model_config, cfg = merge_configs(resumed, model_config, cfg, set(explicit or ()), allow_lr_change)
        run_dir = run_dir or os.path.dirname(resumed["path"])
    for config in (model_config, cfg):
        config.validate()
    cfg.optimizer = resolve_optimizer(cfg.optimizer, model_config.cell)
    return model_config, cfg, resumed, run_dir


class _Corpus(NamedTuple):
    """A CORPUS argument as given (None: the demo corpus) with its expected sha256, and `local`: the path it reads
    from once resolved (a name's or URL's file in the data directory), known without downloading or hashing."""

    arg: Optional[str]
    sha256: Optional[str]
    local: Optional[str]


def _corpus_source(corpus: Optional[str], resumed: Optional[dict], sha256: Optional[str] = None) -> _Corpus:
    """The corpus to read (a resumed run's own, unless another is given); refuses at once what needs no reading (a
    malformed sha256, a name that is no file, corpus or URL)."""
    from ..data.corpora import corpus_path
    from ..data.dataset import DEMO_SOURCE

    if resumed is not None and corpus is None:
        corpus = resumed["corpus"]["source"]
        if corpus == "-":
            raise UsageError("this run was trained on standard input: pass the corpus again (`-`) to resume it")
        if _is_fifo(corpus):  # reading it again would wait for a writer that is long gone
            raise UsageError(f"this run was trained on {corpus} (a FIFO): pass the corpus again to resume it")
    if corpus is None or corpus == DEMO_SOURCE:
        log.info("no corpus given: training on the built-in demo corpus (Python standard library source)")
        corpus = None  # the demo corpus, given or recorded
    return _Corpus(corpus, sha256, corpus_path(corpus, sha256))


def _is_fifo(path: str) -> bool:
    import stat

    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _load_corpus(corpus: _Corpus, cfg: TrainConfig, progress: bool):
    """Resolve the corpus (download a name or URL once, check its sha256) and read it."""
    from ..data.corpora import resolve_corpus
    from ..data.cache import load_ids

    text = load_ids(resolve_corpus(corpus.arg, corpus.sha256), cfg.glob, progress=progress,
                    follow_links=cfg.follow_links)  # memory-mapped when big
    if not text.chars:
        raise DataError(
            f"the corpus {text.source} is empty: one batch needs {cfg.batch_size * cfg.seq_len + 1} characters "
            f"(--batch-size x --seq-len + 1)"
        )
    return text


def _chooses_size(model_config: ModelConfig, cfg: TrainConfig, resumed: Optional[dict], explicit) -> bool:
    """Whether this run picks its model size for its time budget (charrnn.training.autosize.applies); a resumed run
    keeps the size it has."""
    from .autosize import applies

    return resumed is None and applies(model_config, cfg, explicit)


def _make_run(text, resumed: Optional[dict], model_config: ModelConfig, cfg: TrainConfig, dist, device,
              memory_check: bool = True, explicit: Optional[set] = None,
              elapsed: Callable[[], float] = lambda: 0.0, remeasure: bool = False):
    """Splits, batcher, precision plan, stop rule and this rank's share of the streams; refuses what cannot run
    (with `memory_check`, a model and batch that will not fit in memory). Where `_chooses_size`, the model's size
    is chosen for what is left of the time budget (`elapsed()`: seconds spent since the command started) on this
    machine (charrnn.training.autosize), and recorded."""
    from ..data.batches import StreamBatcher, split_ids
    from ..model.precision import plan_for
    from .resume import check_corpus
    from .schedule import StopRule
    from .run import Run

    if resumed is not None:
        check_corpus(resumed, text, text.vocab)
    model_config.vocab_size = len(text.vocab)
    splits = split_ids(text.ids, cfg.val_frac, cfg.test_frac)
    batcher = StreamBatcher(splits.train, cfg.batch_size, cfg.seq_len)
    if cfg.eval_every is None:  # --eval-every auto, decided once (recorded, so a resume keeps it), as --val-chars
        cfg.eval_every = auto_eval_every(len(batcher))
        if cfg.sample_every is None and cfg.eval_every < EVAL_EVERY_MAX:  # samples as often as before: every 200 steps
            cfg.sample_every = -(-EVAL_EVERY_MAX // cfg.eval_every) * cfg.eval_every  # or so, at an evaluation
    if cfg.val_chars is None:
        cfg.val_chars = auto_val_chars(cfg.eval_every, cfg.batch_size, cfg.seq_len)
    if cfg.val_frac > 0 and len(splits.val) < cfg.seq_len + 1:
        raise DataError(
            f"the validation split has {len(splits.val)} characters but needs at least {cfg.seq_len + 1} "
            f"(one --seq-len window): raise --val-frac, lower --seq-len, or pass --val-frac 0"
        )
    shard = dist.shard(cfg.batch_size)
    if resumed is not None and resumed["progress"].get("world_size", 1) != dist.world:
        raise UsageError(
            f"this run was trained with {resumed['progress'].get('world_size', 1)} process(es); resume it with "
            f"the same number (now {dist.world}), because each holds its own share of the streams' state"
        )
    size_choice = resumed.get("model_size") if resumed is not None else None  # a resumed run keeps its record
    limit = _resumed_step_limit(resumed, cfg, explicit, dist) if resumed is not None else None
    expected = None  # the steps the size choice expects this run to make
    if _chooses_size(model_config, cfg, resumed, explicit):
        from .shift import validation_shift

        shift = None  # only Muon's prediction uses it
        if resolve_optimizer(cfg.optimizer, model_config.cell) == "muon":
            shift = validation_shift(splits.train, splits.val, len(text.vocab))
        size_choice, limit, expected = _choose_size(model_config, cfg, len(splits.train), StopRule.for_run(
            cfg, len(batcher)).total_steps, shard, dist, device, memory_check, elapsed, remeasure, shift)
        if limit is not None:
            cfg.max_steps = limit  # where more steps would overfit: recorded, so a resume stops there too
    stop = StopRule.for_run(cfg, len(batcher))
    if memory_check:  # rank 0's verdict on every rank, so no rank is left waiting for one that refused
        failure = None
        try:
            check_memory(model_config, cfg, device, dist.world)
        except UsageError as exc:
            failure = exc
        failure = dist.agree_on_failure(failure)
        if failure is not None:
            raise failure
    # what runs in which dtype (refuses a request the device cannot honour)
    plan = plan_for(device, model_config.cell, model_config.hidden_size, cfg.precision, cfg.kernel)
    return Run(model_config=model_config, cfg=cfg, text=text, vocab=text.vocab, splits=splits, batcher=batcher,
               stop=stop, run_dir="", dist=dist, shard=shard, device=device, plan=plan, resumed=resumed,
               size_choice=size_choice, step_limit=limit, expected_steps=expected)


def _resumed_step_limit(resumed: dict, cfg: TrainConfig, explicit, dist) -> Optional[int]:
    """The step limit a resumed run's size choice set (its recorded max_steps), while it holds: --max-steps given
    now replaces it, --epochs alone lifts it (the epochs and the budget decide); else the run is told it stops
    there."""
    limit = resumed["progress"].get("step_limit")
    if limit is None or cfg.max_steps != limit:
        return None
    given = set(explicit or ()) & {"max_steps", "epochs"}
    if "max_steps" in given:
        return None
    if given:
        cfg.max_steps = None
        return None
    if dist.is_main:
        log.info(f"this run stops after {limit:,} steps, where more steps stopped helping on corpora of this size "
                 f"(--max-steps or --epochs go further)")
    return limit


def _choose_size(model_config: ModelConfig, cfg: TrainConfig, train_chars: int, step_cap: Optional[int], shard,
                 dist, device, memory_check: bool,
                 elapsed: Callable[[], float] = lambda: 0.0,
                 remeasure: bool = False, shift: Optional[float] = None) -> tuple[str, Optional[int], Optional[float]]:
    """Set model_config's size for the time budget (charrnn.training.autosize), timing this rank's share of the batch;
    with `memory_check` only candidates that fit are timed; `shift`: the corpus's validation shift (shift.py).
    Returns the record of why, and the step limit past which that size would overfit the corpus when the budget
    affords more steps and no step count was set (--max-steps, --epochs, --schedule-steps), else None, and the steps
    the choice expects the run to make."""
    from .autosize import CANDIDATES, choose_model_size
    from ..model.precision import plan_for

    fits = []
    for L, H in CANDIDATES:
        try:
            if memory_check:
                check_memory(dataclasses.replace(model_config, num_layers=L, hidden_size=H), cfg, device, dist.world)
            fits.append((L, H))
        except UsageError:
            pass
    share = dataclasses.replace(cfg, batch_size=shard.stop - shard.start)
    choice = choose_model_size(model_config, share, device, dist, plan_for, train_chars, fits, step_cap,
                               elapsed=elapsed, chars_per_step=cfg.batch_size * cfg.seq_len, remeasure=remeasure,
                               shift=shift)
    (L, H), limit, why = choice.size, choice.limit, choice.why
    model_config.num_layers, model_config.hidden_size = L, H
    if cfg.schedule_steps is not None:  # a schedule fixed on purpose: the budget or that decides when it stops
        limit = None
    if limit is not None:
        why += (f"; it stops after {limit:,} steps (recorded as its max_steps), where more steps stopped helping on "
                f"corpora of this size")
    if dist.is_main:
        if choice.speeds:
            log.info(f"model speeds: {choice.speeds}")
        log.info(f"model size {L}x{H}: {why}")
    return why, limit, choice.steps.get((L, H))


def _quiet_rank(record: logging.LogRecord) -> bool:
    """A filter for ranks other than 0: warnings and errors only (the logger's own level stays the user's)."""
    return record.levelno >= logging.WARNING
