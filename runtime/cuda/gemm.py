"""Dense linear algebra shared by the CUDA conv, deconv and dense kernels.

`gemm` is a batched, shared-memory tiled matrix multiply with transpose flags and alpha/beta
accumulation; `add_channel_bias` and `sum_channels` are the bias epilogue around it and that
epilogue's gradient. Every array stays on the device; these functions only launch kernels.

GEMM tiling: a block of BLOCK_SIDE x BLOCK_SIDE threads computes a TILE_MN x TILE_MN tile of C,
each thread a MICRO x MICRO register tile of outputs spaced BLOCK_SIDE apart (so neighbouring
threads write neighbouring columns: coalesced stores). The K dimension is walked TILE_K at a
time through shared memory; each thread loads an equal share of both tiles, reading along
whichever axis of A / B is contiguous for the given transpose flag (coalesced loads).
"""
import numpy as np
from numba import cuda

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d

# 64-thread blocks with 4x4 register tiles: 32x32 tiles of C spread the small GEMMs of conv
# and dense layers over many SMs, and keep the CUDA simulator (a Python thread per GPU thread)
# affordable in CI.
BLOCK_SIDE = 8                      # threads per block along each axis
MICRO = 4                           # outputs per thread along each axis
TILE_MN = BLOCK_SIDE * MICRO        # rows (and columns) of C per block
TILE_K = 16                         # depth of the shared-memory tiles
_BLOCK_THREADS = BLOCK_SIDE * BLOCK_SIDE
# A's shared tile is padded by one column so a warp storing down a column hits distinct banks.
# (Shared array shapes must be compile-time constants: module globals, not expressions.)
_A_TILE_COLS = TILE_K + 1


@cuda.jit
def _gemm_kernel(a, b, c, trans_a, trans_b, alpha, beta):
    """c[z] = alpha * op(a[z]) @ op(b[z]) + beta * c[z], z = blockIdx.z; c is not read when beta == 0."""
    a_tile = cuda.shared.array((TILE_MN, _A_TILE_COLS), dtype=c.dtype)
    b_tile = cuda.shared.array((TILE_K, TILE_MN), dtype=c.dtype)
    acc = cuda.local.array((MICRO, MICRO), dtype=c.dtype)
    a_reg = cuda.local.array(MICRO, dtype=c.dtype)
    b_reg = cuda.local.array(MICRO, dtype=c.dtype)

    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * BLOCK_SIDE + tx
    z = cuda.blockIdx.z
    row0 = cuda.blockIdx.y * TILE_MN
    col0 = cuda.blockIdx.x * TILE_MN
    m = c.shape[1]
    n = c.shape[2]
    depth = a.shape[1] if trans_a else a.shape[2]
    has_outputs = row0 + ty < m and col0 + tx < n

    for i in range(MICRO):
        for j in range(MICRO):
            acc[i, j] = 0

    for k0 in range(0, depth, TILE_K):
        for e in range(tid, TILE_MN * TILE_K, _BLOCK_THREADS):
            if trans_a:             # a[z] is (K, M): consecutive threads take consecutive rows of C
                kk = e // TILE_MN
                r = e % TILE_MN
            else:                   # a[z] is (M, K): consecutive threads take consecutive k
                r = e // TILE_K
                kk = e % TILE_K
            gr = row0 + r
            gk = k0 + kk
            if gr < m and gk < depth:
                a_tile[r, kk] = a[z, gk, gr] if trans_a else a[z, gr, gk]
            else:
                a_tile[r, kk] = 0

            if trans_b:             # b[z] is (N, K)
                cc = e // TILE_K
                kk = e % TILE_K
            else:                   # b[z] is (K, N)
                kk = e // TILE_MN
                cc = e % TILE_MN
            gc = col0 + cc
            gk = k0 + kk
            if gc < n and gk < depth:
                b_tile[kk, cc] = b[z, gc, gk] if trans_b else b[z, gk, gc]
            else:
                b_tile[kk, cc] = 0
        cuda.syncthreads()

        # Threads whose whole register tile lies outside C, and the zero padding past the
        # last k, would only multiply zeros: skip them (uniform inside C, so no divergence there).
        if has_outputs:
            for kk in range(min(TILE_K, depth - k0)):
                for i in range(MICRO):
                    a_reg[i] = a_tile[ty + BLOCK_SIDE * i, kk]
                for j in range(MICRO):
                    b_reg[j] = b_tile[kk, tx + BLOCK_SIDE * j]
                for i in range(MICRO):
                    for j in range(MICRO):
                        acc[i, j] += a_reg[i] * b_reg[j]
        # the next iteration overwrites the tiles: everyone must be done reading them
        cuda.syncthreads()

    for i in range(MICRO):
        r = row0 + ty + BLOCK_SIDE * i
        for j in range(MICRO):
            cc = col0 + tx + BLOCK_SIDE * j
            if r < m and cc < n:
                if beta == 0:
                    c[z, r, cc] = alpha * acc[i, j]
                else:
                    c[z, r, cc] = alpha * acc[i, j] + beta * c[z, r, cc]


def _as_batch(array):
    return array.reshape((1,) + tuple(array.shape)) if array.ndim == 2 else array


def gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """c = alpha * op(a) @ op(b) + beta * c on device arrays, op(x) = x.T when its flag is set.

    2-D operands are one matrix; 3-D operands are a batch of matrices of equal batch size,
    multiplied pairwise. c must not alias a or b. With beta == 0, c's old contents (even NaN)
    are ignored.
    """
    a, b, c = _as_batch(a), _as_batch(b), _as_batch(c)
    batch, m, n = c.shape
    a_rows, a_depth = (a.shape[2], a.shape[1]) if trans_a else (a.shape[1], a.shape[2])
    b_depth, b_cols = (b.shape[2], b.shape[1]) if trans_b else (b.shape[1], b.shape[2])
    if a.shape[0] != batch or b.shape[0] != batch or a_rows != m or b_cols != n or a_depth != b_depth:
        raise ValueError(f"gemm shapes do not agree: a {a.shape} (trans {trans_a}), "
                         f"b {b.shape} (trans {trans_b}), c {c.shape}")
    if batch == 0 or m == 0 or n == 0:
        return
    scalar = np.dtype(c.dtype).type
    grid = ((n + TILE_MN - 1) // TILE_MN, (m + TILE_MN - 1) // TILE_MN, batch)
    _gemm_kernel[grid, (BLOCK_SIDE, BLOCK_SIDE)](a, b, c, trans_a, trans_b, scalar(alpha), scalar(beta))


@cuda.jit
def _add_channel_bias_kernel(y, bias):
    i = cuda.grid(1)
    if i < y.size:
        per_sample = y.shape[1] * y.shape[2]
        n = i // per_sample
        rest = i % per_sample
        ch = rest // y.shape[2]
        y[n, ch, rest % y.shape[2]] += bias[ch]


def add_channel_bias(y, bias):
    """y[n, c, l] += bias[c] for y viewed as (N, C, L)."""
    _add_channel_bias_kernel[blocks_1d(y.size), THREADS_1D](y, bias)


# Threads per block of the bias-gradient reduction: a power of two. Two warps keep every block
# busy on a modest channel count without a long shared-memory tree.
_REDUCE_THREADS = 64


@cuda.jit
def _sum_channels_kernel(g, out):
    """One block per channel: each thread sums a strided share of (n, l), then a tree reduction."""
    partial = cuda.shared.array(_REDUCE_THREADS, dtype=out.dtype)
    ch = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    spatial = g.shape[2]
    total = g.dtype.type(0)
    for e in range(tid, g.shape[0] * spatial, _REDUCE_THREADS):
        total += g[e // spatial, ch, e % spatial]
    partial[tid] = total
    cuda.syncthreads()
    stride = _REDUCE_THREADS // 2
    while stride > 0:
        if tid < stride:
            partial[tid] += partial[tid + stride]
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        out[ch] = partial[0]


def sum_channels(g, out):
    """out[c] = sum over n, l of g[n, c, l] for g viewed as (N, C, L): the gradient of a bias."""
    _sum_channels_kernel[g.shape[1], _REDUCE_THREADS](g, out)
