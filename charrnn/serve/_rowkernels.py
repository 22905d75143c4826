"""numba kernels for serve's steppers (imported only by charrnn/serve/rows.py, and only where numba loads).

Why not torch's addmm or numpy's matmul: a BLAS picks its kernel and blocking by the shape of the product (gemv for
one row, gemm micro-kernels for several, edge kernels for the rows left over), so a row's sums may be rounded
differently depending on how many other rows share the call. serve promises that a seeded request gets the same
text alone or beside any others, so here every output element is formed by the same sequence of IEEE operations
whatever the batch: it starts from its bias (or table row), then adds x[k] * w[k, j] for k = 0, 1, ... in order,
one multiply and one add each (no fastmath: no reassociation, no FMA contraction). Loops run over j innermost (LLVM
vectorizes across outputs, which needs no reassociation) and over blocks of 4 rows that share each loaded weight
row; the blocking changes which rows are computed together, never the operations that form one element.
"""

from __future__ import annotations

import numba

from ..model._kernels import _tanh_fast  # float32 tanh, element by element (vectorized; the training kernel's own)


@numba.njit(cache=True, nogil=True, inline="always")
def _accumulate(dst, src, wt, i0, i1):  # pragma: no cover - compiled
    """dst[i, :] += sum_k src[i, k] * wt[k, :] for rows i0 <= i < i1, k in order."""
    K, N = wt.shape
    for k in range(K):
        w = wt[k]
        for i in range(i0, i1):
            a = src[i, k]
            o = dst[i]
            for j in range(N):
                o[j] = o[j] + a * w[j]


@numba.njit(cache=True, nogil=True)
def _block(ids, table, w_xh_t, bias, w_hh_t, head_t, head_b, state, pre, logits, i0, i1):  # pragma: no cover
    L = w_hh_t.shape[0]
    for i in range(i0, i1):
        pre[i, :] = table[ids[i]]  # W^1_xh x + b^1: the lookup table has the layer-1 bias folded in
    for layer in range(L):
        if layer > 0:
            for i in range(i0, i1):
                pre[i, :] = bias[layer]
            _accumulate(pre, state[layer - 1], w_xh_t[layer - 1], i0, i1)
        _accumulate(pre, state[layer], w_hh_t[layer], i0, i1)
        for i in range(i0, i1):
            _tanh_fast(pre[i])  # a function of each element alone: the same whatever the batch
            state[layer, i, :] = pre[i]
    for i in range(i0, i1):
        logits[i, :] = head_b
    _accumulate(logits, state[L - 1], head_t, i0, i1)


@numba.njit(cache=True, nogil=True)
def tanh_step(ids, table, w_xh_t, bias, w_hh_t, head_t, head_b, state, pre, logits):  # pragma: no cover
    """One generation step for rows 0..B-1 of a tanh CharRNN, in place: state (L, B, H), logits (B, V)."""
    B = ids.shape[0]
    for blk in range((B + 3) // 4):
        _block(ids, table, w_xh_t, bias, w_hh_t, head_t, head_b, state, pre, logits, blk * 4, min(blk * 4 + 4, B))


@numba.njit(parallel=True, cache=True, nogil=True)
def tanh_step_parallel(ids, table, w_xh_t, bias, w_hh_t, head_t, head_b, state, pre, logits):  # pragma: no cover
    """tanh_step with the blocks of rows shared among numba's threads (each row's operations are the same)."""
    B = ids.shape[0]
    for blk in numba.prange((B + 3) // 4):
        _block(ids, table, w_xh_t, bias, w_hh_t, head_t, head_b, state, pre, logits, blk * 4, min(blk * 4 + 4, B))
