"""Writing files: one atomic writer and one mapping of write errors to user errors, for every file charrnn writes.

    with atomic_write(path, what="corpus cache") as f:     # f: a binary file
        f.write(...)
    write_bytes([latest, best], data, what="checkpoint")   # the same bytes under several names
    write_text(path, text, what="config file")

The bytes go to a unique temp file in the destination directory (so the final rename never crosses a filesystem),
are flushed and fsynced, then renamed over the final name with os.replace and the directory is fsynced: a reader
(or a run killed at any moment) sees the old file or the new one, never half of one. Extra names get a hard link
to the temp file, or a copy of it on filesystems without hard links. On any failure the temp files are removed and
the final names are untouched; an OSError becomes `write_error(exc, path)`: CannotCreateError (exit 73) when the
file cannot be created there (permissions, read-only filesystem, missing directory), WriteError (exit 74) when
writing failed (disk full, quota, I/O error).

While it is written, the temp file is held under an exclusive flock (the kernel drops it when the writer dies):
`sweep_stale_temps(directory)` removes the temps no live process holds, so a writer killed mid-write (a corpus
cache or a download, possibly gigabytes) leaves nothing behind for good, and another process's temp in progress is
never touched. A directory fsync that fails after the rename is a warning, not a failed write: the file is in place.

Tests inject faults through `write_hook` (None in shipped code): called with the open temp file and the final
path of each atomic write, it returns the file object the caller writes through (e.g. one that is slow, or that
fails with ENOSPC after N bytes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
from typing import BinaryIO, Callable, Iterator, Optional, Sequence, Union

from ..errors import CannotCreateError, CharrnnError, WriteError

TEMP_PREFIX = ".tmp-"  # temp files are named .tmp-NAME.RANDOM, so a killed writer's leftovers are easy to find

# Fault injection for tests; does nothing by default. See the module docstring.
write_hook: Optional[Callable[[BinaryIO, str], BinaryIO]] = None

# errors about where the file goes (exit 73); any other OSError is a failed write (exit 74)
_CANNOT_CREATE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                  errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP}
_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded"}
# a directory fsync some filesystems do not support: the file is in place, only that durability step is skipped
_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def write_error(exc: OSError, path: str, what: str = "", hint: str = "") -> CharrnnError:
    """The one-line error for a file that cannot be written, e.g. `raise write_error(exc, path, "checkpoint")`:
    "cannot write checkpoint PATH: disk full". `hint` is appended, e.g. " (CHARRNN_CACHE_DIR moves it)"."""
    name = f"{what} {path}" if what else path
    reason = _REASONS.get(exc.errno) or exc.strerror or str(exc)
    cls = CannotCreateError if exc.errno in _CANNOT_CREATE else WriteError
    return cls(f"cannot write {name}: {reason}{hint}")


@contextlib.contextmanager
def atomic_write(paths: Union[str, Sequence[str]], what: str = "", hint: str = "") -> Iterator[BinaryIO]:
    """Yield a binary file; when the block ends, its content replaces every path in `paths` (one directory).

    An exception in the block removes the temp file and leaves the final names untouched; an OSError escaping
    the block (the block's own writes, or the rename) is raised as `write_error(exc, paths[0], what, hint)`, so
    map any read errors inside the block yourself."""
    names = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    names = [os.path.abspath(p) for p in names]
    directory = os.path.dirname(names[0])
    if any(os.path.dirname(p) != directory for p in names):
        raise ValueError(f"atomic_write: all names must be in one directory: {names}")
    temps: list[str] = []
    f = None
    try:
        temp, f = _create_temp(directory, names[0])
        temps.append(temp)
        yield write_hook(f, names[0]) if write_hook is not None else f
        f.flush()
        os.fsync(f.fileno())  # the data reaches the disk before any name points at it
        for name in names[1:]:
            temps.append(_second_name(temp, directory, name))
        for temp_name, name in zip(temps, names):
            os.replace(temp_name, name)
        temps.clear()
        f.close()  # and with it the flock, held until no temp name was left to sweep
    except OSError as exc:
        _close_and_remove(f, temps)
        raise write_error(exc, names[0], what, hint) from None
    except BaseException:
        _close_and_remove(f, temps)
        raise
    try:
        fsync_dir(directory)
    except OSError as exc:  # the file is in place; only the durability of its rename is in doubt
        logging.getLogger("charrnn").warning(
            f"wrote {names[0]}, but could not fsync its directory ({exc.strerror or exc}): after a power loss "
            f"the previous version may be back")


def write_bytes(paths: Union[str, Sequence[str]], data: bytes, what: str = "", hint: str = "") -> None:
    """Write `data` atomically to every path in `paths` (see atomic_write)."""
    with atomic_write(paths, what, hint) as f:
        f.write(data)


def write_text(path: str, text: str, what: str = "") -> str:
    """Write `text` as UTF-8, atomically; returns path."""
    write_bytes(path, text.encode("utf-8"), what)
    return path


def write_new_directory(output: str, files: dict, what: str = "") -> None:
    """Create the directory `output` holding {name: bytes}, whole or not at all: it is built under a temp name
    beside `output`, every file fsynced, then renamed into place and the parent fsynced. On failure the temp
    directory is removed and `output` does not exist."""
    parent = os.path.dirname(os.path.abspath(output))
    temp = _temp_name(parent, output)
    try:
        os.mkdir(temp)
        for name, data in files.items():
            with open(os.path.join(temp, name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(temp)
        os.rename(temp, output)
        fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise write_error(exc, output, what) from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def fsync_dir(directory: str) -> None:
    """Make the renames in `directory` durable (skipped where the filesystem cannot fsync a directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _temp_name(directory: str, final: str) -> str:
    return os.path.join(directory, f"{TEMP_PREFIX}{os.path.basename(final)[:100]}.{secrets.token_hex(4)}")


def _create_temp(directory: str, final: str) -> tuple[str, BinaryIO]:
    """A new, uniquely named file beside `final` (mode 0666 less the umask, like any new file), held under an
    exclusive flock until it is closed (see sweep_stale_temps)."""
    for _ in range(100):
        temp = _temp_name(directory, final)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a sweeper that took it first removes it
            if _same_file(temp, fd):
                return temp, os.fdopen(fd, "wb")
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                os.close(fd)
                _remove([temp])
                raise
            return temp, os.fdopen(fd, "wb")  # no locks on this filesystem: never swept (temps of the past stay)
        os.close(fd)  # swept between its creation and the lock: make another
    raise FileExistsError(errno.EEXIST, "no unused temp file name", directory)


def _same_file(path: str, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except OSError:
        return False


def sweep_stale_temps(directory: str, what: str = "", by: str = "") -> list[tuple[str, int]]:
    """Remove the temp files (TEMP_PREFIX) in `directory` that no live process is writing: those whose flock can
    be taken at once. Returns (path, size) of each removed, and with `what` logs what it removed, e.g.
    sweep_stale_temps(d, "corpus cache", "an interrupted encode"). A temp being written (its writer holds the
    flock), one that cannot be opened for writing (another user's), and anything on a filesystem without locks are
    left alone; errors are ignored (sweeping is housekeeping)."""
    removed = []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by its writer while it lives
            if _same_file(path, fd):
                size = os.fstat(fd).st_size
                os.unlink(path)  # under the lock: a writer that just made it sees it gone and makes another
                removed.append((path, size))
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed and what:
        mb = sum(size for _, size in removed) / 1e6
        logging.getLogger("charrnn").info(f"removed {len(removed)} unfinished {what} file(s) ({mb:,.1f} MB) left in "
                                          f"{directory} by {by or 'an interrupted write'}")
    return removed


def _second_name(temp: str, directory: str, final: str) -> str:
    """Another temp name holding the same bytes as `temp`: a hard link, or a copy where links are not supported
    (e.g. FAT, some network and FUSE filesystems)."""
    link = _temp_name(directory, final)
    try:
        os.link(temp, link)
        return link
    except FileExistsError:
        return _second_name(temp, directory, final)
    except OSError:
        pass
    copy, f = _create_temp(directory, final)
    try:
        with f, open(temp, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove([copy])
        raise
    return copy


def _close_and_remove(f: Optional[BinaryIO], paths: list[str]) -> None:
    _remove(paths)  # before the close: the names go while the flock still keeps sweepers off
    if f is not None:
        try:
            f.close()
        except OSError:
            pass


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


__all__ = ["atomic_write", "write_bytes", "write_text", "write_error", "fsync_dir", "write_hook", "TEMP_PREFIX",
           "sweep_stale_temps"]
