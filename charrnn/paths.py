"""Where charrnn keeps things: CHARRNN_HOME (default: the current directory) holds checkpoints/ and data/.

`charrnn train` puts runs under $CHARRNN_HOME/checkpoints, `sample`/`eval` look for the newest run there, and
named or downloaded corpora are cached in $CHARRNN_HOME/data. Nothing here imports torch.
"""

from __future__ import annotations

import os

HOME_ENV = "CHARRNN_HOME"


def charrnn_home() -> str:
    """$CHARRNN_HOME if set (and not empty), else the current directory."""
    return os.environ.get(HOME_ENV) or "."


def runs_dir() -> str:
    """The default base directory for run directories: $CHARRNN_HOME/checkpoints."""
    return os.path.join(charrnn_home(), "checkpoints")


def data_dir() -> str:
    """Where named and downloaded corpora are cached: $CHARRNN_HOME/data."""
    return os.path.join(charrnn_home(), "data")


def write_text_atomic(path: str, text: str, what: str = "") -> str:
    """Write a small text file via a temp file in the same directory and a rename, so a reader never sees half
    of it; CannotCreateError (exit 73) names `what` (or the path) when it cannot be written."""
    from .errors import CannotCreateError

    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data reaches the disk before the name does
        os.replace(temp, path)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise CannotCreateError(f"cannot write {what or path}: {exc.strerror or exc}") from None
    return path
