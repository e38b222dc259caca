"""Whole-buffer device kernels the plan needs: gradient accumulation and fill."""
from numba import cuda

_THREADS = 256


@cuda.jit
def _accumulate(dst, src):
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] += src[i]


@cuda.jit
def _fill(a, value):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = value


def _flat(a):
    return a.reshape(a.size) if a.ndim != 1 else a


def accumulate(dst, src):
    if dst.size:
        _accumulate[(dst.size + _THREADS - 1) // _THREADS, _THREADS](_flat(dst), _flat(src))


def fill(a, value):
    if a.size:
        _fill[(a.size + _THREADS - 1) // _THREADS, _THREADS](_flat(a), value)
