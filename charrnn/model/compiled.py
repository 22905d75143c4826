"""The tanh recurrence's T-step loop compiled with numba: one call per layer and direction instead of two torch calls
per step, with the activation fused into the product.

    forward:   out_t = tanh(pre_t + out_{t-1} W^T)                  (out_{-1} = first)
    backward:  out_t = (pre_t + out_{t+1} W) * (1 - h_t^2)          (out_T = first, zeros)

Why: torch's GEMM cannot apply an activation to its result, so every step of the torch route is a product plus an
elementwise pass, and a B x H by H x H product is small enough that MKL reaches only part of its peak on it. Here
each thread owns 4 rows of the batch for all T steps (rows never depend on other rows), and forms 4 x 2 outputs at a
time as dot products over k, which LLVM vectorizes into FMAs; the tanh or the derivative is applied before the store.
On the 2-core AMD EPYC VM, B64 T128, compiled for AVX2: 191 GFLOP/s forward and 206 backward at H=512, where
torch's per-step addmm + tanh ran at 125 (MKL's sgemm peak there: about 210); whole training steps in
benchmarks/README.md ("The fp32 route").

The result does not depend on the thread count or on the schedule (each output element is one thread's fixed
sequence of operations), so runs are bitwise reproducible. fastmath allows only reassociation and contraction (the
sums over k are vectorized; FMAs), not assumptions about NaN or infinity, so a diverging run still shows NaN.

numba is installed with charrnn but optional at run time: without it (or where it fails to load or compile),
`available()` is False and charrnn/model/fused.py runs its torch loop, the same maths.

Safety: the compiled loop has no bounds checks, so `recurrence` (and `prepare`) refuse any input whose shape,
dtype, device or layout is not exactly what the kernel was compiled for, before it runs; the kernel compiles (or
loads from numba's cache) in `available()` and never at call time (numba's dispatcher is closed after the warm-up:
a new signature would be an error, not a compile), the one exception being the fallback below, whose serial
kernel loads on its first call in a forked child.

Forks: GNU OpenMP cannot start threads in a process forked from one that had started them (numba's layer then
refuses the parallel region; torch's hangs). A child forked after numba's threads started runs the same blocks on
its own thread (`recur_serial`: the same numbers), torch there is set to one thread, and every call checks that
each block reports itself done, so a region that did not run raises instead of leaving uninitialised memory to
train on.
"""

from __future__ import annotations

import os
import threading

_state: dict = {}  # "numba", "recur", "serial" once imported; per dtype name: whether its kernel compiled;
# "forked": this process was forked from one whose numba threads had started (then only the serial kernel runs)
# numba's "workqueue" threading layer (where it is the one picked) aborts the process when two threads enter a
# parallel region at once
_lock = threading.Lock()


def _load():
    """numba and the kernels, imported once; None where numba is missing or fails to load here."""
    if "recur" not in _state:
        try:
            import numba

            from . import _kernels

            _state.update(numba=numba, recur=_kernels.recur, serial=_kernels.recur_serial, rows=_kernels.ROWS)
        except Exception:  # ImportError, or numba failing on this platform (e.g. no cache directory it can use)
            _state["recur"] = None
    return _state["recur"]


def available(dtype: str = "float32") -> bool:
    """Whether the compiled recurrence runs here for `dtype` ("float32" or "float64"): numba imports and the
    kernel compiles (or loads from numba's cache). Decided once per dtype; the torch loop runs where it is not."""
    if dtype not in _state:
        ok = False
        recur = _load()
        if recur is not None:
            try:
                with _lock:
                    # the serial kernel only where this process was forked from one that had started numba's
                    # threads (it loads there, on its first call: the one compile outside available())
                    if _state.get("forked"):
                        _warm_up(_state["serial"], dtype)
                        _state["serial", dtype] = True
                    else:
                        _warm_up(recur, dtype)
                ok = True
            except Exception:
                ok = False
        _state[dtype] = ok
    return _state[dtype]


def _warm_up(kernel, dtype: str) -> None:
    """Compile `kernel` for `dtype` (or load it from numba's cache) and run it, then close its dispatcher: from
    here on a signature it was not compiled for is an error, never a compile."""
    import numpy as np

    a = np.zeros((2, 5, 3), dtype)
    kernel.disable_compile(False)
    try:
        for backward in (False, True):
            _run(kernel, (a, a.copy(), a[0], a[0, :3].copy(), a), backward, dtype == "float32", np.zeros(2, np.uint8))
    finally:
        kernel.disable_compile(True)


def usable(x) -> bool:
    """Whether `x`'s recurrence can take the compiled route: a CPU tensor of float32 or float64, and numba here."""
    import torch

    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return available(str(x.dtype).replace("torch.", ""))


def _check(pre, out, first, w, hs, backward: bool) -> None:
    """Refuse what the compiled loop must never see: it has no bounds checks."""
    import torch

    if not usable(out):
        raise RuntimeError(f"the compiled recurrence runs float32 or float64 CPU tensors where numba is installed "
                           f"(pip install numba), not {out.dtype} on {out.device}")
    if out.dim() != 3:
        raise ValueError(f"compiled.recurrence: out must be (T, B, H), not {tuple(out.shape)}")
    T, B, H = out.shape
    if backward and hs is None:
        raise ValueError("compiled.recurrence: the backward loop needs hs, the forward states")
    want = {"pre": (pre, (T, B, H)), "out": (out, (T, B, H)), "first": (first, (B, H)), "w": (w, (H, H))}
    if backward:
        want["hs"] = (hs, (T, B, H))
    for name, (t, shape) in want.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"compiled.recurrence: {name} must be a tensor, not {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"compiled.recurrence: {name} must be {shape} for out {(T, B, H)}, not "
                             f"{tuple(t.shape)}")
        if t.dtype != out.dtype or t.device != out.device:
            raise ValueError(f"compiled.recurrence: {name} is {t.dtype} on {t.device}; out is {out.dtype} on "
                             f"{out.device}")
        if not t.is_contiguous():
            raise ValueError(f"compiled.recurrence: {name} must be contiguous (the loop reads raw memory)")
    if out.numel() and first.data_ptr() < out.data_ptr() + out.nbytes and out.data_ptr() < first.data_ptr() + \
            first.nbytes:
        raise ValueError("compiled.recurrence: first must not share memory with out (out is written in place)")


def _run(kernel, arrays, backward: bool, fast: bool, done) -> None:
    """One kernel call, and the check that every block of rows was computed."""
    kernel(*arrays, backward, fast, done)
    if not done.all():
        raise RuntimeError(f"the compiled recurrence computed {int(done.sum())} of its {done.size} blocks of rows: "
                           "numba's parallel region did not run (was this process forked from one that had started "
                           "its threads?)")


def _blocks(batch: int):
    """The kernel's completion marks: one byte per block of rows, zero."""
    import numpy as np

    return np.zeros(-(-batch // _state["rows"]), np.uint8)


def _call(arrays, backward: bool, fast: bool, done) -> None:
    import torch

    numba = _state["numba"]
    with _lock:
        if _state.get("forked"):
            kernel = _state["serial"]
            dtype = str(arrays[1].dtype)
            if ("serial", dtype) not in _state:
                _warm_up(kernel, dtype)
                _state["serial", dtype] = True
        else:
            kernel = _state["recur"]
            numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        _run(kernel, arrays, backward, fast, done)


def recurrence(pre, out, first, w, hs=None, backward: bool = False) -> None:
    """The T-step loop above, in place into `out` (T, B, H); `pre` may be `out` itself. first: (B, H), the state
    before the first step (forward: h_{-1}; backward: zeros); w: (H, H) laid out as W for the forward and as W^T
    (contiguous) for the backward; hs: (T, B, H) the forward states (backward only). All contiguous CPU tensors of
    one dtype, float32 or float64; `first` is not `out`'s memory. Anything else is refused (ValueError, TypeError;
    RuntimeError where numba cannot run) before the loop runs."""
    _check(pre, out, first, w, hs, backward)
    arrays = [t.detach().numpy() for t in (pre, out, first, w, out if hs is None else hs)]
    _call(arrays, backward, out.dtype.itemsize == 4, _blocks(out.shape[1]))


def prepare(pre, out, first, w, hs=None, backward: bool = False):
    """`recurrence` on fixed buffers, checked once: returns a function of no arguments that runs the loop on their
    current contents (for a caller that steps the same buffers many times, such as sampling). The buffers must
    keep their storage (no resize_) while the function is in use."""
    _check(pre, out, first, w, hs, backward)
    arrays = [t.detach().numpy() for t in (pre, out, first, w, out if hs is None else hs)]
    fast, done = out.dtype.itemsize == 4, _blocks(out.shape[1])

    def run() -> None:
        done.fill(0)
        _call(arrays, backward, fast, done)

    return run


def _after_fork_in_child() -> None:
    """In a process forked from this one, once charrnn has computed on the CPU here (this module was consulted):
    torch runs on one thread there (its GNU OpenMP threads would hang in the child, as torch's DataLoader workers
    also avoid), and where numba's threads had started, only the serial kernel runs (numba's OpenMP layer refuses
    a parallel region in the child). A process that never trained, evaluated or sampled here is left alone."""
    global _lock

    _lock = threading.Lock()  # another thread may have held it at the fork; it does not exist here
    if not _state:
        return
    numba = _state.get("numba")
    if numba is not None:
        try:
            numba.threading_layer()  # raises ValueError until numba's threads have started
            _state["forked"] = True
        except ValueError:
            pass
    import torch

    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
