"""numba kernels behind charrnn/compiled.py (imported only there, and only when training or evaluating on CPU: numba
takes a moment to import). See compiled.py for what they compute and why.

Threads: numba's default layer here is GNU OpenMP (no tbb installed). Its fork-safe "workqueue" layer made a 2x128
training step 25 % slower than the torch loop (302k against 414k chars/s with OpenMP, benchmarks/compiled_ab.py),
and a child forked after the parent computed cannot use torch's own OpenMP threads either (torch 2.13 hangs
there), so the default stays."""

from __future__ import annotations

import math

import numba
import numpy as np

# exp(-y) = sum_k (-y)^k / k!: 12 terms leave a relative error below 3e-12 for y <= 0.5632 (the next term)
_EXP_TERMS = tuple(1.0 / math.factorial(k) for k in range(12))
# float32 tanh is 1 or -1 (rounded) beyond |v| = 9.01; the kernel clamps there, so exp(-2|v|) = exp(-|v|/16)^32
_CLAMP16 = 9.01 / 16
_FAST = {"reassoc", "contract"}  # no NaN/infinity assumptions: a diverging run must still show NaN
# error_model="numpy": a float division by zero gives inf/NaN as in numpy instead of raising, which keeps the check
# (a branch) out of the loops so that LLVM can vectorize them (the tanh loop ran 7x slower with it)


@numba.njit(fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def _tanh_exact(row):  # pragma: no cover - compiled; tests run it through fused.py
    one = row.dtype.type(1)
    for j in range(row.shape[0]):  # tanh(v) = sign(v) (1 - e) / (1 + e), e = exp(-2|v|) <= 1: no overflow
        e = np.exp(-2 * abs(row[j]))
        row[j] = np.copysign((one - e) / (one + e), row[j])


@numba.njit(fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def _tanh_fast(row):  # pragma: no cover
    """float32 rows: the same formula with exp from a polynomial and 5 squarings, in float64, which LLVM vectorizes
    (np.exp is a scalar libm call: 4.3 ns an element here, against 0.66 for this)."""
    c = _EXP_TERMS
    for j in range(row.shape[0]):
        v = row[j]
        u = -min(abs(np.float64(v)) * 0.0625, _CLAMP16)  # -2|v| / 32
        p = ((((((((((c[11] * u + c[10]) * u + c[9]) * u + c[8]) * u + c[7]) * u + c[6]) * u + c[5]) * u + c[4])
                  * u + c[3]) * u + c[2]) * u + c[1]) * u + c[0]
        p *= p
        p *= p
        p *= p
        p *= p
        p *= p  # exp(-2|v|)
        r = (1.0 - p) / (1.0 + p)
        s = np.float64(v)
        if abs(s) < 0.01:  # 1 - p cancels: tanh(v) = v (1 - v^2/3 + 2 v^4/15), relative error below 1e-13 here
            r = abs(s * (1.0 - s * s * (1.0 / 3.0 - s * s * (2.0 / 15.0))))
        row[j] = r if v >= 0 else -r


@numba.njit(parallel=True, fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def recur(pre, out, first, w, hs, backward, fast):  # pragma: no cover
    T, B, H = out.shape
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    for blk in numba.prange((B + 3) // 4):
        # rows past the end repeat the last row: the same thread writes the same values to it, and every value of
        # a step is read before any is written, so a repeated row (or column) changes nothing
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
            for j in range(0, H, 2):  # outputs (i0..i3) x (j, j1) as dot products over k: 8 FMA chains
                j1 = min(j + 1, H - 1)
                s0a = s1a = s2a = s3a = s0b = s1b = s2b = s3b = zero
                for k in range(H):
                    a, b = w[j, k], w[j1, k]
                    p0, p1, p2, p3 = src[i0, k], src[i1, k], src[i2, k], src[i3, k]
                    s0a += p0 * a
                    s1a += p1 * a
                    s2a += p2 * a
                    s3a += p3 * a
                    s0b += p0 * b
                    s1b += p1 * b
                    s2b += p2 * b
                    s3b += p3 * b
                v0a, v1a, v2a, v3a = pre[t, i0, j] + s0a, pre[t, i1, j] + s1a, pre[t, i2, j] + s2a, pre[t, i3, j] + s3a
                v0b, v1b = pre[t, i0, j1] + s0b, pre[t, i1, j1] + s1b
                v2b, v3b = pre[t, i2, j1] + s2b, pre[t, i3, j1] + s3b
                out[t, i0, j], out[t, i1, j], out[t, i2, j], out[t, i3, j] = v0a, v1a, v2a, v3a
                out[t, i0, j1], out[t, i1, j1], out[t, i2, j1], out[t, i3, j1] = v0b, v1b, v2b, v3b
            for i in range(i0, min(i0 + 4, B)):  # the activation, over the block's real rows only
                row = out[t, i]
                if backward:
                    h = hs[t, i]
                    for j in range(H):
                        row[j] *= one - h[j] * h[j]
                elif fast:
                    _tanh_fast(row)
                else:
                    _tanh_exact(row)
