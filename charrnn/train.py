"""The training loop: stateful truncated BPTT over parallel streams, clipping, AdamW, warm-up + cosine decay.

    reset h at epoch start -> for each batch: detach h (the truncation point) -> forward -> cross-entropy over B*T
    -> zero_grad -> backward -> clip -> check finite -> step -> every eval_every steps: val loss, save latest/best.

Stop at max_steps, after `epochs`, or when the wall-clock `time_budget` is spent (the learning-rate schedule then
decays by elapsed fraction of the budget, so a short run still ends at its low learning rate). SIGINT/SIGTERM set a
flag; the loop finishes the current step, saves, and raises `Interrupted`.
"""

from __future__ import annotations

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
from typing import Optional

from . import checkpoint as ckpt_io
from .config import ModelConfig, TrainConfig, from_dict, to_dict
from .errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    CannotCreateError,
    DataError,
    Interrupted,
    NonFiniteLossError,
    UsageError,
)

log = logging.getLogger("charrnn")

DEFAULT_EPOCHS = 10.0
# options that may differ when resuming; any other difference is refused
RESUMABLE_CHANGES = {"max_steps", "epochs", "time_budget", "eval_every", "log_every", "device", "kernel"}


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


def make_optimizer(model, lr: float, betas: tuple, weight_decay: float):
    """AdamW with weight decay on the weight matrices only (biases and nothing else are decayed)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def default_run_dir(source: str, base: str = "checkpoints") -> str:
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
) -> TrainResult:
    """Train a CharRNN on `corpus` (a file, a directory, '-' for stdin, None for the demo corpus).

    `explicit` names the options the user set on purpose (the CLI passes them); when resuming, those must agree
    with the checkpoint except for the ones in RESUMABLE_CHANGES.
    """
    import numpy as np
    import torch

    from .data import DEMO_SOURCE, StreamBatcher, Vocab, load_ids, split_ids
    from .evaluate import LN2, score_ids
    from .model import CharRNN
    from .runtime import resolve_device

    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    explicit = set(explicit or ())
    resumed = None

    # -- configuration: fresh, or from the checkpoint being resumed ---------------------------------------------
    if resume is not None:
        resumed = ckpt_io.load_checkpoint(ckpt_io.resolve_checkpoint(resume))
        saved_model = from_dict(ModelConfig, resumed["model_config"])
        saved_train = from_dict(TrainConfig, resumed["train_config"])
        differences = []
        for cfg_new, cfg_old in ((model_config, saved_model), (train_config, saved_train)):
            for name in to_dict(cfg_old):
                if name in explicit and name not in RESUMABLE_CHANGES and name != "vocab_size":
                    new, old = getattr(cfg_new, name), getattr(cfg_old, name)
                    if new != old:
                        differences.append(f"--{name.replace('_', '-')} {new} (checkpoint has {old})")
        if differences:
            raise UsageError("cannot resume with a different configuration: " + "; ".join(differences))
        for name in RESUMABLE_CHANGES & explicit:
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
    text = load_ids(corpus, cfg.glob, progress=progress)  # memory-mapped from the cache for big corpora
    if resumed is not None and text.sha256 != resumed["corpus"]["sha256"]:
        raise DataError(
            f"cannot resume: the corpus differs from the one this run was trained on "
            f"(sha256 {text.sha256[:12]}... vs {resumed['corpus']['sha256'][:12]}...)"
        )
    if not text.chars:
        raise DataError(f"the corpus {text.source} is empty")
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

    # -- run directory: create, check writable, lock, clean up after a killed run -----------------------------
    run_dir = run_dir or default_run_dir(text.source)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise CannotCreateError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise CannotCreateError(f"run directory {run_dir} is not writable")
    lock = ckpt_io.RunLock(run_dir).acquire()
    if resumed is None and os.path.exists(os.path.join(run_dir, ckpt_io.LATEST)):
        lock.release()
        raise CannotCreateError(
            f"run directory {run_dir} already holds a run: continue it with --resume {run_dir}, "
            f"or pass another --run-dir"
        )
    try:
        ckpt_io.remove_stale_temps(run_dir)
        return _train_loop(
            text, vocab, splits, batcher, model_config, cfg, run_dir, resumed, total_steps, progress
        )
    finally:
        lock.release()


def _train_loop(text, vocab, splits, batcher, model_config, cfg, run_dir, resumed, total_steps, progress):
    import numpy as np
    import torch
    from tqdm import tqdm

    from .evaluate import LN2, score_ids
    from .model import CharRNN
    from .runtime import resolve_device

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = CharRNN(model_config, kernel=cfg.kernel).to(device)
    optimizer = make_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay)
    step, epoch, batch_index, elapsed_before = 0, 0, 0, 0.0
    best_val: Optional[float] = None
    state = model.init_state(cfg.batch_size, device)
    latest_path = os.path.join(run_dir, ckpt_io.LATEST)
    best_path = os.path.join(run_dir, ckpt_io.BEST)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        progress_state = resumed["progress"]
        step, epoch, batch_index = progress_state["step"], progress_state["epoch"], progress_state["batch"]
        elapsed_before = progress_state["elapsed"]
        best_val = progress_state["best_val_loss"]
        state = resumed["hidden"].to(device)
        torch.set_rng_state(resumed["rng"]["torch"])
        if device.type == "cuda" and "cuda" in resumed["rng"]:
            torch.cuda.set_rng_state(resumed["rng"]["cuda"])
        random.setstate(_python_rng_from_plain(resumed["rng"]["python"]))
        _truncate_metrics(metrics_path, step)
        log.info(f"resuming {resumed['path']} at step {step}")
    else:
        _truncate_metrics(metrics_path, 0)

    def snapshot() -> dict:
        rng = {"torch": torch.get_rng_state(), "python": _python_rng_to_plain(random.getstate())}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
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
            },
            "hidden": state.detach().cpu(),
            "rng": rng,
            "corpus": {"source": text.source, "sha256": text.sha256, "chars": text.chars},
            "torch_version": str(torch.__version__),
            "saved_at": time.time(),
        }

    def save(best: bool) -> None:
        paths = [latest_path] + ([best_path] if best else [])
        ckpt_io.save_checkpoint(snapshot(), paths)

    metrics = open(metrics_path, "a", encoding="utf-8")

    def log_row(row: dict) -> None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

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
    nan_at = int(os.environ.get("CHARRNN_TEST_NAN_AT_STEP", "0") or 0)  # test-only fault injection

    def progress_fraction() -> float:
        p = 0.0
        if total_steps:
            p = max(p, step / total_steps)
        if budget:
            p = max(p, elapsed / budget)
        return p

    def run_eval() -> Optional[float]:
        if len(splits.val) < 2:
            return None
        score = score_ids(model, splits.val, streams=cfg.batch_size, chunk=cfg.seq_len, device=device)
        return score.nats_per_char

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
                    state = model.init_state(cfg.batch_size, device)  # each epoch starts from a zero state
                x_np, y_np = batcher.batch(batch_index)
                x = torch.from_numpy(x_np.astype(np.int64)).to(device, non_blocking=True)
                y = torch.from_numpy(y_np.astype(np.int64)).to(device, non_blocking=True)
                lr = learning_rate(cfg, step, progress_fraction())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # Truncated BPTT: keep the state's value (row i of this batch continues row i of the last one)
                # but cut the graph, so backward stops at this window's start.
                state = state.detach()
                _, loss, state = model(x, state, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
                loss_value = loss.item()
                if nan_at and step + 1 == nan_at:
                    loss_value = float("nan")
                if not (math.isfinite(loss_value) and math.isfinite(grad_norm.item())):
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1}; the last good checkpoint is {latest_path}"
                        if os.path.exists(latest_path)
                        else f"non-finite loss at step {step + 1}; no checkpoint was saved"
                    )
                optimizer.step()
                step += 1
                batch_index += 1
                if batch_index == len(batcher):
                    batch_index, epoch = 0, epoch + 1
                last_loss = loss_value
                elapsed = elapsed_before + (time.perf_counter() - start)
                rate_steps += 1
                now = time.perf_counter()
                if now - rate_t0 >= 1.0:
                    rate = rate_steps * chars_per_step / (now - rate_t0)
                    rate_t0, rate_steps = now, 0
                if step % cfg.log_every == 0:
                    log_row({"step": step, "epoch": epoch, "loss": loss_value, "lr": lr,
                             "grad_norm": grad_norm.item(), "elapsed": round(elapsed, 3),
                             "chars_per_sec": round(rate, 1)})
                finishing = (total_steps is not None and step >= total_steps) or (
                    budget is not None and elapsed >= budget
                )
                if step % cfg.eval_every == 0 or finishing:
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
                    elapsed = elapsed_before + (time.perf_counter() - start)
                if progress:
                    postfix = {"loss": f"{loss_value:.3f}"}
                    if last_val is not None:
                        postfix["val"] = f"{last_val:.3f}"
                    postfix["chars/s"] = f"{rate:,.0f}"
                    bar.set_postfix(postfix, refresh=False)
                    if total_for_bar is not None:
                        bar.update(1)
                    else:
                        bar.n = min(int(elapsed), bar.total or int(elapsed))
                        bar.refresh()
                if signals.signum is not None:
                    save(best=False) if not finishing else None
                    code = EXIT_SIGINT if signals.signum == signal.SIGINT else EXIT_SIGTERM
                    name = "SIGINT" if signals.signum == signal.SIGINT else "SIGTERM"
                    raise Interrupted(
                        f"{name}: stopped after step {step}; saved {latest_path} "
                        f"(continue with: charrnn train --resume {run_dir})",
                        code,
                    )
    finally:
        bar.close()
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
    os.replace(tmp, path)
