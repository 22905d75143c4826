"""Faults the tests inject into charrnn through its hooks (which do nothing by default; shipped code reads no
test-only environment variable).

In-process: `monkeypatch.setattr(fileio, "write_hook", slow_writes(0.2))`. In a real process that a test signals
or kills: pass `{"hooks": {NAME: VALUE}}` to the fork server (tests/forkserver.py), or run
`python tests/faults.py '{NAME: VALUE}' ARGS...` (the CLI with those faults installed). The names:

    slow_write: SECONDS     checkpoint writes go in 8 chunks with SECONDS between them (a kill lands mid-save)
    enospc_after: BYTES     checkpoint writes fail with ENOSPC once BYTES have been written (a full disk)
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time

CHECKPOINT_SUFFIX = ".pt"


class _FaultyFile:
    """Wraps the temp file of an atomic write: writes go through `write_chunk` in 8 pieces."""

    def __init__(self, f, delay: float = 0.0, room: int | None = None):
        self.f, self.delay, self.room = f, delay, room

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


def disk_full_after(n_bytes: int, suffix: str = CHECKPOINT_SUFFIX):
    """A fileio.write_hook: writing a file ending in `suffix` fails with ENOSPC once `n_bytes` were written."""
    return _only(suffix, lambda f: _FaultyFile(f, room=int(n_bytes)))


INSTALLERS = {
    "slow_write": lambda value: _set_write_hook(slow_writes(value)),
    "enospc_after": lambda value: _set_write_hook(disk_full_after(value)),
}


def _set_write_hook(hook) -> None:
    from charrnn import fileio

    fileio.write_hook = hook


def install(hooks: dict) -> None:
    """Install the named faults in this process (see the module docstring)."""
    for name, value in hooks.items():
        INSTALLERS[name](value)


def main() -> None:
    """python tests/faults.py HOOKS_JSON ARGS...: the charrnn CLI with the faults in HOOKS_JSON installed."""
    install(json.loads(sys.argv[1]))
    from charrnn.cli import main as cli_main

    sys.argv = ["charrnn", *sys.argv[2:]]
    cli_main()


if __name__ == "__main__":
    main()
