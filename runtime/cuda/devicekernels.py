"""Whole-buffer device kernels the plan and the trainer need: gradient accumulation, fill and clamp."""
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


@cuda.jit
def _clamp(a, low, high):
    i = cuda.grid(1)
    if i < a.size:
        # NaN fails both tests and stays NaN, as with numpy's clip
        if a[i] < low:
            a[i] = low
        elif a[i] > high:
            a[i] = high


def _flat(a):
    return a.reshape(a.size) if a.ndim != 1 else a


def accumulate(dst, src):
    if dst.size:
        _accumulate[(dst.size + _THREADS - 1) // _THREADS, _THREADS](_flat(dst), _flat(src))


def fill(a, value):
    if a.size:
        _fill[(a.size + _THREADS - 1) // _THREADS, _THREADS](_flat(a), value)


def clamp(a, low, high):
    """a = min(max(a, low), high) in place (gradient clipping by value)."""
    if a.size:
        _clamp[(a.size + _THREADS - 1) // _THREADS, _THREADS](_flat(a), a.dtype.type(low), a.dtype.type(high))
