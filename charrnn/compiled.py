"""The tanh recurrence's T-step loop compiled with numba: one call per layer and direction instead of two torch calls
per step, with the activation fused into the product.

    forward:   out_t = tanh(pre_t + out_{t-1} W^T)                  (out_{-1} = first)
    backward:  out_t = (pre_t + out_{t+1} W) * (1 - h_t^2)          (out_T = first, zeros)

Why: torch's GEMM cannot apply an activation to its result, so every step of the torch route is a product plus an
elementwise pass, and a B x H by H x H product is small enough that MKL reaches only part of its peak on it. Here
each thread owns 4 rows of the batch for all T steps (rows never depend on other rows), and forms 4 x 2 outputs at a
time as dot products over k, which LLVM vectorizes into FMAs; the tanh or the derivative is applied before the store.
On the 2-core Zen 4 VM this ran the per-step recurrence at 205 GFLOP/s at H=512 (torch's addmm + tanh: 125) and
82 at H=128 (63): benchmarks/README.md.

The result does not depend on the thread count or on the schedule (each output element is one thread's fixed
sequence of operations), so runs are bitwise reproducible. fastmath allows only reassociation and contraction (the
sums over k are vectorized; FMAs), not assumptions about NaN or infinity, so a diverging run still shows NaN.

numba is optional: without it (or where it fails to compile), `available()` is False and charrnn/fused.py runs its
torch loop, the same maths.
"""

from __future__ import annotations

import threading

_state: dict = {}
# numba's default "workqueue" threading layer aborts the process when two threads enter a parallel region at once
_lock = threading.Lock()


def available() -> bool:
    """Whether the compiled recurrence can run here (numba imports and the kernel compiles; decided once)."""
    if "ok" not in _state:
        try:
            import numpy as np

            import numba

            from . import _kernels

            a = np.zeros((2, 5, 3), np.float32)  # compile now (or load from numba's cache), so a failure shows here
            for backward in (False, True):
                _kernels.recur(a, a.copy(), a[0], a[0, :3].copy(), a, backward, True)
            _state.update(ok=True, numba=numba, recur=_kernels.recur)
        except Exception:  # ImportError, or numba failing on this platform: the torch loop runs instead
            _state["ok"] = False
    return _state["ok"]


def usable(x) -> bool:
    """Whether `x`'s recurrence can take the compiled route: a CPU tensor of float32 or float64, and numba here."""
    import torch

    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and available()


def recurrence(pre, out, first, w, hs=None, backward: bool = False) -> None:
    """The T-step loop above, in place into `out` (T, B, H); `pre` may be `out` itself. first: (B, H), the state
    before the first step (forward: h_{-1}; backward: zeros); w: (H, H) laid out as W for the forward and as W^T
    (contiguous) for the backward; hs: (T, B, H) the forward states (backward only). All contiguous CPU tensors of
    one dtype."""
    import torch

    if not available():
        raise RuntimeError("the compiled recurrence needs numba (pip install numba)")
    numba, recur = _state["numba"], _state["recur"]
    arrays = [t.detach().numpy() for t in (pre, out, first, w, out if hs is None else hs)]
    with _lock:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        recur(*arrays, backward, out.dtype == torch.float32)
