"""The CPU shared by the charrnn runs training on it at once.

torch runs a CPU process's work on as many threads as the machine has cores, and its OpenMP threads spin while they
wait for more work. Two or three runs started together (a learning-rate sweep, say) then take the cores from one
another: on the 2-core EPYC, three 3x256 runs with 2 threads each made 2.1-2.3 steps/s each, against 14.3-14.9 for
one run alone; sharing, 7.0-8.0 each (benchmarks/README.md, "Runs at once on one CPU").

So each CPU run keeps a file in a directory of the machine's temp dir for this user (charrnn-UID/trainers), locked
(flock) while it trains, and every CHECK_EVERY seconds counts the files other runs hold locked. With N runs training,
each uses 1/N of the threads it started with (at least one), and all of them again once it is alone; a run that is
stopped (Ctrl-Z) is not counted while it is. A run that ends, however it ends, drops its lock with its process; the
next run to find the file unlocked removes it. Where the directory cannot be written or files cannot be locked, a
run trains with all its threads as before.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from typing import Callable, Optional

log = logging.getLogger("charrnn")

CHECK_EVERY = 2.0  # seconds between counts of the other runs
SUFFIX = ".trainer"


def trainers_dir() -> str:
    """Where the runs training on this machine keep their locked files: TMPDIR/charrnn-UID/trainers."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"charrnn-{user}", "trainers")


class CpuShare:
    """This run's share of the CPU: `join` when training starts, `check(now)` before each step (it counts the
    others at most every CHECK_EVERY seconds and calls set_threads when the share changes), `leave` at the end."""

    def __init__(self, threads: int, set_threads: Callable[[int], None], directory: Optional[str] = None):
        self.threads, self.set_threads = threads, set_threads
        self.directory = directory or trainers_dir()
        self.fd: Optional[int] = None
        self.path: Optional[str] = None
        self.using = threads
        self.most_others = 0  # the most other runs seen training at once (the summary's note)
        self.next_check: Optional[float] = None

    def join(self) -> bool:
        """Keep a locked file among the trainers'; False (and no sharing) where that is not possible here."""
        fd, temporary = None, None
        try:
            import fcntl

            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            # locked before it gets a name others count, so a file they can lock is always one whose run has ended
            name = f"{os.getpid()}-{secrets.token_hex(4)}"
            temporary = os.path.join(self.directory, f".joining-{name}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = os.path.join(self.directory, name + SUFFIX)
            os.rename(temporary, path)
        except (ImportError, OSError):
            if fd is not None:
                os.close(fd)
                _remove(temporary)
            return False
        self.fd, self.path = fd, path
        return True

    def others(self) -> int:
        """How many other runs hold their files locked now; files whose runs have ended are removed."""
        import fcntl

        count = 0
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(SUFFIX) or entry.path == self.path:
                continue
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except OSError:  # removed meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                count += not _suspended(entry.name.split("-", 1)[0])
            except OSError:
                pass
            else:
                _remove(entry.path)
            finally:
                os.close(fd)
        return count

    def check(self, now: float) -> None:
        if self.fd is None or (self.next_check is not None and now < self.next_check):
            return
        self.next_check = now + CHECK_EVERY
        try:
            others = self.others()
        except OSError:
            return
        self.most_others = max(self.most_others, others)
        share = max(1, self.threads // (others + 1))
        if share == self.using:
            return
        self.set_threads(share)
        self.using = share
        if others:
            log.info(f"{others} other charrnn run{'s' if others > 1 else ''} training on this machine: "
                     f"this one uses {share} of its {self.threads} threads")
        else:
            log.info(f"no other charrnn run training on this machine: this one uses its {self.threads} threads")

    def leave(self) -> None:
        if self.using != self.threads:
            self.set_threads(self.threads)
            self.using = self.threads
        if self.fd is not None:
            _remove(self.path)
            os.close(self.fd)
            self.fd = None


def _suspended(pid: str) -> bool:
    """Whether process `pid` is stopped (Ctrl-Z, SIGSTOP): it holds its file but uses no CPU. Linux's /proc only;
    elsewhere every run holding its file counts."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
    except (OSError, ValueError):
        return False
    fields = stat[stat.rfind(b")") + 1:].split()
    return bool(fields) and fields[0] in (b"T", b"t")


def _remove(path: Optional[str]) -> None:
    try:
        if path:
            os.unlink(path)
    except OSError:
        pass


class Unshared:
    """A run that does not share (its work is on an accelerator)."""

    most_others = 0

    def join(self) -> bool:
        return False

    def check(self, now: float) -> None:
        pass

    def leave(self) -> None:
        pass


def for_device(device, world: int = 1):
    """The share of a run on `device`: CPU runs share; others do not (Unshared), nor the ranks of a torchrun job
    (`world` > 1), which would count one another as other runs and each give up threads it was given."""
    if device.type != "cpu" or world > 1:
        return Unshared()
    import torch

    return CpuShare(torch.get_num_threads(), torch.set_num_threads)
