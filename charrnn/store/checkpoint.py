"""Checkpoints: atomic save, safe load, a content digest, finding runs, and the run-directory lock.

A checkpoint is one file holding only tensors and plain Python values (dicts, lists, str, int, float, bool,
None), so `torch.load(path, weights_only=True, map_location="cpu")` loads it and nothing in it can run code.
Loading never falls back to unsafe unpickling.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import math
import os
import struct
from typing import Any, Optional

from ..errors import CannotCreateError, CharrnnError, DataError, InputMissingError, NotACheckpointError, unreadable
from .fileio import TEMP_PREFIX, write_bytes

FORMAT = "charrnn-checkpoint"
# 2: "model" holds --ema's averages and "train_weights" the weights being trained, which a reader of version 1 would
# not resume from; a checkpoint without "train_weights" is still written as 1, which every version reads
VERSION = 2
READABLE_VERSIONS = (1, 2)
LATEST = "latest.pt"
BEST = "best.pt"


# ----------------------------------------------------------------------------------------------------------------
# digest over the content, so corruption torch would not notice (a flipped bit in a weight) is caught


def content_digest(obj: Any) -> str:
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    import torch

    kind = type(obj)  # exact types: a str or int subclass would not load under weights_only
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    elif kind is dict:
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif kind in (list, tuple):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _feed(h, item)
    elif kind is bool or obj is None:
        h.update(repr(obj).encode())
    elif kind is int:
        h.update(b"I" + str(obj).encode())
    elif kind is float:
        h.update(b"F" + struct.pack("<d", obj))
    elif kind is str:
        h.update(b"S%d:" % len(obj) + obj.encode("utf-8", "surrogatepass"))
    else:
        raise TypeError(f"checkpoints hold only tensors and plain values, not {kind.__name__}")


# ----------------------------------------------------------------------------------------------------------------
# saving


def _serialize(state: dict) -> bytes:
    import torch

    payload = dict(state)
    payload["format"] = FORMAT
    payload["version"] = VERSION if payload.get("train_weights") is not None else 1
    payload.pop("digest", None)
    payload["digest"] = content_digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(state: dict, paths: list[str]) -> None:
    """Write `state` atomically to every path in `paths` (all in one directory), through fileio.write_bytes.

    The bytes go to a unique temp file in the destination directory, are flushed and fsynced, then linked (or
    copied, on filesystems without hard links) and renamed over each final name with os.replace, and the
    directory is fsynced: a final name always holds a complete checkpoint, the old one or the new one. On a write
    error the temp files are removed and WriteError (exit 74; 73 where the directory refuses new files) is
    raised; the previous checkpoints are untouched.
    """
    write_bytes(paths, _serialize(state), what="checkpoint")


STEP_PREFIX = "step-"


def step_name(step: int) -> str:
    """The file name of the step checkpoint for `step`; zero-padded so name order is step order."""
    return f"{STEP_PREFIX}{step:08d}.pt"


def prune_step_checkpoints(directory: str, keep: int, protect: Optional[str] = None,
                           upto: Optional[int] = None) -> list[str]:
    """Delete all but the `keep` newest step checkpoints, never `protect` (the file a run resumed from).

    Call it only after the newest checkpoint is in place, so a failure in between never leaves fewer than
    `keep` complete ones. With `upto` (the current step), only files of steps <= upto are considered: after a
    resume from an older step file, the abandoned later ones are left alone rather than outranking new ones.
    Returns the removed paths.
    """
    steps = sorted(glob.glob(os.path.join(directory, STEP_PREFIX + "[0-9]*.pt")))
    if upto is not None:
        steps = [p for p in steps if _step_of(p) is not None and _step_of(p) <= upto]
    protected = os.path.abspath(protect) if protect else None
    removed = []
    for path in steps[: max(0, len(steps) - keep)]:
        if os.path.abspath(path) == protected:
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _step_of(path: str) -> Optional[int]:
    stem = os.path.basename(path)[len(STEP_PREFIX) : -len(".pt")]
    return int(stem) if stem.isdigit() else None


def remove_stale_temps(directory: str) -> int:
    """Remove temp files a killed run left behind (call with the run lock held)."""
    removed = 0
    for path in glob.glob(os.path.join(directory, TEMP_PREFIX + "*")):
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed


# ----------------------------------------------------------------------------------------------------------------
# loading


def load_checkpoint(path: str) -> dict:
    """Load and verify a checkpoint file. Never executes code from it."""
    import pickle
    import zipfile

    import torch

    _check_torch_is_safe()
    if os.path.isdir(path):
        path = resolve_checkpoint(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise unreadable(exc, path, "checkpoint") from None
    corrupt = DataError(f"checkpoint is incomplete or corrupt: {path}")
    if not raw:
        raise corrupt
    from .modelfile import looks_like_model_file, read_model_file

    if looks_like_model_file(raw):  # a .safetensors model file (`charrnn export`), told by its content
        return read_model_file(raw, path)
    if _looks_like_text(raw):  # e.g. `--resume corpus.txt`: not a damaged checkpoint, another kind of file
        raise NotACheckpointError(f"{path} is not a charrnn checkpoint (a text file?)")
    try:
        state = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise DataError(
                f"checkpoint is incomplete or corrupt: {path} (it holds objects other than tensors and plain "
                f"values; refusing to load it)"
            ) from None
        raise corrupt from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError, TypeError, IndexError,
            AttributeError, UnicodeDecodeError, struct.error, OverflowError, MemoryError):
        raise corrupt from None
    except Exception:  # anything else torch's reader throws on a foreign or damaged file
        raise corrupt from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise corrupt
    if state.get("version") not in READABLE_VERSIONS:
        raise DataError(f"checkpoint {path} has format version {state.get('version')}; this charrnn reads "
                        f"{' and '.join(map(str, READABLE_VERSIONS))}")
    recorded = state.pop("digest", None)
    try:
        actual = content_digest(state)
    except TypeError:
        raise corrupt from None
    if recorded != actual:
        raise corrupt
    state["path"] = os.path.abspath(path)
    return state


_BINARY_BYTES = bytes([*range(0x00, 0x08), *range(0x0E, 0x1B), *range(0x1C, 0x20)])  # not in text files


def _looks_like_text(raw: bytes) -> bool:
    """Whether a file's start reads as text: UTF-8 (a character cut at the end of the sample aside) without the
    control bytes of binary files. A checkpoint (a zip archive, or a pickle) never does."""
    head = raw[:8192]
    zip_start = b"PK\x03\x04"[: len(head)] == head[:4]  # a zip archive, or the first bytes of one
    if zip_start or head.startswith(b"\x80") or len(head.translate(None, _BINARY_BYTES)) != len(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return len(raw) > len(head) and exc.start >= len(head) - 3  # a multi-byte character cut by the sample
    return True


def _check_torch_is_safe() -> None:
    """weights_only=True could be bypassed on torch <= 2.5.1 (CVE-2025-32434): refuse to load with such a torch
    rather than trust it."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):
        raise CharrnnError(
            f"torch {torch.__version__} cannot load checkpoints safely (CVE-2025-32434): install torch >= 2.6"
        )


def resolve_checkpoint(path: Optional[str], runs_dir: Optional[str] = None) -> str:
    """A checkpoint file from a file, a run directory (its latest.pt) or None (the newest run under runs_dir,
    default $CHARRNN_HOME/checkpoints)."""
    if path is None:
        if runs_dir is None:
            from .paths import runs_dir as default_runs_dir

            runs_dir = default_runs_dir()
        candidates = glob.glob(os.path.join(runs_dir, "*", LATEST)) + glob.glob(os.path.join(runs_dir, LATEST))
        if not candidates:
            raise InputMissingError(
                f"no checkpoint found under {runs_dir}/: train one with `charrnn train` or pass a checkpoint path"
            )
        return max(candidates, key=_mtime)
    if os.path.isdir(path):
        for name in (LATEST, BEST):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        steps = sorted(glob.glob(os.path.join(path, "step-*.pt")))
        if steps:
            return steps[-1]
        raise InputMissingError(f"no checkpoint in directory {path} (expected {LATEST})")
    if not os.path.exists(path):
        raise InputMissingError(f"no such checkpoint: {path}")
    return path


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return -math.inf


# ----------------------------------------------------------------------------------------------------------------
# the run-directory lock


class RunLock:
    """An exclusive flock on RUN_DIR/lock holding the owner's PID. The kernel drops it when the process dies,
    so a lock left by a killed run is simply taken over. A run that ends (normally, or stopped by an error or a
    signal it handled) removes the file: only a killed run leaves it behind."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "lock")
        self.fd: Optional[int] = None
        # set by charrnn.train: the topmost directory the run made for itself (None: it existed), and the names
        # that were in it before, so a run that fails before its first checkpoint removes only what it created
        self.made: Optional[str] = None
        self.had: set = set()

    def acquire(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise CannotCreateError(f"cannot create {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                finally:
                    os.close(fd)
                raise CannotCreateError(
                    f"run directory {os.path.dirname(self.path)} is in use by another charrnn train (PID {holder})"
                ) from None
            if _same_file(fd, self.path):
                break
            # the run that held it removed the file as it ended, after we opened it: lock the file there now
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self, remove: bool = True) -> None:
        """Let go of the lock; with `remove` (the default) delete the file first, while it is still held."""
        if self.fd is not None:
            try:
                if remove and _same_file(self.fd, self.path):
                    try:
                        os.unlink(self.path)
                    except OSError:
                        pass
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
