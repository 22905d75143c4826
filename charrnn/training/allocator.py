"""Keep the memory a training step frees for the next step (glibc's malloc only; elsewhere nothing changes).

A training step allocates and frees the same few-megabyte tensors every time (2x128 at B64 T128: its states,
gradients and logits, about 20 MB a step). glibc serves allocations above its mmap threshold (128 KiB at start,
raised only when such a block is freed) with fresh mmaps, and returns a free heap top above its trim threshold to
the kernel, so each step touched about 5,000 new pages (minor faults: the kernel zeroes every one) where the
benchmark's loop, whose process had freed a 16 MB block earlier, touched none: 20 ms of a 70 ms step on the fp32
EPYC. Fixing both thresholds makes every process run as the warm one did: blocks up to MMAP_THRESHOLD come from the
heap and are reused, and up to TRIM_THRESHOLD of free heap top is kept. The numbers computed do not change; the
cost is that the process keeps up to that much freed memory for reuse instead of returning it (the peak it needs
is the same). Larger blocks (a 3x1024 model's 32 MB activations) are still mapped per step, where the step's
arithmetic dwarfs their faults.

Called where steps are timed or taken: Trainer.run before its first step, autosize before it times the candidate
sizes (so the speeds it keeps are those of the run's steps), and benchmarks/run.py before its loops (so that the loop
and `charrnn train` compare alike). tests/training/test_allocator.py checks it on the command line's path."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 256 * 2**20

_done: list = []


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; False where malloc is not glibc's (or refuses)."""
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):  # musl and others have no mallopt
            ok = False
    _done.append(ok)
    return ok
