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
`available()` is False and charrnn/fused.py runs its torch loop, the same maths.
"""

from __future__ import annotations

import threading

_state: dict = {}  # "numba", "recur" once imported; per dtype name: whether its kernel compiled
# numba's "workqueue" threading layer (where it is the one picked) aborts the process when two threads enter a
# parallel region at once
_lock = threading.Lock()


def _load():
    """numba and the kernels, imported once; None where numba is missing or fails to load here."""
    if "recur" not in _state:
        try:
            import numba

            from . import _kernels

            _state.update(numba=numba, recur=_kernels.recur)
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
            import numpy as np

            a = np.zeros((2, 5, 3), dtype)
            try:
                with _lock:
                    for backward in (False, True):
                        recur(a, a.copy(), a[0], a[0, :3].copy(), a, backward, dtype == "float32")
                ok = True
            except Exception:
                ok = False
        _state[dtype] = ok
    return _state[dtype]


def usable(x) -> bool:
    """Whether `x`'s recurrence can take the compiled route: a CPU tensor of float32 or float64, and numba here."""
    import torch

    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return available(str(x.dtype).replace("torch.", ""))


def recurrence(pre, out, first, w, hs=None, backward: bool = False) -> None:
    """The T-step loop above, in place into `out` (T, B, H); `pre` may be `out` itself. first: (B, H), the state
    before the first step (forward: h_{-1}; backward: zeros); w: (H, H) laid out as W for the forward and as W^T
    (contiguous) for the backward; hs: (T, B, H) the forward states (backward only). All contiguous CPU tensors of
    one dtype; `first` is not `out`'s memory."""
    import torch

    if not usable(out):
        raise RuntimeError(f"the compiled recurrence runs float32 or float64 CPU tensors where numba is installed "
                           f"(pip install numba), not {out.dtype} on {out.device}")
    numba, recur = _state["numba"], _state["recur"]
    arrays = [t.detach().numpy() for t in (pre, out, first, w, out if hs is None else hs)]
    with _lock:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        recur(*arrays, backward, out.dtype == torch.float32)
