"""A training step reuses the memory the last one freed (charrnn/training/allocator.py): on the command line's path,
by the time steps run, glibc serves blocks up to allocator.MMAP_THRESHOLD from its heap and keeps freed heap memory
mapped, so touching a block the size of a step's activations a second time faults in no new pages.

Counted, not timed, and counted so that the count depends on the thresholds alone. The first version of this test
summed the whole process's minor faults per training step; that count varied from run to run with the fix and
without it (issue 25), because which step's blocks land at the heap's top, and so are trimmed or mapped afresh,
depends on the heap's layout: the order of allocations, which varies with hash randomisation, address
randomisation and the timing of torch's and numba's threads (with PYTHONHASHSEED, `setarch -R` and one thread all
pinned the counts repeated exactly; any one left free, they did not). Here one block is allocated, touched and
freed twice by the training process's main thread, inside a training step's optimizer hook, and only that thread's
faults in the second touch are counted (RUSAGE_THREAD): glibc's answer to that depends on the thresholds, not on
what else the process did, provided nothing freed a mapped block of more than PROBE_BYTES before (glibc's start-up
threshold then rises past the probe: nothing a tiny model does comes near 31 MiB)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

from charrnn.training import allocator
from conftest import TINY, cli_env, hang_guard, make_corpus

PROBE_BYTES = allocator.MMAP_THRESHOLD - 2**20  # under the fixed threshold, far above glibc's start-up 128 KiB
PAGES = PROBE_BYTES // 4096

SCRIPT = """
import ctypes, json, resource, sys

import charrnn.training.allocator
import charrnn.training.optimizer
from charrnn.cli.commands import main

out, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "off":
    charrnn.training.allocator.keep_freed_memory = lambda: False  # glibc's start-up thresholds, as before the fix


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
RUSAGE_THREAD = 1  # this thread's counts only (Linux)
seen = []


def touch():
    # allocate, touch every page, free: the minor faults this thread took, and whether glibc mapped the block
    before, mapped = resource.getrusage(RUSAGE_THREAD).ru_minflt, libc.mallinfo2().hblks
    block = libc.malloc(size)
    mapped = libc.mallinfo2().hblks - mapped
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(RUSAGE_THREAD).ru_minflt - before, mapped


def probing(step):
    def probe(optimizer):  # after the run's first optimizer step, once
        step(optimizer)
        if not seen:
            seen.append([touch(), touch()])
    return probe


for kind in (charrnn.training.optimizer.AdamW, charrnn.training.optimizer.MuonAdamW):  # whichever the run uses
    kind.step = probing(kind.step)
sys.argv = ["charrnn", *sys.argv[4:]]
try:
    main()
finally:
    with open(out, "w") as f:
        json.dump(seen, f)
"""


def _probe(tmp_path, mode: str) -> list:
    corpus = make_corpus(tmp_path / "c.txt", 20_000)
    out = tmp_path / f"{mode}.json"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), mode, str(PROBE_BYTES), "train", str(corpus),
                           *TINY, "--max-steps", "2", "--run-dir", str(tmp_path / mode), "-q"],
                          env=cli_env(), capture_output=True, text=True, timeout=hang_guard(150))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    assert len(seen) == 1, seen  # the hook ran inside the run's steps
    return seen[0]


def test_the_cli_keeps_freed_memory_mapped_between_steps(tmp_path):
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc's malloc (2.33 or later) only")
    (_, first_mapped), (again, again_mapped) = _probe(tmp_path, "on")
    # from the heap, not mapped for itself; freed, kept: touching it again takes no new page
    assert (first_mapped, again_mapped) == (0, 0)
    assert again < PAGES // 100, again
    # the same probe without the thresholds: mapped afresh and faulted in each time (so the probe can fail)
    (first, first_mapped), (again, _) = _probe(tmp_path, "off")
    assert first_mapped == 1 and first >= PAGES * 0.9, (first, first_mapped)
    assert again >= PAGES * 0.9, again
