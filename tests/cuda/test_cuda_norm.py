"""CUDA dropout, in Numba's CUDA simulator without a GPU: it draws its mask on the device from its
own generator, so it is checked by its statistics and by backward reusing forward's mask rather
than element by element. The other norm checks are rows of the shared table (tests/ops_cases.py)."""
import numpy as np
import pytest
from numba import cuda

from dslc.runtime.kernel_api import Context
from tests.cuda.harness import run_cuda_kernel
from tests.kernels.harness import Case, make_kernel

pytestmark = pytest.mark.slow   # the simulator: seconds per case


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
