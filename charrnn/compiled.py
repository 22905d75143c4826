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


def _build():
    import numba
    import numpy as np

    @numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True, nogil=True)
    def recur(pre, out, first, w, hs, backward):  # pragma: no cover - compiled; tests run it through fused.py
        T, B, H = out.shape
        zero = np.zeros(1, out.dtype)[0]
        one = zero + 1
        for blk in numba.prange((B + 3) // 4):
            # rows past the end repeat the last row: the same thread writes the same values to it, and every value
            # of a step is read before any is written, so a repeated row (or column) changes nothing
            i0 = blk * 4
            i1, i2, i3 = min(i0 + 1, B - 1), min(i0 + 2, B - 1), min(i0 + 3, B - 1)
            for n in range(T):
                t = T - 1 - n if backward else n
                if n == 0:
                    src = first
                elif backward:
                    src = out[t + 1]
                else:
                    src = out[t - 1]
                for j in range(0, H, 2):
                    j1 = min(j + 1, H - 1)
                    s0a = zero
                    s1a = zero
                    s2a = zero
                    s3a = zero
                    s0b = zero
                    s1b = zero
                    s2b = zero
                    s3b = zero
                    for k in range(H):
                        a = w[j, k]
                        b = w[j1, k]
                        p0 = src[i0, k]
                        p1 = src[i1, k]
                        p2 = src[i2, k]
                        p3 = src[i3, k]
                        s0a += p0 * a
                        s1a += p1 * a
                        s2a += p2 * a
                        s3a += p3 * a
                        s0b += p0 * b
                        s1b += p1 * b
                        s2b += p2 * b
                        s3b += p3 * b
                    v0a = pre[t, i0, j] + s0a
                    v1a = pre[t, i1, j] + s1a
                    v2a = pre[t, i2, j] + s2a
                    v3a = pre[t, i3, j] + s3a
                    v0b = pre[t, i0, j1] + s0b
                    v1b = pre[t, i1, j1] + s1b
                    v2b = pre[t, i2, j1] + s2b
                    v3b = pre[t, i3, j1] + s3b
                    out[t, i0, j] = v0a
                    out[t, i1, j] = v1a
                    out[t, i2, j] = v2a
                    out[t, i3, j] = v3a
                    out[t, i0, j1] = v0b
                    out[t, i1, j1] = v1b
                    out[t, i2, j1] = v2b
                    out[t, i3, j1] = v3b
                for i in range(i0, min(i0 + 4, B)):  # the activation, over the block's real rows only
                    row = out[t, i]
                    if backward:
                        h = hs[t, i]
                        for j in range(H):
                            row[j] *= one - h[j] * h[j]
                    else:
                        for j in range(H):  # tanh(v) = sign(v) (1 - e) / (1 + e), e = exp(-2|v|) <= 1: no overflow
                            e = np.exp(-2 * abs(row[j]))
                            row[j] = np.copysign((one - e) / (one + e), row[j])

    return numba, recur


def available() -> bool:
    """Whether the compiled recurrence can run here (numba imports and the kernel compiles; decided once)."""
    if "ok" not in _state:
        try:
            import numpy as np

            numba, recur = _build()
            for dtype in (np.float32, np.float64):  # compile both now (cached on disk), so a failure shows here
                a = np.zeros((2, 3, 3), dtype)
                recur(a, a.copy(), a[0], a[0].copy(), a, False)
                recur(a, a.copy(), a[0], a[0].copy(), a, True)
            _state.update(ok=True, numba=numba, recur=recur)
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
        recur(*arrays, backward)
