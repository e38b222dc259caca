"""CUDA norm kernels (batchnorm, lrn, dropout) against the CPU kernels, in Numba's CUDA simulator
without a GPU. Dropout draws its mask on the device from its own generator, so it is checked by
its statistics and by backward reusing forward's mask rather than element by element."""
import numpy as np
import pytest
from numba import cuda

from dslc.runtime.kernel_api import Context
from tests.cuda.harness import check_cuda_against_cpu, run_cuda_kernel
from tests.kernels.harness import Case, make_kernel

BN_PARAMS = {"weight": (3,), "bias": (3,), "running_mean": (3,), "running_var": (3,)}


def _batchnorm_case(shape, training, **kw):
    return Case("batchnorm", {"eps": 1e-5, "momentum": 0.1}, [shape], None, params=BN_PARAMS,
                training=training, id=f"batchnorm{shape}{'train' if training else 'eval'}", **kw)


CASES = [
    _batchnorm_case((6, 3), True),
    _batchnorm_case((2, 3, 4), True),
    _batchnorm_case((2, 3, 2, 2), True),
    _batchnorm_case((2, 3, 2, 2), False),
    _batchnorm_case((2, 3, 3), True, trainable=("weight",), grad_inputs=()),
    Case("lrn", {"size": 3, "alpha": 0.1, "beta": 0.75, "k": 1.0}, [(2, 5, 2, 2)], None),
    Case("lrn", {"size": 4, "alpha": 1e-2, "beta": 0.5, "k": 2.0}, [(1, 6, 1, 3)], None),
    Case("dropout", {"p": 0.5}, [(2, 3, 2)], None, training=False),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_cpu(case):
    check_cuda_against_cpu(case, tuple(case.in_shapes[0]))


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_mask_statistics_and_reuse(p):
    shape = (4, 32)
    case = Case("dropout", {"p": p}, [shape], None)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32) + 3.0      # never zero: zeros mark drops
    gout = rng.standard_normal(shape).astype(np.float32)
    out, (gx,), _, _ = run_cuda_kernel(case, [x], {}, shape, gout)
    kept = out != 0
    if p == 1.0:
        assert not kept.any()
    else:
        # Kept entries are scaled by 1/(1-p); the kept fraction is 1-p within 5 standard errors.
        np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
        assert abs(kept.mean() - (1 - p)) <= 5 * np.sqrt(p * (1 - p) / x.size) + 1e-9
    # Backward applies the very mask forward drew.
    np.testing.assert_allclose(gx, np.where(kept, gout / (1 - p) if p < 1 else 0, 0), rtol=1e-6)


def test_dropout_draws_a_new_mask_every_step():
    case = Case("dropout", {"p": 0.5}, [(2, 32)], None)
    x = np.ones((2, 32), dtype=np.float32)
    kernel = make_kernel(case, [x], {}, x.shape, "float32", device="cuda")
    ws = {n: cuda.to_device(np.zeros(s, dtype=d)) for n, (s, d) in kernel.workspace().items()}
    ctx = Context(training=True, rng=np.random.default_rng(0))
    dx, dout = cuda.to_device(x), cuda.to_device(np.zeros_like(x))
    masks = []
    for _ in range(2):
        kernel.forward(ctx, [dx], {}, dout, ws)
        masks.append(dout.copy_to_host() != 0)
    assert (masks[0] != masks[1]).any()
