"""The run directory: created (a new one exclusively, named after --name or the corpus), checked writable, locked,
cleaned of a killed run's unfinished saves; and, for a run that fails before its first checkpoint, removed again
(or only this run's files in it), so a failed run leaves nothing behind."""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

from ..errors import CannotCreateError, CharrnnError, StartupInterrupted
from ..store import checkpoint as ckpt_io

log = logging.getLogger("charrnn")


def _prepare_run_dir_on_rank_0(dist, run_dir, resumed, corpus, name):
    """Under torchrun: rank 0 creates and locks the run directory; its refusal is raised on every rank, and the
    directory it created is every rank's. Returns (the lock on rank 0, else None; the run directory)."""
    lock, failure = None, None
    if dist.is_main:
        try:
            lock, run_dir = _prepare_run_dir(run_dir, resumed, corpus, name)
        except CharrnnError as exc:
            failure = exc
    failure = dist.agree_on_failure(failure)  # rank 0's verdict, on every rank (also the barrier)
    if failure is not None:
        raise failure
    return lock, dist.broadcast_str(run_dir or "")


# ----------------------------------------------------------------------------------------------------------------
# a run that fails before its first checkpoint leaves nothing behind


def _discard_unsaved(run_dir: str, lock: "ckpt_io.RunLock", exc: BaseException, say: bool = True) -> None:
    """After a failure: if the run saved no checkpoint, remove what it created (the run directory if it made it;
    else only its own files: lock, metrics.jsonl, samples.txt) and say so in the error's message (or a log line
    for an exception without one, e.g. Ctrl-C)."""
    if os.path.exists(os.path.join(run_dir, ckpt_io.LATEST)):
        return  # a resumed run, or one that saved: everything stays
    removed = []
    try:
        if lock.made is not None:
            import shutil

            shutil.rmtree(run_dir)
            parent = os.path.dirname(os.path.abspath(run_dir))
            while len(parent) >= len(lock.made):  # the parents made for it too (e.g. checkpoints/), if left empty
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)
            what = f"removed the run directory {run_dir}"
        else:
            from ..store.metrics import METRICS

            for name in ("lock", METRICS, "samples.txt"):
                path = os.path.join(run_dir, name)
                if name not in lock.had and os.path.isfile(path):
                    os.unlink(path)
                    removed.append(name)
            ckpt_io.remove_stale_temps(run_dir)
            if not removed:
                return
            what = f"removed this run's {', '.join(removed)} from {run_dir}"
    except OSError as err:
        log.warning(f"could not clean up {run_dir} after the failure: {err.strerror or err}")
        return
    if not say:
        return
    if isinstance(exc, (CharrnnError, StartupInterrupted)) and exc.message:
        said = "no checkpoint was saved" in exc.message or "nothing was" in exc.message  # it says so already
        exc.message = f"{exc.message}; {what}" if said else f"{exc.message}; nothing was saved, so {what}"
        exc.args = (exc.message,)
    else:
        log.warning(f"nothing was saved: {what}")


def default_run_dir(source: str, base: Optional[str] = None) -> str:
    """The name a new run directory takes first: BASE/STEM-YYYYmmdd-HHMMSS (train() adds -2, -3, ... when a run
    started in the same second took it)."""
    if base is None:
        from ..store.paths import runs_dir

        base = runs_dir()  # $CHARRNN_HOME/checkpoints
    return os.path.join(base, f"{_stem(source)}-{time.strftime('%Y%m%d-%H%M%S')}")


def _stem(source: Optional[str]) -> str:
    from ..data.dataset import DEMO_SOURCE

    if source is None or source == DEMO_SOURCE or source.startswith("<demo"):
        return "demo"
    stem = "stdin" if source == "-" else os.path.basename(source.rstrip("/"))
    return os.path.splitext(stem)[0] or "run"


def _create_run_dir(stem: str, base: Optional[str] = None) -> tuple[str, str]:
    """Create a new run directory BASE/STEM-TIME exclusively (os.mkdir: of runs started in the same second each
    gets its own, the later ones with a suffix -2, -3, ...). Returns (its path, the topmost directory made)."""
    if base is None:
        from ..store.paths import runs_dir

        base = runs_dir()
    first = os.path.join(base, f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    parent = os.path.dirname(first)
    made = _first_missing(parent)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise CannotCreateError(f"cannot create run directory {first}: {exc.strerror or exc}") from None
    for n in range(1, 10_000):
        path = first if n == 1 else f"{first}-{n}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CannotCreateError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
        return path, made or os.path.abspath(path)
    raise CannotCreateError(f"cannot create run directory {first}: too many runs started this second")


def _first_missing(path: str) -> Optional[str]:
    """The topmost directory on the way to `path` that does not exist yet (absolute), or None if path exists."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return None
    while not os.path.exists(os.path.dirname(path)) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _prepare_run_dir(run_dir: Optional[str], resumed: Optional[dict], corpus: Optional[str] = None,
                     name: Optional[str] = None) -> tuple["ckpt_io.RunLock", str]:
    """Create the run directory (without `run_dir`: a new one named after `name` or the corpus), check it is
    writable, lock it, and clean up after a killed run. Returns the lock and the directory. The lock records the
    directories this run made (`made`: the topmost, or None) and what was in it before (`had`), for
    _discard_unsaved."""
    if run_dir is None:
        run_dir, made = _create_run_dir(name or _stem(corpus))
    else:
        made = _first_missing(run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as exc:
            raise CannotCreateError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise CannotCreateError(f"run directory {run_dir} is not writable")
    had = set() if made else set(os.listdir(run_dir))
    lock = ckpt_io.RunLock(run_dir).acquire()
    lock.made, lock.had = made, had
    same_run = resumed is not None and os.path.realpath(run_dir) == os.path.realpath(os.path.dirname(resumed["path"]))
    if not same_run and os.path.exists(os.path.join(run_dir, ckpt_io.LATEST)):
        lock.release(remove="lock" not in had)
        raise CannotCreateError(
            f"run directory {run_dir} already holds a run: continue it with --resume {run_dir}, "
            f"or pass another --run-dir"
        )
    removed = ckpt_io.remove_stale_temps(run_dir)
    if removed:
        log.info(f"removed {removed} unfinished checkpoint file(s) left in {run_dir} by an interrupted save")
    return lock, run_dir
