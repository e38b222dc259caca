"""Block reductions shared by the CUDA kernels (batchnorm statistics, softmax, losses, optimizers).

A block reduction is a shared-memory tree: every thread of the block contributes one value
(its partial over a strided share of the row), the tree halves the active threads each
round, and every thread reads the result. The block size must be a power of two, and every
thread of the block must call the function, so callers never call it inside a branch that
depends on the thread.
"""
from numba import cuda

from dslc.runtime.cuda.launch import THREADS_1D


def reduction_threads(length):
    """Threads per block for a reduction over `length` values: the smallest power of two
    covering it, capped at THREADS_1D (longer rows are walked with a stride)."""
    threads = 1
    while threads < min(length, THREADS_1D):
        threads *= 2
    return threads


@cuda.jit(device=True)
def block_sum(scratch, value):
    """Sum of `value` over the block's threads; every thread gets it. scratch: THREADS_1D shared."""
    tid = cuda.threadIdx.x
    scratch[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            scratch[tid] += scratch[tid + stride]
        cuda.syncthreads()
        stride //= 2
    total = scratch[0]
    # The caller may reuse scratch right away: nobody may overwrite scratch[0] before all read it.
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def block_max(scratch, value):
    """Maximum of `value` over the block's threads; every thread gets it. scratch: THREADS_1D shared."""
    tid = cuda.threadIdx.x
    scratch[tid] = value
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if tid < stride:
            scratch[tid] = max(scratch[tid], scratch[tid + stride])
        cuda.syncthreads()
        stride //= 2
    top = scratch[0]
    cuda.syncthreads()
    return top


def channel_view(a):
    """(N, C, ...) -> (N, C, S) view, S = product of the trailing dims (1 for (N, C))."""
    return a.reshape(a.shape[0], a.shape[1], -1)
