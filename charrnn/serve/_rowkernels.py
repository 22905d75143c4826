"""numba kernels for serve's steppers (imported only by charrnn/serve/rows.py, and only where numba loads).

Why not torch's addmm or numpy's matmul: a BLAS picks its kernel and blocking by the shape of the product (gemv for
one row, gemm micro-kernels for several, edge kernels for the rows left over), so a row's sums may be rounded
differently depending on how many other rows share the call. serve promises that a seeded request gets the same
text alone or beside any others, so here a row's results may depend on nothing but its own inputs.

Each output element is its bias (or table row) plus one dot product per weight matrix, over k, of the row's input
and the matrix's row j (the weights as torch keeps them: row j of W is contiguous over k). A dot product is 8 chains
of fused multiply-adds summed in an order LLVM picks when it vectorizes the k loop (fastmath: reassociation and
contraction, as the training kernels in model/_kernels.py). Rows go in blocks of 4 (4 rows x 2 columns: 8 chains,
each weight loaded once for 4 rows); the rows left over (B % 4) go one at a time, 8 columns at a time: 8 chains too,
so LLVM vectorizes both loops alike and a row gets the same bytes in either. That is checked, not assumed:
`paths_agree` compares the two on random data for the model's shapes when serve starts (rows.py), and where they
differ (another CPU, another LLVM) every batch is padded to whole blocks, so no row ever takes the other path.
"""

from __future__ import annotations

import numba
import numpy as np

from ..model._kernels import _FAST, _tanh_fast, dots4x2  # float32 tanh element by element; the 4-row block

ROWS = 4


@numba.njit(fastmath=_FAST, cache=True, nogil=True, error_model="numpy")
def _dots1(dst, src, w, i):  # pragma: no cover - compiled
    """dst[i, j] += src[i] . w[j] for the one row i and every j: 8 columns at a time (8 chains, as dots4x2)."""
    N, K = w.shape
    zero = dst.dtype.type(0)
    for j in range(0, N, 8):
        j1, j2, j3 = min(j + 1, N - 1), min(j + 2, N - 1), min(j + 3, N - 1)
        j4, j5, j6, j7 = min(j + 4, N - 1), min(j + 5, N - 1), min(j + 6, N - 1), min(j + 7, N - 1)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
        for k in range(K):
            p = src[i, k]
            s0 += p * w[j, k]
            s1 += p * w[j1, k]
            s2 += p * w[j2, k]
            s3 += p * w[j3, k]
            s4 += p * w[j4, k]
            s5 += p * w[j5, k]
            s6 += p * w[j6, k]
            s7 += p * w[j7, k]
        v0, v1, v2, v3 = dst[i, j] + s0, dst[i, j1] + s1, dst[i, j2] + s2, dst[i, j3] + s3
        v4, v5, v6, v7 = dst[i, j4] + s4, dst[i, j5] + s5, dst[i, j6] + s6, dst[i, j7] + s7
        dst[i, j], dst[i, j1], dst[i, j2], dst[i, j3] = v0, v1, v2, v3
        dst[i, j4], dst[i, j5], dst[i, j6], dst[i, j7] = v4, v5, v6, v7


@numba.njit(cache=True, nogil=True)
def _dots(dst, src, w, i0, i1):  # pragma: no cover - compiled
    """Rows i0..i1-1 (at most 4): a whole block, or the rows left over one by one."""
    if i1 - i0 == ROWS:
        dots4x2(dst, dst, src, w, i0)
    else:
        for i in range(i0, i1):
            _dots1(dst, src, w, i)


@numba.njit(cache=True, nogil=True)
def _layer(ids, table, w_xh, bias, w_hh, state, pre, layer, i0, i1):  # pragma: no cover - compiled
    """Layer `layer` of rows i0..i1-1: its new state (written once the old one has been read)."""
    for i in range(i0, i1):
        pre[i, :] = table[ids[i]] if layer == 0 else bias[layer]  # the table has the layer-1 bias folded in
    if layer > 0:
        _dots(pre, state[layer - 1], w_xh[layer - 1], i0, i1)
    _dots(pre, state[layer], w_hh[layer], i0, i1)
    for i in range(i0, i1):
        _tanh_fast(pre[i])  # a function of each element alone
        state[layer, i, :] = pre[i]


@numba.njit(cache=True, nogil=True)
def _head(head, head_b, state, logits, i0, i1):  # pragma: no cover - compiled
    for i in range(i0, i1):
        logits[i, :] = head_b
    _dots(logits, state[state.shape[0] - 1], head, i0, i1)


@numba.njit(cache=True, nogil=True)
def tanh_step(ids, table, w_xh, bias, w_hh, head, head_b, state, pre, logits):  # pragma: no cover - compiled
    """One generation step for rows 0..B-1 of a tanh CharRNN, in place: state (L, B, H), logits (B, V). Layer by
    layer over all blocks, so a layer's weights are reused from the cache by the blocks after the first."""
    B = ids.shape[0]
    for layer in range(state.shape[0]):
        for i0 in range(0, B, ROWS):
            _layer(ids, table, w_xh, bias, w_hh, state, pre, layer, i0, min(i0 + ROWS, B))
    for i0 in range(0, B, ROWS):
        _head(head, head_b, state, logits, i0, min(i0 + ROWS, B))


@numba.njit(parallel=True, cache=True, nogil=True)
def tanh_step_parallel(ids, table, w_xh, bias, w_hh, head, head_b, state, pre, logits):  # pragma: no cover
    """tanh_step with the blocks of rows shared among numba's threads (each row's operations are the same)."""
    B = ids.shape[0]
    for blk in numba.prange((B + ROWS - 1) // ROWS):
        i0 = blk * ROWS
        i1 = min(i0 + ROWS, B)
        for layer in range(state.shape[0]):
            _layer(ids, table, w_xh, bias, w_hh, state, pre, layer, i0, i1)
        _head(head, head_b, state, logits, i0, i1)


@numba.njit(cache=True, nogil=True)
def _both_paths(block, alone, src, w):  # pragma: no cover - compiled
    dots4x2(block, block, src, w, 0)
    for i in range(ROWS):
        _dots1(alone, src, w, i)


def paths_agree(shapes, seed: int = 0) -> bool:
    """Whether a block of 4 rows and the rows one by one give the same bytes, for weight matrices of these
    (N, K) shapes (float32), on random inputs."""
    rng = np.random.default_rng(seed)
    for N, K in shapes:
        w = rng.standard_normal((N, K)).astype(np.float32)
        src = rng.standard_normal((ROWS, K)).astype(np.float32)
        block = rng.standard_normal((ROWS, N)).astype(np.float32)
        alone = block.copy()
        _both_paths(block, alone, src, w)
        if block.tobytes() != alone.tobytes():
            return False
    return True
