"""BLAS GEMM called from jitted kernels on matrices inside arrays, in place.

Numba's `np.dot` wants whole contiguous matrices and always overwrites its output. Some
kernels need more of BLAS: a matrix that starts part-way into an array and has a row stride
of its own (a time step of a feature-major sequence, a shifted window of a padded image),
accumulation into the output (beta = 1), and transposes by flag rather than by view. `gemm`
gives them that, in the calling thread (runtime/jit.py's threading policy holds BLAS to one
thread).

The library is OpenBLAS as the scipy-openblas32 package ships it (the build NumPy and SciPy
bundle, as a package of its own), not the copy inside SciPy that Numba's np.dot calls: the
GEMMs of thin layers, a few output rows against many columns, ran about twice as fast in
OpenBLAS 0.3.31+ as in SciPy 1.17's bundled 0.3.30 on the AMD EPYC this was measured on (one
core, through this function: 12x432 @ 432x1024 50 against 91 GFLOP/s, 6x25 @ 25x3136 29
against 67; square ones the same, ~120), and a package of its own pins no SciPy version.
"""
import ctypes
import os

import llvmlite.binding as llvm
import numpy as np
import scipy_openblas32
from numba import types

from dslc.runtime.jit import njit


def _library_path() -> str:
    """The shared library scipy-openblas32 installs (libscipy_openblas.so / .dylib / .dll)."""
    lib_dir = scipy_openblas32.get_lib_dir()
    for name in sorted(os.listdir(lib_dir)):
        if name.startswith("libscipy_openblas") and name.endswith((".so", ".dylib", ".dll")):
            return os.path.join(lib_dir, name)
    raise ImportError(f"scipy-openblas32 installed no shared library in {lib_dir}: "
                      "reinstall it (pip install --force-reinstall scipy-openblas32)")


_OPENBLAS = ctypes.CDLL(_library_path())
_OPENBLAS.scipy_openblas_get_corename.restype = ctypes.c_char_p


def openblas_core() -> str:
    """The kernel set the GEMMs run on, as OpenBLAS names it (e.g. Haswell, SkylakeX)."""
    return _OPENBLAS.scipy_openblas_get_corename().decode()


# One thread: Numba's workers own the cores (runtime/jit.py); threadpoolctl sees this library
# too, so use_serial_blas() holds it there.
_OPENBLAS.scipy_openblas_set_num_threads(1)
# The kernels call CBLAS by symbol name, which the JIT linker resolves here: unlike a pointer
# baked into the code, a name keeps the callers cacheable on disk. The matrix pointers are
# declared as integers (addresses), which the x86-64 and AArch64 calling conventions pass
# exactly as pointers: an offset address is then integer arithmetic, where a pointer would
# need a reshaped view of the array, and Numba's reshape brings its error-message machinery
# along, ~10 s of cold compile.
for _name in ("sgemm", "dgemm", "sgemv", "dgemv"):
    llvm.add_symbol(f"dslc_cblas_{_name}",
                    ctypes.cast(getattr(_OPENBLAS, f"scipy_cblas_{_name}"), ctypes.c_void_p).value)
_ADDRESS = types.uintp
_INT = types.int32                  # scipy-openblas32: 32-bit BLAS integers
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112       # CBLAS's enum values


def _cblas(name, real):
    return types.ExternalFunction(name, types.void(
        types.intc, types.intc, types.intc, _INT, _INT, _INT, real, _ADDRESS, _INT, _ADDRESS, _INT,
        real, _ADDRESS, _INT))


_SGEMM = _cblas("dslc_cblas_sgemm", types.float32)
_DGEMM = _cblas("dslc_cblas_dgemm", types.float64)


def _cblas_gemv(name, real):
    return types.ExternalFunction(name, types.void(
        types.intc, types.intc, _INT, _INT, real, _ADDRESS, _INT, _ADDRESS, _INT, real, _ADDRESS, _INT))


_SGEMV = _cblas_gemv("dslc_cblas_sgemv", types.float32)
_DGEMV = _cblas_gemv("dslc_cblas_dgemv", types.float64)


@njit
def _gemv(trans, rows, cols, a_address, lda, x_address, incx, beta, y_address, incy, size):
    """y = op(A) x + beta y, A (rows, cols) row major, x and y strided vectors."""
    op = _TRANS if trans else _NO_TRANS
    if size == 4:
        _SGEMV(_ROW_MAJOR, op, np.int32(rows), np.int32(cols), np.float32(1.0), a_address, np.int32(lda),
               x_address, np.int32(incx), np.float32(beta), y_address, np.int32(incy))
    else:
        _DGEMV(_ROW_MAJOR, op, np.int32(rows), np.int32(cols), 1.0, a_address, np.int32(lda),
               x_address, np.int32(incx), np.float64(beta), y_address, np.int32(incy))


@njit
def gemm(trans_a, trans_b, m, n, k, a, a_at, lda, b, b_at, ldb, beta, c, c_at, ldc):
    """C (m, n) = op(A) @ op(B) + beta * C on matrices inside arrays of one dtype.

    Each matrix starts at element offset `*_at` from the first element of its array and has
    row stride `ld*` (elements), whatever the array's own shape and strides (a row-sliced view
    of a wider buffer works: pass the buffer's row length as ld); op(X) is X^T where `trans_x`.
    float32 goes to sgemm, float64 (the finite-difference tests) to dgemm, both row major
    (CBLAS). Nothing checks that the matrices fit in their arrays: callers size their buffers
    for it.
    """
    if m == 0 or n == 0:
        return
    size = c.itemsize
    op_a = _TRANS if trans_a else _NO_TRANS
    op_b = _TRANS if trans_b else _NO_TRANS
    a_address = a.ctypes.data + a_at * size
    b_address = b.ctypes.data + b_at * size
    c_address = c.ctypes.data + c_at * size
    # A product with one output column or row is a matrix-vector product, which OpenBLAS's
    # GEMM runs ~3x slower than its GEMV: 1024x256 @ 256x1 38 against 12 us (a batch-1 LSTM
    # step; one core).
    if n == 1 and k > 0:        # c[:, 0] = op(A) op(B)[:, 0]
        if trans_a:
            _gemv(True, k, m, a_address, lda, b_address, 1 if trans_b else ldb, beta, c_address, ldc, size)
        else:
            _gemv(False, m, k, a_address, lda, b_address, 1 if trans_b else ldb, beta, c_address, ldc, size)
        return
    if m == 1 and k > 0:        # c[0, :] = op(B)^T op(A)[0, :]
        if trans_b:
            _gemv(False, n, k, b_address, ldb, a_address, lda if trans_a else 1, beta, c_address, 1, size)
        else:
            _gemv(True, k, n, b_address, ldb, a_address, lda if trans_a else 1, beta, c_address, 1, size)
        return
    if size == 4:
        _SGEMM(_ROW_MAJOR, op_a, op_b, np.int32(m), np.int32(n), np.int32(k), np.float32(1.0), a_address,
               np.int32(lda), b_address, np.int32(ldb), np.float32(beta), c_address, np.int32(ldc))
    else:
        _DGEMM(_ROW_MAJOR, op_a, op_b, np.int32(m), np.int32(n), np.int32(k), 1.0, a_address,
               np.int32(lda), b_address, np.int32(ldb), np.float64(beta), c_address, np.int32(ldc))
