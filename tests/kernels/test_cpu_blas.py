"""runtime/cpu/blas.py: the OpenBLAS the GEMMs run on, and gemm against numpy."""
import numpy as np
import pytest

from dslc.runtime.cpu import blas


def test_the_kernels_openblas_is_named():
    """openblas_core() names the kernels of the library gemm calls, as threadpoolctl reads them."""
    from threadpoolctl import threadpool_info
    ours = [p for p in threadpool_info() if p["filepath"] == blas._library_path()]
    assert len(ours) == 1
    assert blas.openblas_core() == ours[0]["architecture"]


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(5, 7, 3), (5, 1, 3), (1, 7, 3), (1, 1, 3)])   # GEMM, and GEMV both ways
def test_gemm_inside_arrays_matches_numpy(trans_a, trans_b, dtype, m, n, k):
    """C = op(A) @ op(B) + beta C on matrices at an offset inside wider buffers (a single
    output column or row goes to GEMV, with the vectors' strides)."""
    rng = np.random.default_rng(0)
    a_rows, a_cols = (k, m) if trans_a else (m, k)
    b_rows, b_cols = (n, k) if trans_b else (k, n)
    a = rng.standard_normal((a_rows, a_cols + 2)).astype(dtype)
    b = rng.standard_normal((b_rows, b_cols + 1)).astype(dtype)
    c = rng.standard_normal((m + 1, n + 3)).astype(dtype)
    want = c.copy()
    op_a = a[:, 1:1 + a_cols].T if trans_a else a[:, 1:1 + a_cols]
    op_b = b[:, :b_cols].T if trans_b else b[:, :b_cols]
    want[1:, 2:2 + n] = op_a @ op_b + 0.5 * c[1:, 2:2 + n]
    blas.gemm(trans_a, trans_b, m, n, k, a, 1, a.shape[1], b, 0, b.shape[1], 0.5, c, c.shape[1] + 2, c.shape[1])
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
