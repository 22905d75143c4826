"""numba kernels behind charrnn/model/compiled.py (imported only there, and only when training or evaluating on CPU: numba
takes a moment to import). See model/compiled.py for what they compute and why.

Threads: numba's default layer here is GNU OpenMP (no tbb installed). Its fork-safe "workqueue" layer made a 2x128
training step 25 % slower than the torch loop (302k against 414k chars/s with OpenMP, benchmarks/compiled_ab.py),
so the default stays; a process forked from one whose numba threads started runs `recur_serial` instead (the same
block function on the calling thread: the same numbers), and model/compiled.py checks `done` after every call, so a
parallel region that did not run (numba's OpenMP layer refuses one in such a child: it prints "Terminating: fork()
called from a process already using GNU OpenMP", raises SIGTERM and returns without computing) is an error, never
a result."""

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
ROWS = 4  # batch rows per block: one block is one unit of work for a thread, for all T steps


@numba.njit(fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def _tanh_exact(row):  # pragma: no cover - compiled; tests run it through model/fused.py
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


@numba.njit(fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def dots4x2(dst, base, src, w, i0):  # pragma: no cover - compiled
    """dst[i, j] = base[i, j] + src[i] . w[j] for the rows i0..i0+3 and every j, 4 rows x 2 columns at a time: 8
    FMA chains over k (base may be dst: every value is read before any write). The training kernel's block and
    serve's batch-invariant rows both step through it. numba's cache does not see a change here from serve's
    functions (another file): after editing this one, clear the __pycache__ of charrnn/serve too."""
    N, K = w.shape
    i1, i2, i3 = i0 + 1, i0 + 2, i0 + 3
    zero = dst.dtype.type(0)
    for j in range(0, N, 2):
        j1 = min(j + 1, N - 1)  # odd N: the last column twice (every value is read before any write)
        s0a = s1a = s2a = s3a = s0b = s1b = s2b = s3b = zero
        for k in range(K):
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
        v0a, v1a, v2a, v3a = base[i0, j] + s0a, base[i1, j] + s1a, base[i2, j] + s2a, base[i3, j] + s3a
        v0b, v1b, v2b, v3b = base[i0, j1] + s0b, base[i1, j1] + s1b, base[i2, j1] + s2b, base[i3, j1] + s3b
        dst[i0, j], dst[i1, j], dst[i2, j], dst[i3, j] = v0a, v1a, v2a, v3a
        dst[i0, j1], dst[i1, j1], dst[i2, j1], dst[i3, j1] = v0b, v1b, v2b, v3b


@numba.njit(fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def _block(pre, out, first, w, hs, backward, fast, i0):  # pragma: no cover
    """Rows i0 .. i0+3 (those that exist) for all T steps. Four rows: outputs (4 rows) x (2 columns) as dot products
    over k, 8 FMA chains. Fewer (the last block when B % 4 != 0, the whole batch when B < 4): each real row alone,
    4 columns at a time, so B = 1..3 do only their own rows' work."""
    T, B, H = out.shape
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    rows = min(ROWS, B - i0)
    for n in range(T):
        t = T - 1 - n if backward else n
        if n == 0:
            src = first
        elif backward:
            src = out[t + 1]
        else:
            src = out[t - 1]
        if rows == ROWS:
            dots4x2(out[t], pre[t], src, w, i0)
        else:
            for i in range(i0, i0 + rows):
                for j in range(0, H, 4):  # one row x 4 columns: 4 FMA chains
                    j1, j2, j3 = min(j + 1, H - 1), min(j + 2, H - 1), min(j + 3, H - 1)
                    s0 = s1 = s2 = s3 = zero
                    for k in range(H):
                        p = src[i, k]
                        s0 += p * w[j, k]
                        s1 += p * w[j1, k]
                        s2 += p * w[j2, k]
                        s3 += p * w[j3, k]
                    v0, v1, v2, v3 = pre[t, i, j] + s0, pre[t, i, j1] + s1, pre[t, i, j2] + s2, pre[t, i, j3] + s3
                    out[t, i, j], out[t, i, j1], out[t, i, j2], out[t, i, j3] = v0, v1, v2, v3
        for i in range(i0, i0 + rows):  # the activation, over the block's rows
            row = out[t, i]
            if backward:
                h = hs[t, i]
                for j in range(H):
                    row[j] *= one - h[j] * h[j]
            elif fast:
                _tanh_fast(row)
            else:
                _tanh_exact(row)


@numba.njit(parallel=True, fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def recur(pre, out, first, w, hs, backward, fast, done):  # pragma: no cover
    """All blocks of ROWS rows over numba's threads; done[blk] = 1 once block blk is computed (done: one uint8 per
    block, zeroed by the caller, which checks it)."""
    for blk in numba.prange(done.shape[0]):
        _block(pre, out, first, w, hs, backward, fast, blk * ROWS)
        done[blk] = 1


@numba.njit(fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def recur_serial(pre, out, first, w, hs, backward, fast, done):  # pragma: no cover
    """`recur` on the calling thread alone (each block the same compiled function: the same numbers)."""
    for blk in range(done.shape[0]):
        _block(pre, out, first, w, hs, backward, fast, blk * ROWS)
        done[blk] = 1
