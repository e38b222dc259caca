"""The CUDA GEMM against numpy (in Numba's CUDA simulator without a GPU); the dense kernel's checks
are rows of the shared table (tests/ops_cases.py). Shapes are tiny: the simulator runs every GPU
thread as a Python thread."""
import numpy as np
import pytest
from numba import cuda

from dslc.runtime.cuda.gemm import TILE_K, TILE_MN, add_channel_bias, gemm, sum_channels


# (batch, m, n, k): a batch of two products smaller than one tile, one that spans two tiles in
# each of m, n and k (none a multiple of the tile), and a one-element product.
@pytest.mark.parametrize("batch, m, n, k", [(2, 5, 7, 3), (1, TILE_MN + 3, TILE_MN + 1, TILE_K + 5), (1, 1, 1, 1)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_matches_numpy(batch, m, n, k, trans_a, trans_b):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, k, m) if trans_a else (batch, m, k)).astype(np.float32)
    b = rng.standard_normal((batch, n, k) if trans_b else (batch, k, n)).astype(np.float32)
    c = rng.standard_normal((batch, m, n)).astype(np.float32)
    op_a = a.transpose(0, 2, 1) if trans_a else a
    op_b = b.transpose(0, 2, 1) if trans_b else b
    d_c = cuda.to_device(c)
    gemm(cuda.to_device(a), cuda.to_device(b), d_c, trans_a, trans_b, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(d_c.copy_to_host(), 0.5 * op_a @ op_b + 2.0 * c, rtol=1e-5, atol=1e-5)


def test_gemm_with_beta_zero_ignores_old_contents_of_c():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((3, 6)).astype(np.float32)
    d_c = cuda.to_device(np.full((4, 6), np.nan, dtype=np.float32))
    gemm(cuda.to_device(a), cuda.to_device(b), d_c)
    np.testing.assert_allclose(d_c.copy_to_host(), a @ b, rtol=1e-5, atol=1e-6)


def test_gemm_rejects_mismatched_shapes():
    a = cuda.to_device(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="gemm shapes"):
        gemm(a, a, cuda.to_device(np.zeros((2, 2), np.float32)))


def test_bias_add_and_its_gradient():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((3, 4, 5)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    d_y = cuda.to_device(y)
    add_channel_bias(d_y, cuda.to_device(bias))
    np.testing.assert_allclose(d_y.copy_to_host(), y + bias[None, :, None], rtol=1e-6)
    d_sums = cuda.to_device(np.full(4, np.nan, dtype=np.float32))
    sum_channels(cuda.to_device(y), d_sums)
    np.testing.assert_allclose(d_sums.copy_to_host(), y.sum(axis=(0, 2)), rtol=1e-5, atol=1e-5)
