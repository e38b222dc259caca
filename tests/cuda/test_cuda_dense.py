"""The CUDA GEMM against numpy, and the CUDA dense kernel against the CPU kernel (in Numba's
CUDA simulator without a GPU). Shapes are tiny: the simulator runs every GPU thread as a Python thread."""
import numpy as np
import pytest
import torch.nn.functional as F
from numba import cuda

from dslc.runtime.cuda.gemm import TILE_K, TILE_MN, add_channel_bias, gemm, sum_channels
from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import Case


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


def _torch_dense(xs, ps, a):
    return F.linear(xs[0].flatten(1), ps["weight"], ps.get("bias"))


def dense_case(id, x_shape, units, bias=True, **kw):
    features = int(np.prod(x_shape[1:]))
    params = {"weight": (units, features)}
    if bias:
        params["bias"] = (units,)
    return Case("dense", {"units": units, "bias": bias}, [x_shape], _torch_dense, params=params,
                id=f"dense-{id}", **kw)


@pytest.mark.parametrize("case", [
    dense_case("flat", (3, 7), 5),
    dense_case("from-4d-nobias", (2, 2, 3, 2), 4, bias=False),
    # a first layer with a frozen weight: only the bias gradient is asked for
    dense_case("first-layer-frozen", (2, 6), 3, grad_inputs=(), trainable=("bias",)),
], ids=str)
def test_dense_matches_cpu(case):
    check_cuda_against_cpu(case, (case.in_shapes[0][0], case.attrs["units"]))
