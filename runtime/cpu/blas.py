"""BLAS GEMM called from jitted kernels on matrices inside arrays, in place.

Numba's `np.dot` wants whole contiguous matrices and always overwrites its output. Some
kernels need more of BLAS: a matrix that starts part-way into an array and has a row stride
of its own (a time step of a feature-major sequence, a shifted window of a padded image),
accumulation into the output (beta = 1), and transposes by flag rather than by view. `gemm`
gives them that, on the same library np.dot uses (SciPy's OpenBLAS), in the calling thread
(runtime/jit.py's threading policy holds it to one thread).
"""
import numpy as np
from numba import types

from dslc.runtime.jit import njit

# Numba's own wrapper of scipy's cython_blas ?gemm (the one np.dot uses), called by symbol
# name: unlike a ctypes pointer to the BLAS function, that lets the callers be cached on disk.
# It is not public Numba API: a Numba upgrade that renames it fails every caller's tests.
# kind 's' / 'd' picks sgemm / dgemm; the matrices are pointers, the rest plain values.
# The matrix and scalar pointers are declared as integers (addresses), which the x86-64 and
# AArch64 calling conventions pass exactly as pointers: computing an offset address is then
# integer arithmetic, where a pointer would need a reshaped view of the array, and Numba's
# reshape brings its error-message machinery along, ~10 s of cold compile.
_ADDRESS = types.uintp
_XXGEMM = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    _ADDRESS, _ADDRESS, types.intp, _ADDRESS, types.intp,
    _ADDRESS, _ADDRESS, types.intp))


@njit
def gemm(trans_a, trans_b, m, n, k, a, a_at, lda, b, b_at, ldb, beta, c, c_at, ldc):
    """C (m, n) = op(A) @ op(B) + beta * C on matrices inside arrays of one dtype.

    Each matrix starts at element offset `*_at` from the first element of its array and has
    row stride `ld*` (elements), whatever the array's own shape and strides (a row-sliced view
    of a wider buffer works: pass the buffer's row length as ld); op(X) is X^T where `trans_x`.
    float32 goes to sgemm, float64 (the finite-difference tests) to dgemm. BLAS is column major and
    a row-major matrix is its column-major
    transpose, so this asks BLAS for C^T = op(B)^T op(A)^T. Nothing checks that the matrices
    fit in their arrays: callers size their buffers for it.
    """
    if m == 0 or n == 0:
        return
    scalars = np.empty(2, c.dtype)
    scalars[0] = 1.0
    scalars[1] = beta
    kind = 115 if c.itemsize == 4 else 100                          # 's' or 'd'
    size = c.itemsize
    _XXGEMM(kind, 116 if trans_b else 110, 116 if trans_a else 110,  # 't' or 'n'
            n, m, k, scalars.ctypes.data, b.ctypes.data + b_at * size, ldb,
            a.ctypes.data + a_at * size, lda, scalars.ctypes.data + size,
            c.ctypes.data + c_at * size, ldc)
    # Numba may free a local array after its last use, and handing its address to BLAS is
    # not one: this write after the call keeps `scalars` alive through it.
    scalars[0] = 0.0
