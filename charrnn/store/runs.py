"""`charrnn runs [DIR]`: the runs under $CHARRNN_HOME/checkpoints (or DIR), what each is and how far it got.

A run is a directory holding latest.pt (DIR itself, or one of its subdirectories); a directory without one is
skipped unless a live process holds its lock (a run before its first checkpoint). latest.pt is read for its plain
values only: memory-mapped with torch.load(weights_only=True), no model is built and the tensors are not read (the
content digest is not checked: `charrnn info` does that). A checkpoint that cannot be read makes its run
"unreadable", never the whole listing. torch is imported only when there is a checkpoint to read.

The state of a run:
  running      a live process holds the run directory's lock (RunLock's flock);
  finished     latest.pt says the run ended at its step limit or time budget (or, in a checkpoint that does not
               record how it ended, its step reached --max-steps / --epochs or its training time --time-budget);
  interrupted  it stopped short of that (a signal, a crash, a kill, a non-finite loss);
  unreadable   latest.pt cannot be read.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import math
import os
from typing import Optional

from ..config import step_limit
from .checkpoint import BEST, FORMAT, LATEST, READABLE_VERSIONS
from .metrics import LN2
from .units import duration, size

LOCK = "lock"
RUNNING, FINISHED, INTERRUPTED, UNREADABLE = "running", "finished", "interrupted", "unreadable"


def list_runs(directory: Optional[str] = None) -> list[dict]:
    """The runs under `directory` (default $CHARRNN_HOME/checkpoints), newest first (latest.pt's modification
    time), each a plain dict (the `--json` shape). A missing default directory is no runs; a missing DIR given by
    the user is InputMissingError (exit 66)."""
    from ..errors import InputMissingError

    if directory is None:
        from .paths import runs_dir

        directory = runs_dir()
        if not os.path.isdir(directory):
            return []
    elif not os.path.isdir(directory):
        raise InputMissingError(f"no such directory: {directory}" if not os.path.exists(directory)
                                else f"not a directory: {directory}")
    candidates = [directory]
    try:
        with os.scandir(directory) as entries:
            candidates += sorted(e.path for e in entries if _is_dir(e))
    except OSError as exc:
        from ..errors import unreadable

        raise unreadable(exc, directory, "directory") from None
    found = [(run, mtime) for run, mtime in ((c, _run_mtime(c)) for c in candidates) if mtime is not None]
    found.sort(key=lambda pair: (-pair[1], os.path.basename(pair[0])))
    return [describe_run(run) for run, _ in found]


def best_run(runs: list[dict], corpus: Optional[str] = None) -> Optional[dict]:
    """The run with the lowest best validation loss that has a best.pt, among the runs trained on one corpus (losses
    on different texts do not compare): `corpus` (its recorded source, that source's file name, or its sha256),
    else the newest run's (runs are listed newest first). None if there is none."""
    scored = [r for r in runs if r["best_val_loss"] is not None and r["best"] is not None
              and math.isfinite(r["best_val_loss"])]
    if corpus is not None:
        scored = [r for r in scored if _same_corpus(r, corpus)]
    else:
        known = [r for r in runs if r.get("corpus_sha256")]
        if known:
            scored = [r for r in scored if r.get("corpus_sha256") == known[0]["corpus_sha256"]]
    return min(scored, key=lambda r: r["best_val_loss"]) if scored else None


def _same_corpus(run: dict, corpus: str) -> bool:
    source = run.get("corpus") or ""
    if corpus in (source, run.get("corpus_sha256")):
        return True
    if os.path.exists(corpus) and source and os.path.abspath(corpus) == os.path.abspath(source):
        return True
    return bool(source) and _corpus_name(source) == corpus


# the options a run's table shows where the listed runs differ in them (model: cell, layers, width are shown
# anyway), in this order, with their column names
OPTION_COLUMNS = {"lr": "lr", "dropout": "dropout", "batch_size": "batch", "seq_len": "seq-len",
                  "recurrent_init": "init", "weight_decay": "wd", "optimizer": "opt", "grad_clip": "clip", "ema": "ema",
                  "warmup_steps": "warmup", "min_lr_frac": "min-lr", "schedule_steps": "sched-steps",
                  "max_steps": "max-steps", "epochs": "epochs", "time_budget": "budget", "precision": "precision",
                  "kernel": "kernel", "val_frac": "val-frac", "test_frac": "test-frac", "seed": "seed"}


def run_options(meta: Optional[dict]) -> dict:
    """The options of OPTION_COLUMNS the run was trained with (model and training configs), as recorded."""
    if not meta:
        return {}
    merged = {**(meta.get("train_config") or {}), **(meta.get("model_config") or {})}
    return {key: merged.get(key) for key in OPTION_COLUMNS if key in merged}


def differing_options(runs: list[dict]) -> list[str]:
    """The options in which the runs that record them differ (none for a single run)."""
    recorded = [r["options"] for r in runs if r.get("options")]
    if len(recorded) < 2:
        return []
    return [key for key in OPTION_COLUMNS if len({repr(o.get(key)) for o in recorded}) > 1]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _run_mtime(directory: str) -> Optional[float]:
    """latest.pt's modification time if `directory` is a run; the lock's for a run before its first checkpoint;
    None if it is not a run."""
    try:
        return os.stat(os.path.join(directory, LATEST)).st_mtime
    except OSError:
        pass
    if lock_holder(directory) is None:
        return None
    try:
        return os.stat(os.path.join(directory, LOCK)).st_mtime
    except OSError:
        return None


def lock_holder(directory: str) -> Optional[int]:
    """The PID written in the run directory's lock if a live process holds its flock (0 if the PID cannot be
    read), else None. The probe never takes the lock, so a trainer starting at that moment is never refused:
    on Linux it reads the kernel's table of locks (/proc/locks) for the lock file's inode; elsewhere it falls back
    to taking a shared flock without blocking and letting go at once."""
    path = os.path.join(directory, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        held = _flock_held(os.fstat(fd))
        if held is None:  # no /proc/locks: the shared-flock probe
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                held = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                held = False
        if not held:
            return None
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


PROC_LOCKS = "/proc/locks"


def _flock_held(st: os.stat_result, table: str = PROC_LOCKS) -> Optional[bool]:
    """Whether the kernel's lock table lists a flock held on the file `st` describes; None where there is no such
    table to read. Lines read like `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF` (device major:minor in hex,
    then the inode); a waiter's line has `->` after the number and holds nothing."""
    try:
        with open(table) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return True
        except ValueError:
            continue
    return False


def read_meta(path: str) -> Optional[dict]:
    """A checkpoint's plain values (its tensors memory-mapped, not read), or None if it cannot be read."""
    import torch

    from .checkpoint import _check_torch_is_safe

    _check_torch_is_safe()  # a CharrnnError: the whole command fails, as every command that loads would
    try:
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # whatever torch's reader throws on a damaged or foreign file
        return None
    if (not isinstance(state, dict) or state.get("format") != FORMAT
            or state.get("version") not in READABLE_VERSIONS):
        return None
    keep = ("model_config", "train_config", "progress", "corpus", "saved_at")
    return {key: state.get(key) for key in keep}


def planned_steps(meta: dict) -> Optional[int]:
    """The run's step limit as latest.pt records it; None if it has none (a time budget alone). A checkpoint from
    before that record: the trainer's horizon, which is the limit unless --schedule-steps set it, else the limit
    from the recorded options (config.step_limit, as the trainer's stop rule)."""
    train, progress = meta.get("train_config") or {}, meta.get("progress") or {}
    if "planned_steps" in progress:
        return progress["planned_steps"]
    if not train.get("schedule_steps"):
        return progress.get("schedule_steps")
    return step_limit(train.get("max_steps"), train.get("epochs"), train.get("time_budget"),
                      batches_per_epoch(meta) or None)


def batches_per_epoch(meta: dict) -> Optional[int]:
    """Steps per pass over the training split: from the step counters after a whole epoch (step = epoch *
    batches + batch), else from the corpus size as data/batches.py's split_ids and StreamBatcher lay it out."""
    train, progress = meta.get("train_config") or {}, meta.get("progress") or {}
    step, epoch, batch = progress.get("step"), progress.get("epoch"), progress.get("batch")
    if isinstance(step, int) and isinstance(epoch, int) and isinstance(batch, int) and epoch >= 1:
        return (step - batch) // epoch
    chars = (meta.get("corpus") or {}).get("chars")
    try:
        n_train = chars - int(round(chars * train["val_frac"])) - int(round(chars * train["test_frac"]))
        return max(0, (n_train - 1) // train["batch_size"]) // train["seq_len"] or None
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def run_state(meta: dict) -> str:
    """finished or interrupted, as latest.pt records how the run ended (`stopped_by`, set in its last checkpoint;
    a time-budgeted run stops short of its budget in training time, as start-up and the final validation and save
    count too). A checkpoint from before that record (no `planned_steps` either): finished if its step reached
    the step limit or its training time the budget."""
    train, progress = meta.get("train_config") or {}, meta.get("progress") or {}
    if progress.get("stopped_by"):
        return FINISHED
    if "planned_steps" in progress:
        return INTERRUPTED
    total, budget = planned_steps(meta), train.get("time_budget")
    ended = (total is not None and (progress.get("step") or 0) >= total) or (
        budget is not None and (progress.get("elapsed") or 0.0) >= budget)
    return FINISHED if ended else INTERRUPTED


def describe_run(directory: str) -> dict:
    latest = os.path.join(directory, LATEST)
    best = os.path.join(directory, BEST)
    holder = lock_holder(directory)
    meta = read_meta(latest) if os.path.isfile(latest) else None
    model = (meta or {}).get("model_config") or {}
    progress = (meta or {}).get("progress") or {}
    corpus = (meta or {}).get("corpus") or {}
    best_val = progress.get("best_val_loss")
    if holder is not None:
        state = RUNNING
    elif meta is None:
        state = UNREADABLE
    else:
        state = run_state(meta)
    saved_at = (meta or {}).get("saved_at")
    return {
        "name": os.path.basename(os.path.abspath(directory)),
        "path": os.path.abspath(directory),
        "state": state,
        "pid": holder or None,
        "corpus": corpus.get("source"),
        "corpus_sha256": corpus.get("sha256"),
        "cell": model.get("cell"),
        "num_layers": model.get("num_layers"),
        "hidden_size": model.get("hidden_size"),
        "step": progress.get("step"),
        "planned_steps": planned_steps(meta) if meta else None,
        "epoch": progress.get("epoch"),
        "elapsed": progress.get("elapsed"),
        "best_val_loss": best_val,
        "best_val_bpc": best_val / LN2 if best_val is not None else None,
        "best": os.path.abspath(best) if os.path.isfile(best) else None,
        "saved_at": datetime.datetime.fromtimestamp(saved_at).isoformat(timespec="seconds") if saved_at else None,
        "size_bytes": disk_usage(directory),
        "options": run_options(meta),
    }


def disk_usage(directory: str) -> int:
    """Bytes the directory's files take on disk (allocated blocks, like du; a hard-linked file, such as best.pt
    sharing latest.pt's data, counted once)."""
    seen, total = set(), 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            blocks = getattr(st, "st_blocks", None)
            total += blocks * 512 if blocks is not None else st.st_size
    return total


# ----------------------------------------------------------------------------------------------------------------
# the table


def _corpus_name(source: Optional[str]) -> str:
    if not source:
        return "?"
    if source.startswith("<") or source == "-":
        return "stdin" if source == "-" else source
    return os.path.basename(source.rstrip("/")) or source


STATE_STYLE = {RUNNING: "cyan", FINISHED: "", INTERRUPTED: "yellow", UNREADABLE: "red"}


def runs_table(runs: list[dict]):
    """A rich Table of the runs, one row each."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("run", overflow="fold")
    table.add_column("corpus", overflow="fold")
    table.add_column("model", no_wrap=True)
    for name in ("steps", "time", "val nats/char", "bits/char"):
        table.add_column(name, justify="right", no_wrap=True)
    differ = differing_options(runs)
    for key in differ:
        table.add_column(OPTION_COLUMNS[key], justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    for r in runs:
        known = r["step"] is not None
        model = f"{r['cell']} {r['num_layers']}x{r['hidden_size']}" if r["cell"] else "-"
        steps = f"{r['step']:,}" if known else "-"
        if known and r["planned_steps"] and r["state"] != FINISHED:
            steps += f"/{r['planned_steps']:,}"
        best = r["best_val_loss"]
        table.add_row(
            r["name"],
            _corpus_name(r["corpus"]) if known else "-",
            model,
            steps,
            duration(r["elapsed"]) if r["elapsed"] is not None else "-",
            f"{best:.4f}" if best is not None else "-",
            f"{r['best_val_bpc']:.4f}" if best is not None else "-",
            *(_option_text(key, (r.get("options") or {}).get(key, "?") if r.get("options") else "?") for key in differ),
            f"[{STATE_STYLE[r['state']]}]{r['state']}[/]" if STATE_STYLE[r["state"]] else r["state"],
            size(r["size_bytes"], binary=True),
        )
    return table


def _option_text(key: str, value) -> str:
    if value is None:
        return "auto" if key == "dropout" else "-"
    if key == "time_budget" and isinstance(value, (int, float)):
        return duration(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
