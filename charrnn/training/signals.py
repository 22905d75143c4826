"""SIGINT and SIGTERM, before and during the loop, and what the ranks agree on after each step.

Before the loop (`startup_signals`) a signal stops start-up at once: nothing was trained, so there is nothing to
save. In the loop (`SignalFlag`) a signal only sets a flag; the loop finishes the step, saves, and raises
Interrupted. A signal the process started with ignored (SIGINT in a shell's background job) stays ignored, in both.
Under torch.distributed the ranks act on the signal they agreed on (`Agreement`), in the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from typing import Optional

from ..errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, StartupInterrupted


def _install(handler) -> dict:
    """`handler` for SIGINT and SIGTERM (in the main thread; not where ignored); returns the handlers it replaced."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored from the start (a background job): stays so
                old[sig] = signal.signal(sig, handler)
    return old


def _restore(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    old.clear()


def exit_code(signum: Optional[int]) -> int:
    return 0 if signum is None else EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM


class SignalFlag:
    """SIGINT/SIGTERM set a flag; the loop acts on it at the next step boundary (a second signal changes nothing,
    so it cannot break a save in progress)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        self._old = _install(self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        _restore(self._old)

    @property
    def code(self) -> int:
        return exit_code(self.signum)


class _StartupSignals:
    """While active (startup_signals), SIGINT and SIGTERM raise StartupInterrupted: one line, exit 130 / 143,
    nothing trained or saved (train() removes what it created)."""

    active: Optional["_StartupSignals"] = None

    def __init__(self):
        self.done = False  # set when training has run: a signal then no longer means "nothing was trained"
        self._old: dict = {}

    def install(self) -> None:
        self._old = _install(self._handle)

    def restore(self) -> None:
        _restore(self._old)

    def _handle(self, signum, frame):
        code = exit_code(signum)
        name = "SIGINT" if code == EXIT_SIGINT else "SIGTERM"
        if self.done:
            raise StartupInterrupted(f"{name}: stopped after training had ended", code)
        raise StartupInterrupted(f"{name} during start-up: nothing was trained or saved", code)


@contextlib.contextmanager
def startup_signals():
    """SIGINT/SIGTERM raise StartupInterrupted inside (nested uses share the outer one: the CLI installs it as its
    train command starts, train() for library callers)."""
    guard = _StartupSignals.active
    if guard is not None:
        yield guard
        return
    guard = _StartupSignals.active = _StartupSignals()
    guard.install()
    try:
        yield guard
    finally:
        guard.restore()
        _StartupSignals.active = None


@dataclass
class Agreed:
    """One step's outcome as every rank sees it."""

    finite: bool
    loss: Optional[float]  # None: not read from the device this step (a non-finite step is noted on the device)
    stop_code: int = 0  # EXIT_SIGINT / EXIT_SIGTERM when a signal stops the run
    elapsed: Optional[float] = None


class Agreement:
    """What every rank must agree on after a step: finite or not, the mean loss, a signal, the elapsed time.
    Under torch.distributed one all-reduce carries it all (a signal arriving after it waits for the next step, or
    one rank would save while another trains on). A single process reads the loss from the device only when
    `check_every_step` (skipping a non-finite step, or a caller's on_step needs it at once)."""

    def __init__(self, dist, check_every_step: bool):
        self.dist, self.check_every_step = dist, check_every_step

    def agree(self, loss, bad, signals: SignalFlag, elapsed: float) -> Agreed:
        import torch

        dist = self.dist
        if dist.enabled:
            flags = torch.tensor([signals.code == EXIT_SIGINT, signals.code == EXIT_SIGTERM, elapsed],
                                 dtype=torch.float64).to(dist.device)
            shared = dist.all_reduce_sum(torch.cat([torch.stack([loss.detach().double(), bad.double()]),
                                                    flags])).tolist()
            code = (EXIT_SIGINT if shared[2] > 0 else EXIT_SIGTERM) if shared[2] + shared[3] else 0
            return Agreed(shared[1] == 0, shared[0] / dist.world, code, shared[4] / dist.world)
        if self.check_every_step:
            return Agreed(not bool(bad.item()), loss.item(), signals.code)
        return Agreed(True, None, signals.code)


def interrupted(code: int, step: int, latest: str, run_dir: str, main: bool) -> Interrupted:
    """The error a signal stops the loop with, once the step is saved (rank 0 says so; the others say nothing)."""
    name = "SIGINT" if code == EXIT_SIGINT else "SIGTERM"
    return Interrupted(f"{name}: stopped after step {step}; saved {latest} (continue with: charrnn train --resume "
                       f"{run_dir})" if main else "", code)
