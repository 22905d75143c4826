"""The training loop: stateful truncated BPTT over parallel streams, clipping, AdamW, warm-up + cosine decay.

    reset h at epoch start -> for each batch: detach h (the truncation point) -> forward -> cross-entropy over B*T
    -> zero_grad -> backward -> clip -> check finite -> step -> every eval_every steps: val loss, save latest/best.

Stop at max_steps, after `epochs`, or when the wall-clock `time_budget` is spent (the learning-rate schedule then
decays by elapsed fraction of the budget, so a short run still ends at its low learning rate). SIGINT/SIGTERM set a
flag; the loop finishes the current step, saves, and raises `Interrupted`.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import checkpoint as ckpt_io
from .config import ModelConfig, TrainConfig, auto_dropout, from_dict, to_dict
from .errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    CannotCreateError,
    CharrnnError,
    DataError,
    Interrupted,
    NonFiniteLossError,
    UsageError,
    WriteError,
)

log = logging.getLogger("charrnn")

DEFAULT_EPOCHS = 10.0
# options that may differ when resuming; any other difference is refused
RESUMABLE_CHANGES = {"max_steps", "epochs", "time_budget", "eval_every", "log_every", "device", "kernel",
                     "precision", "save_every", "keep_last", "on_nonfinite"}
# the learning-rate schedule and clipping may change on resume only when asked for (allow_lr_change), because the
# run then no longer equals an uninterrupted one
LR_CHANGES = {"lr", "min_lr_frac", "warmup_steps", "schedule_steps", "grad_clip"}
# with on_nonfinite="skip", this many non-finite steps in a row mean the run has diverged: stop anyway
MAX_SKIPS_IN_A_ROW = 10
# --dropout auto with a time budget: skip this many steps (start-up), then time this many to know the speed
AUTO_DROPOUT_WARMUP = 5
AUTO_DROPOUT_PROBE = 20


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


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr down to lr * min_lr_frac as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    cosine = cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr * warm * cosine


def clip_gradients(parameters, max_norm: float):
    """Scale gradients so their global L2 norm is at most max_norm (0 disables); returns the norm before."""
    import torch

    limit = max_norm if max_norm > 0 else float("inf")
    return torch.nn.utils.clip_grad_norm_(list(parameters), limit, foreach=True)


def make_optimizer(model, lr: float, betas: tuple, weight_decay: float):
    """AdamW with weight decay on the weight matrices only (biases and nothing else are decayed)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def default_run_dir(source: str, base: Optional[str] = None) -> str:
    if base is None:
        from .paths import runs_dir

        base = runs_dir()  # $CHARRNN_HOME/checkpoints
    stem = "demo" if source.startswith("<demo") else ("stdin" if source == "-" else os.path.basename(source.rstrip("/")))
    stem = os.path.splitext(stem)[0] or "run"
    return os.path.join(base, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


class _SignalFlag:
    """SIGINT/SIGTERM set a flag; the loop acts on it at the next step boundary (a second signal changes nothing,
    so it cannot break a save in progress)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


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
) -> TrainResult:
    """Train a CharRNN on `corpus` (a file, a directory, '-' for stdin, None for the demo corpus).

    `explicit` names the options the user set on purpose (the CLI passes them); when resuming, those must agree
    with the checkpoint except for the ones in RESUMABLE_CHANGES (and LR_CHANGES with `allow_lr_change`). `on_step`, if given, is called after every
    optimizer step with a dict (step, epoch, loss, lr).
    """
    # torch is imported by _train_loop (and by load_checkpoint), so a bad corpus or option fails in a blink
    from .data import DEMO_SOURCE, StreamBatcher, Vocab, load_ids, split_ids

    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    explicit = set(explicit or ())
    resumed = None

    # -- configuration: fresh, or from the checkpoint being resumed ---------------------------------------------
    if resume is not None:
        resumed = ckpt_io.load_checkpoint(ckpt_io.resolve_checkpoint(resume))
        saved_model = from_dict(ModelConfig, resumed["model_config"])
        saved_train = from_dict(TrainConfig, resumed["train_config"])
        changeable = RESUMABLE_CHANGES | (LR_CHANGES if allow_lr_change else set())
        for what, cfg_new, cfg_old in (("architecture", model_config, saved_model),
                                       ("training configuration", train_config, saved_train)):
            differences = []
            for name in to_dict(cfg_old):
                if name in explicit and name not in changeable and name != "vocab_size":
                    new, old = getattr(cfg_new, name), getattr(cfg_old, name)
                    if new != old and not (name == "dropout" and new is None):  # auto accepts what was decided
                        differences.append(f"--{name.replace('_', '-')} {new} (checkpoint has {old})")
            if differences:
                hint = ""
                if what != "architecture" and any(d.split()[0][2:].replace("-", "_") in LR_CHANGES
                                                  for d in differences):
                    hint = " (--allow-lr-change accepts a changed learning-rate schedule or clipping)"
                raise UsageError(f"cannot resume with a different {what}: " + "; ".join(differences) + hint)
        for name in changeable & explicit:
            if hasattr(saved_train, name):
                setattr(saved_train, name, getattr(train_config, name))
        model_config, train_config = saved_model, saved_train
        if run_dir is None:
            run_dir = os.path.dirname(resumed["path"])
    model_config.validate()
    train_config.validate()
    cfg = train_config

    # -- corpus --------------------------------------------------------------------------------------------------
    if resumed is not None and corpus is None:
        corpus = resumed["corpus"]["source"]
        if corpus == "-":
            raise UsageError("this run was trained on standard input: pass the corpus again (`-`) to resume it")
    if corpus is None or corpus == DEMO_SOURCE:
        log.info("no corpus given: training on the built-in demo corpus (Python standard library source)")
    text = load_ids(corpus, cfg.glob, progress=progress and os.environ.get("RANK", "0") == "0")  # memmapped when big
    if resumed is not None and text.sha256 != resumed["corpus"]["sha256"]:
        raise DataError(
            f"cannot resume: the corpus {text.source} differs from the one this run was trained on "
            f"({text.chars} characters, sha256 {text.sha256[:12]}...; the run's had {resumed['corpus']['chars']} "
            f"characters, sha256 {resumed['corpus']['sha256'][:12]}...)"
        )
    if not text.chars:
        raise DataError(
            f"the corpus {text.source} is empty: one batch needs {cfg.batch_size * cfg.seq_len + 1} characters "
            f"(--batch-size x --seq-len + 1)"
        )
    vocab, ids = text.vocab, text.ids
    if resumed is not None and Vocab(resumed["vocab"]) != vocab:
        raise DataError("cannot resume: the corpus's characters differ from the checkpoint's vocabulary")
    model_config.vocab_size = len(vocab)
    splits = split_ids(ids, cfg.val_frac, cfg.test_frac)
    batcher = StreamBatcher(splits.train, cfg.batch_size, cfg.seq_len)
    if cfg.val_frac > 0 and len(splits.val) < cfg.seq_len + 1:
        raise DataError(
            f"the validation split has {len(splits.val)} characters but needs at least {cfg.seq_len + 1} "
            f"(one --seq-len window): raise --val-frac, lower --seq-len, or pass --val-frac 0"
        )
    total_steps = cfg.max_steps
    epochs = cfg.epochs
    if cfg.max_steps is None and cfg.epochs is None and cfg.time_budget is None:
        epochs = DEFAULT_EPOCHS
    if epochs is not None:
        by_epochs = max(1, math.ceil(epochs * len(batcher)))
        total_steps = by_epochs if total_steps is None else min(total_steps, by_epochs)

    from . import distributed

    dist, device = distributed.from_environment(cfg.device)
    together = False  # whether every rank leaves at the same point (then they may meet at a last barrier)
    try:
        from .precision import plan_for

        # what runs in which dtype (refuses a request the device cannot honour, before the run directory exists)
        plan = plan_for(device, model_config.cell, model_config.hidden_size, cfg.precision, cfg.kernel)
        shard = dist.shard(cfg.batch_size)
        if resumed is not None and resumed["progress"].get("world_size", 1) != dist.world:
            raise UsageError(
                f"this run was trained with {resumed['progress'].get('world_size', 1)} process(es); resume it with "
                f"the same number (now {dist.world}), because each holds its own share of the streams' state"
            )
        run_dir = dist.broadcast_str(run_dir or default_run_dir(text.source))
        if not dist.is_main:
            log.addFilter(_quiet_rank)  # one voice: rank 0 reports (removed again below)
        lock, failure = None, None
        if dist.is_main:
            try:
                lock = _prepare_run_dir(run_dir, resumed)
            except CharrnnError as exc:
                failure = exc
        failure = dist.agree_on_failure(failure)  # rank 0's verdict, on every rank (also the barrier)
        if failure is not None:
            together = True
            raise failure
        try:
            result = _train_loop(text, vocab, splits, batcher, model_config, cfg, run_dir, resumed, total_steps,
                                 progress and dist.is_main, on_step, dist, shard, device, plan)
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


def _quiet_rank(record: logging.LogRecord) -> bool:
    """A filter for ranks other than 0: warnings and errors only (the logger's own level stays the user's)."""
    return record.levelno >= logging.WARNING


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


def _train_loop(text, vocab, splits, batcher, model_config, cfg, run_dir, resumed, total_steps, progress, on_step,
                dist, shard, device, plan):
    import numpy as np
    import torch
    from tqdm import tqdm

    from .evaluate import LN2, score_ids
    from .model import CharRNN
    from .precision import torch_dtype

    if model_config.dropout is None and cfg.time_budget is None:
        # --dropout auto with a run whose length is known in steps: decided now (with a time budget, the loop
        # decides once it has measured its speed)
        model_config.dropout = auto_dropout(total_steps / len(batcher))
        log.info(f"dropout {model_config.dropout:g} (auto: {total_steps / len(batcher):.1f} passes over the "
                 f"training split)")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    random.seed(cfg.seed)
    model = CharRNN(model_config, kernel=plan.kernel).to(device)
    dist.broadcast_parameters(model)  # rank 0's initial weights everywhere (equal seeds need not give equal QRs)
    model.compute_dtype = torch_dtype(plan.fused_dtype)  # the fused kernel's operand dtype; weights stay fp32
    model.core_outside_autocast = plan.core_outside_autocast
    autocast_dtype = torch_dtype(plan.autocast)
    scaler = torch.amp.GradScaler(device.type) if plan.grad_scaler else None
    log.info(f"precision: {plan.describe()}")
    optimizer = make_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
    step, epoch, batch_index, elapsed_before = 0, 0, 0, 0.0
    skipped_in_a_row = 0
    # the cosine's length; a separate schedule_steps lets a run stop early and continue later unchanged
    horizon = cfg.schedule_steps or total_steps
    best_val: Optional[float] = None
    local_batch = shard.stop - shard.start  # this rank's streams
    state = model.init_state(local_batch, device)
    latest_path = os.path.join(run_dir, ckpt_io.LATEST)
    best_path = os.path.join(run_dir, ckpt_io.BEST)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None and resumed.get("grad_scaler"):
            scaler.load_state_dict(resumed["grad_scaler"])
        progress_state = resumed["progress"]
        step, epoch, batch_index = progress_state["step"], progress_state["epoch"], progress_state["batch"]
        elapsed_before = progress_state["elapsed"]
        best_val = progress_state["best_val_loss"]
        state = resumed["hidden"][..., shard, :].to(device)  # (..., B, H): this rank's streams
        torch.set_rng_state(resumed["rng"]["torch_ranks"][dist.rank] if dist.enabled else resumed["rng"]["torch"])
        if device.type == "cuda" and "cuda_ranks" in resumed["rng"]:
            torch.cuda.set_rng_state(resumed["rng"]["cuda_ranks"][dist.rank], device)
        random.setstate(_python_rng_from_plain(resumed["rng"]["python"]))
        skipped_in_a_row = progress_state.get("skipped_in_a_row", 0)
        if dist.is_main:
            _truncate_metrics(metrics_path, step)
        log.info(f"resuming {resumed['path']} at step {step}")
        old_horizon = progress_state.get("schedule_steps")
        if old_horizon is not None and horizon != old_horizon and step < (horizon or 0):
            log.warning(
                f"the learning-rate schedule now decays over {horizon} steps instead of {old_horizon}, so this run "
                f"will differ from an uninterrupted one (pass --schedule-steps to fix the schedule's length)"
            )
    elif dist.is_main:
        _truncate_metrics(metrics_path, 0)
    if dist.enabled:
        torch.manual_seed(cfg.seed + 1 + dist.rank) if resumed is None else None  # distinct dropout masks per rank

    def snapshot() -> dict:
        # collectives first: every rank must take part, whichever writes
        hidden = torch.cat(dist.all_gather(state.detach()), dim=-2) if dist.enabled else state.detach()
        rng = {"torch": torch.get_rng_state(), "python": _python_rng_to_plain(random.getstate())}
        if dist.enabled:
            rng["torch_ranks"] = dist.all_gather(torch.get_rng_state())
        if device.type == "cuda":  # the generator of the device dropout draws from, for every rank
            rng["cuda_ranks"] = dist.all_gather(torch.cuda.get_rng_state(device))
        return {
            "model_config": to_dict(model_config),
            "train_config": to_dict(cfg),
            "vocab": vocab.chars,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": _to_cpu(optimizer.state_dict()),
            "progress": {
                "step": step,
                "epoch": epoch,
                "batch": batch_index,
                "elapsed": elapsed,
                "best_val_loss": best_val,
                "chars_seen": step * cfg.batch_size * cfg.seq_len,
                "world_size": dist.world,
                "schedule_steps": horizon,
                "skipped_in_a_row": skipped_in_a_row,
            },
            "hidden": hidden.cpu(),
            "rng": rng,
            "corpus": {"source": text.source, "sha256": text.sha256, "chars": text.chars},
            "precision": plan.as_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "torch_version": str(torch.__version__),
            "saved_at": time.time(),
        }

    save_steps, save_seconds = cfg.save_interval()
    resumed_from = resumed["path"] if resumed is not None else None
    last_save_elapsed = elapsed_before  # training time, which all ranks agree on (a wall clock each would not)

    pending_failure: list = []  # a write error on rank 0, raised on every rank at the next save

    def save(best: bool) -> None:
        nonlocal last_save_elapsed
        paths = [latest_path] + ([best_path] if best else [])
        if cfg.keep_last:
            paths.append(os.path.join(run_dir, ckpt_io.step_name(step)))
        payload = snapshot()  # every rank takes part in its collectives
        failure = pending_failure[0] if pending_failure else None
        if dist.is_main and failure is None:
            try:
                ckpt_io.save_checkpoint(payload, paths)
                if cfg.keep_last:
                    # only now that the new checkpoint is in place; never the file this run resumed from, and
                    # never a later one left by an abandoned continuation
                    ckpt_io.prune_step_checkpoints(run_dir, cfg.keep_last, protect=resumed_from, upto=step)
            except CharrnnError as exc:
                failure = exc
        failure = dist.agree_on_failure(failure)  # also the barrier that keeps ranks together
        if failure is not None:
            raise failure
        last_save_elapsed = elapsed

    try:
        metrics = open(metrics_path, "a", encoding="utf-8") if dist.is_main else None
    except OSError as exc:
        raise CannotCreateError(f"cannot write {metrics_path}: {exc.strerror or exc}") from None

    def log_row(row: dict) -> None:
        if metrics is None or pending_failure:
            return
        try:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            failure = WriteError(f"could not write {metrics_path}: {reason}")
            if not dist.enabled:
                raise failure from None
            pending_failure.append(failure)  # the other ranks learn of it at the next save

    budget = cfg.time_budget
    total_for_bar = total_steps if total_steps is not None else None
    bar = tqdm(
        total=total_for_bar if total_for_bar is not None else (int(budget) if budget else None),
        initial=step if total_for_bar is not None else 0,
        unit="step" if total_for_bar is not None else "s",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
    )
    chars_per_step = cfg.batch_size * cfg.seq_len
    start = time.perf_counter()
    elapsed = elapsed_before
    last_loss: Optional[float] = None
    last_val: Optional[float] = None
    val_history = []
    rate = 0.0
    rate_t0, rate_steps = time.perf_counter(), 0
    stopped_by = "max_steps"
    pin = device.type == "cuda"
    poison_steps, poison = _test_poison()  # test-only fault injection
    nan_rank = int(os.environ.get("CHARRNN_TEST_NAN_RANK", "0") or 0)  # test-only: which rank is poisoned
    step_delay = float(os.environ.get("CHARRNN_TEST_STEP_DELAY", "0") or 0)  # test-only: room for a signal
    crash_at = tuple(map(int, os.environ["CHARRNN_TEST_CRASH_AT"].split(":"))) if os.environ.get(
        "CHARRNN_TEST_CRASH_AT") else None  # test-only: "RANK:STEP"

    def progress_fraction() -> float:
        p = 0.0
        if horizon:
            p = max(p, step / horizon)
        if budget:
            p = max(p, elapsed / budget)
        return p

    def run_eval() -> Optional[float]:
        if len(splits.val) < 2:
            return None
        compute_dtype, model.compute_dtype = model.compute_dtype, None  # the validation loss is measured in fp32
        try:
            score = score_ids(model, splits.val, streams=cfg.batch_size, chunk=cfg.seq_len, device=device,
                              rank=dist.rank, world=dist.world)
        finally:
            model.compute_dtype = compute_dtype
        nats, chars = dist.sum_values([score.nats, float(score.chars)])
        return nats / chars

    probe: list = []  # (step, elapsed) where --dropout auto starts timing the run

    def decide_dropout() -> None:
        """--dropout auto with a time budget: time AUTO_DROPOUT_PROBE steps (after a few to warm up), project the
        steps the budget allows, and set the dropout from the passes over the training split they make. Every
        rank decides alike: `elapsed` and `step` are agreed values."""
        if step - first_step == AUTO_DROPOUT_WARMUP:
            probe.append((step, elapsed))
        if not probe or step - probe[0][0] < AUTO_DROPOUT_PROBE:
            return
        per_step = (elapsed - probe[0][1]) / (step - probe[0][0])
        planned = step + max(0.0, budget - elapsed) / max(per_step, 1e-9)
        if total_steps is not None:
            planned = min(planned, total_steps)
        passes = planned / len(batcher)
        model.set_dropout(auto_dropout(passes))  # also sets model_config.dropout, which checkpoints save
        log.info(f"dropout {model_config.dropout:g} (auto: about {passes:.1f} passes over the training split in "
                 f"the time budget, at {chars_per_step / per_step:,.0f} chars/s)")

    def nonfinite_stop(bad_step: int, in_a_row: str) -> None:
        raise NonFiniteLossError(
            f"non-finite loss at step {bad_step}{in_a_row}; the last good checkpoint is {latest_path}"
            if os.path.exists(latest_path)
            else f"non-finite loss at step {bad_step}{in_a_row}; no checkpoint was saved")

    # per-step host reads only where a step's outcome must be known at once: skipping a non-finite step, the
    # ranks' agreement, or a caller's on_step; otherwise a non-finite step is noted on the device and the run
    # stops at the next read (a log, evaluation or save point), before anything is saved
    check_every_step = cfg.on_nonfinite == "skip" or on_step is not None
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    first_step = step
    model.train()
    try:
        with _SignalFlag() as signals:
            while True:
                if total_steps is not None and step >= total_steps:
                    stopped_by = "max_steps" if cfg.max_steps and step >= cfg.max_steps else "epochs"
                    break
                if budget is not None and elapsed >= budget:
                    stopped_by = "time_budget"
                    break
                if batch_index == 0:
                    state = model.init_state(local_batch, device)  # each epoch starts from a zero state
                x_np, y_np = batcher.batch(batch_index, shard)
                x = torch.from_numpy(x_np.astype(np.int64))
                y = torch.from_numpy(y_np.astype(np.int64))
                if pin:  # page-locked host memory lets the copy to the GPU run asynchronously
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                lr = learning_rate(cfg, step, progress_fraction())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # Truncated BPTT: keep the state's value (row i of this batch continues row i of the last one)
                # but cut the graph, so backward stops at this window's start.
                state = state.detach()
                state_in = state
                with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    _, loss, state = model(x, state, y)
                state = state.float()  # a no-op in fp32; the carried state stays fp32 in every mode
                if step + 1 in poison_steps and dist.rank == nan_rank:
                    loss = loss * poison  # real NaN/Inf gradients, so a missed check would poison the weights
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                dist.average_gradients(model.parameters())  # a rank's NaN reaches every rank's gradients
                if scaler is not None:
                    scaler.unscale_(optimizer)  # the clip and the check see the true gradients
                grad_norm = clip_gradients(model.parameters(), cfg.grad_clip)
                # with loss scaling an overflowed gradient is the scaler's business (it skips the step and lowers
                # the scale); a non-finite loss is ours
                bad = ~torch.isfinite(loss.detach()) if scaler is not None else ~(
                    torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
                loss_value = None  # read from the device only where needed: each host read waits for the GPU
                if crash_at and step + 1 == crash_at[1] and dist.rank == crash_at[0]:
                    os._exit(3)  # test-only: a rank dying without a word
                if dist.enabled:
                    # one all-reduce carries what every rank must agree on: the mean loss, any rank's
                    # non-finite step, whether any rank was signalled (SIGINT, SIGTERM), and the mean elapsed time
                    signum = signals.signum
                    shared = dist.all_reduce_sum(torch.stack([
                        loss.detach().double(), bad.double(),
                        *torch.tensor([signum == signal.SIGINT, signum == signal.SIGTERM,
                                       elapsed_before + (time.perf_counter() - start)], dtype=torch.float64)
                        .to(dist.device)])).tolist()
                    loss_value = shared[0] / dist.world
                    # decide on the reduced flags only: a signal arriving after this point waits for the next
                    # step, or one rank would save (a collective) while the other trains on
                    finite = shared[1] == 0
                    agreed_stop = (EXIT_SIGINT if shared[2] > 0 else EXIT_SIGTERM) if shared[2] + shared[3] else 0
                    shared_elapsed = shared[4] / dist.world
                elif check_every_step:
                    finite = not bool(bad.item())
                    loss_value = loss.item()
                else:  # noted on the device, acted on at the next point that reads the host (no per-step sync)
                    first_bad = torch.where((first_bad < 0) & bad, step + 1, first_bad)
                    finite = True
                if finite:
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    skipped_in_a_row = 0
                elif cfg.on_nonfinite == "skip" and skipped_in_a_row < MAX_SKIPS_IN_A_ROW:
                    # the weights stay as they were; the state this window produced may be non-finite, so the
                    # next window starts from the last finite one
                    skipped_in_a_row += 1
                    optimizer.zero_grad(set_to_none=True)
                    state = state_in
                    log.warning(f"non-finite loss at step {step + 1}: skipped the step")
                    log_row({"step": step + 1, "epoch": epoch, "skipped": "non-finite loss"})
                else:
                    # raised before any save, so the bad state never reaches latest.pt or best.pt
                    in_a_row = f" ({skipped_in_a_row + 1} steps in a row)" if skipped_in_a_row else ""
                    nonfinite_stop(step + 1, in_a_row)
                step += 1
                batch_index += 1
                if batch_index == len(batcher):
                    batch_index, epoch = 0, epoch + 1
                if step_delay:
                    time.sleep(step_delay)
                elapsed = shared_elapsed if dist.enabled else elapsed_before + (time.perf_counter() - start)
                if model_config.dropout is None:
                    decide_dropout()
                rate_steps += 1
                now = time.perf_counter()
                if now - rate_t0 >= 1.0:
                    rate = rate_steps * chars_per_step / (now - rate_t0)
                    rate_t0, rate_steps = now, 0
                finishing = (total_steps is not None and step >= total_steps) or (
                    budget is not None and elapsed >= budget
                )
                evaluating = step % cfg.eval_every == 0 or finishing
                logging_now = step % cfg.log_every == 0
                if loss_value is None and (logging_now or evaluating or signals.signum is not None
                                           or save_steps is not None or save_seconds is not None):
                    # the host reads the device here: first whether any step since the last read was
                    # non-finite (then the run stops before anything is saved), then the loss
                    bad_step = int(first_bad.item())
                    if bad_step >= 0:
                        nonfinite_stop(bad_step, "")
                    loss_value = loss.item()
                if finite and loss_value is not None:
                    last_loss = loss_value
                if logging_now and finite:
                    log_row({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr,
                             "grad_norm": grad_norm.item(), "elapsed": round(elapsed, 3),
                             "chars_per_sec": round(rate, 1)})
                saved = False
                if evaluating:
                    val = run_eval()
                    improved = False
                    if val is not None:
                        last_val = val
                        val_history.append(val)
                        log_row({"step": step, "val_loss": val, "val_bpc": val / LN2})
                        improved = best_val is None or val < best_val
                        if improved:
                            best_val = val
                    else:
                        improved = True  # without a validation split, best is the latest
                    save(best=improved)
                    saved = True
                elif (save_steps is not None and step % save_steps == 0) or (
                    save_seconds is not None and elapsed - last_save_elapsed >= save_seconds
                ):
                    save(best=False)
                    saved = True
                if progress:
                    # tqdm shows step/limit and the ETA (or elapsed/budget and time left); the rest goes here
                    postfix = {"step": step, "epoch": epoch, "loss": f"{last_loss:.3f}" if last_loss is not None else "-"}
                    if last_val is not None:
                        postfix["val"] = f"{last_val:.3f}"
                    postfix["lr"] = f"{lr:.2e}"
                    postfix["chars/s"] = f"{rate:,.0f}"
                    bar.set_postfix(postfix, refresh=False)
                    if total_for_bar is not None:
                        bar.update(1)
                    else:
                        bar.n = min(int(elapsed), bar.total or int(elapsed))
                        bar.refresh()
                if on_step is not None:
                    on_step({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr})
                stop_code = agreed_stop if dist.enabled else (
                    0 if signals.signum is None else EXIT_SIGINT if signals.signum == signal.SIGINT else EXIT_SIGTERM)
                if stop_code:
                    if not saved:
                        save(best=False)
                    code = stop_code  # the signal any rank received (SIGINT first), the same on every rank
                    name = "SIGINT" if code == EXIT_SIGINT else "SIGTERM"
                    raise Interrupted(
                        f"{name}: stopped after step {step}; saved {latest_path} "
                        f"(continue with: charrnn train --resume {run_dir})" if dist.is_main else "",
                        code,
                    )
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return TrainResult(
        run_dir=run_dir,
        latest=latest_path,
        best=best_path if os.path.exists(best_path) else None,
        step=step,
        epoch=epoch,
        best_val_loss=best_val,
        last_val_loss=last_val,
        last_train_loss=last_loss,
        elapsed=elapsed,
        stopped_by=stopped_by,
        val_history=val_history,
    )


def _to_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return [_to_cpu(v) for v in obj]
    return obj


def _test_poison() -> tuple[set, float]:
    """Test-only: CHARRNN_TEST_NAN_AT_STEP="13" (or "13,14", or "13:inf") multiplies the loss of those steps by
    NaN (or Inf), which makes the loss and every gradient non-finite."""
    value = os.environ.get("CHARRNN_TEST_NAN_AT_STEP", "")
    if not value:
        return set(), float("nan")
    steps, _, kind = value.partition(":")
    return {int(s) for s in steps.split(",") if s.strip()}, float(kind or "nan")


def _python_rng_to_plain(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_plain(plain) -> tuple:
    version, internal, gauss = plain
    return (version, tuple(internal), gauss)


def _truncate_metrics(path: str, step: int) -> None:
    """Drop metric rows past `step` (written after the checkpoint we resume from), so the log of a resumed run
    equals that of an uninterrupted one."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if row.get("step", 0) <= step:
                kept.append(json.dumps(row) + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
