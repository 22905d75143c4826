"""Faults the tests inject into charrnn through its hooks (which do nothing by default; shipped code reads no
test-only environment variable).

In-process: `monkeypatch.setattr(fileio, "write_hook", slow_writes(0.2))`. In a real process that a test signals
or kills: pass `{"hooks": {NAME: VALUE}}` to the fork server (tests/forkserver.py), or run
`python tests/faults.py '{NAME: VALUE}' ARGS...` (the CLI with those faults installed). The names:

    slow_write: SECONDS     checkpoint writes go in 8 chunks with SECONDS between them (a kill lands mid-save)
    stall_write: {"write": N, "chunk": C, "marker": PATH}
                            the Nth checkpoint file written (1: the first) stops once C + 1 pieces of it are
                            written, creates PATH and waits to be killed (a kill lands mid-save, whatever the load)
    enospc_after: BYTES     checkpoint writes fail with ENOSPC once BYTES have been written (a full disk)
    nan_at: {"steps": [13, 14], "value": "nan" or "inf", "rank": 0}
                            the loss of those steps is multiplied by NaN (or Inf) on that rank, so its gradients
                            really are non-finite
    pause_at: STEP          after step STEP the trainer writes STEP to the file named by its run directory +
                            "/paused" and waits until it has received SIGINT or SIGTERM (a signal lands at a known
                            step, whatever the machine's load)
    crash_at: {"rank": 1, "step": 15}
                            that rank dies without a word (os._exit(3)) after that step
    step_delay: SECONDS     every step takes SECONDS longer (for saves by wall-clock time)
    slow_encode: {"seconds": S, "local_rank": 0}
                            a first encode into the corpus cache takes S seconds longer (after its first chunk),
                            on that local rank (every process when "local_rank" is absent)
    encode_fails: {"error": "memory" or "oserror", "local_rank": 0}
                            a first encode into the corpus cache raises MemoryError (or an OSError, ENOSPC) after
                            its first chunk
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time

from charrnn.training.trainer import TrainHooks

CHECKPOINT_SUFFIX = ".pt"


class _FaultyFile:
    """Wraps the temp file of an atomic write: writes go through `write_chunk` in 8 pieces."""

    def __init__(self, f, delay: float = 0.0, room: int | None = None, stall: tuple | None = None):
        self.f, self.delay, self.room, self.stall, self.pieces = f, delay, room, stall, 0

    def write(self, data) -> int:
        data = bytes(data)
        chunk = max(1, len(data) // 8)
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            if self.room is not None:
                if len(piece) > self.room:
                    self.f.write(piece[: self.room])
                    self.f.flush()
                    self.room = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.room -= len(piece)
            self.f.write(piece)
            self.f.flush()
            if self.delay:
                time.sleep(self.delay)
            self.pieces += 1
            if self.stall is not None and self.pieces > self.stall[0]:
                with open(self.stall[1], "w"):
                    pass
                while True:  # until SIGKILL
                    time.sleep(1)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _only(suffix: str, wrap):
    def hook(f, path: str):
        return wrap(f) if path.endswith(suffix) else f

    return hook


def slow_writes(seconds: float, suffix: str = CHECKPOINT_SUFFIX):
    """A fileio.write_hook: files ending in `suffix` are written in 8 chunks, `seconds` apart."""
    return _only(suffix, lambda f: _FaultyFile(f, delay=float(seconds)))


def stalled_write(value: dict, suffix: str = CHECKPOINT_SUFFIX):
    """A fileio.write_hook: the value["write"]-th file ending in `suffix` stops after its chunk value["chunk"],
    creates value["marker"] and waits to be killed."""
    written = [0]

    def wrap(f):
        written[0] += 1
        return _FaultyFile(f, stall=(int(value["chunk"]), value["marker"])) if written[0] == int(value["write"]) else f

    return _only(suffix, wrap)


def disk_full_after(n_bytes: int, suffix: str = CHECKPOINT_SUFFIX):
    """A fileio.write_hook: writing a file ending in `suffix` fails with ENOSPC once `n_bytes` were written."""
    return _only(suffix, lambda f: _FaultyFile(f, room=int(n_bytes)))


class TrainFaults(TrainHooks):
    """A charrnn.training.trainer.TrainHooks with the training faults of the module docstring."""

    def __init__(self):
        self.nan_steps, self.nan_value, self.nan_rank = set(), float("nan"), 0
        self.pause_step = None
        self.crash = None
        self.delay = 0.0

    def loss(self, trainer, loss):
        if trainer.step + 1 in self.nan_steps and trainer.dist.rank == self.nan_rank:
            return loss * self.nan_value  # real NaN/Inf gradients, so a missed check would poison the weights
        return loss

    def after_step(self, trainer) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.crash and trainer.step == self.crash["step"] and trainer.dist.rank == self.crash["rank"]:
            os._exit(3)
        if trainer.step == self.pause_step:
            with open(os.path.join(trainer.run_.run_dir, "paused"), "w") as f:
                f.write(str(trainer.step))
            while trainer.signals.signum is None:  # the handler runs in this thread, between these sleeps
                time.sleep(0.005)


def _train_faults() -> TrainFaults:
    from charrnn.training import trainer

    if not isinstance(trainer.hooks, TrainFaults):
        trainer.hooks = TrainFaults()
    return trainer.hooks


def _nan_at(value: dict) -> None:
    faults = _train_faults()
    faults.nan_steps = set(value["steps"])
    faults.nan_value = float(value.get("value", "nan"))
    faults.nan_rank = value.get("rank", 0)


def _set(name: str, value) -> None:
    setattr(_train_faults(), name, value)


def _on_local_rank(value: dict) -> bool:
    return "local_rank" not in value or int(os.environ.get("LOCAL_RANK", "0")) == int(value["local_rank"])


def _encode_hook(hook) -> None:
    from charrnn.data import cache as data

    data.encode_hook = hook


def slow_encode(value: dict):
    def hook(chars_written: int) -> None:
        time.sleep(float(value["seconds"]))

    return hook


def encode_fails(value: dict):
    def hook(chars_written: int) -> None:
        if value["error"] == "memory":
            raise MemoryError()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return hook


INSTALLERS = {
    "slow_encode": lambda value: _on_local_rank(value) and _encode_hook(slow_encode(value)),
    "encode_fails": lambda value: _on_local_rank(value) and _encode_hook(encode_fails(value)),
    "slow_write": lambda value: _set_write_hook(slow_writes(value)),
    "enospc_after": lambda value: _set_write_hook(disk_full_after(value)),
    "stall_write": lambda value: _set_write_hook(stalled_write(value)),
    "nan_at": _nan_at,
    "pause_at": lambda value: _set("pause_step", int(value)),
    "crash_at": lambda value: _set("crash", value),
    "step_delay": lambda value: _set("delay", float(value)),
}


def _set_write_hook(hook) -> None:
    from charrnn.store import fileio

    fileio.write_hook = hook


def install(hooks: dict) -> None:
    """Install the named faults in this process (see the module docstring)."""
    for name, value in hooks.items():
        INSTALLERS[name](value)


def main() -> None:
    """python tests/faults.py HOOKS_JSON ARGS...: the charrnn CLI with the faults in HOOKS_JSON installed."""
    install(json.loads(sys.argv[1]))
    from charrnn.cli.commands import main as cli_main

    sys.argv = ["charrnn", *sys.argv[2:]]
    cli_main()


if __name__ == "__main__":
    main()
