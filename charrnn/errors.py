"""Errors a user can cause, each with its documented exit code.

The CLI turns a `CharrnnError` into one line on stderr and `sys.exit(error.exit_code)`;
library users catch them as ordinary exceptions.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # e.g. non-finite loss
EXIT_USAGE = 2  # bad option value
EXIT_DATA = 65  # bad corpus, checkpoint or text (sysexits EX_DATAERR)
EXIT_NO_INPUT = 66  # input missing or unreadable (EX_NOINPUT)
EXIT_UNAVAILABLE = 69  # an optional dependency is missing, e.g. matplotlib for `plot` (EX_UNAVAILABLE)
EXIT_CANT_CREATE = 73  # output cannot be created (EX_CANTCREAT)
EXIT_IO = 74  # write failed, e.g. disk full (EX_IOERR)
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class CharrnnError(Exception):
    """Base class: a message meant for the user and the exit code the CLI uses."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(CharrnnError):
    exit_code = EXIT_USAGE


class DataError(CharrnnError):
    exit_code = EXIT_DATA


class NotACheckpointError(DataError):
    """A file that is no charrnn checkpoint or model file at all (a text file, another tool's safetensors): exit 65
    where a checkpoint is read; `export` reports it as a usage error (exit 2)."""


class InputMissingError(CharrnnError):
    exit_code = EXIT_NO_INPUT


class MissingDependencyError(CharrnnError):
    exit_code = EXIT_UNAVAILABLE


def unreadable(exc: OSError, path: str, what: str = "") -> InputMissingError:
    """The one-line error for a file that cannot be read (exit 66), e.g. `raise unreadable(exc, path, "checkpoint")`."""
    name = f"{what} {path}" if what else path
    if isinstance(exc, FileNotFoundError):
        return InputMissingError(f"no such {what or 'file'}: {path}")
    if isinstance(exc, IsADirectoryError):
        return InputMissingError(f"{name} is a directory")
    if isinstance(exc, PermissionError):
        return InputMissingError(f"cannot read {name}: permission denied")
    return InputMissingError(f"cannot read {name}: {exc.strerror or exc}")


class CannotCreateError(CharrnnError):
    exit_code = EXIT_CANT_CREATE


class WriteError(CharrnnError):
    exit_code = EXIT_IO


class NonFiniteLossError(CharrnnError):
    exit_code = EXIT_FAILURE


class Interrupted(CharrnnError):
    """Training stopped by a signal after saving; exit code 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StartupInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM before training began: nothing was trained or saved; exit code 130 or 143. A
    KeyboardInterrupt (so a BaseException), so that no `except Exception` on the way (a corpus or checkpoint
    reader's) mistakes it for that reader's own failure, and a library caller's `except KeyboardInterrupt` still
    catches Ctrl-C during start-up."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code
