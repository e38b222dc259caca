"""CUDA activation kernels against the CPU kernels (in Numba's CUDA simulator without a GPU)."""
import numpy as np
import pytest

from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import Case

# (case, output shape); the CPU kernel is the reference, so no torch function is needed.
CASES = [
    (Case("relu", {}, [(2, 3, 4)], None), (2, 3, 4)),
    (Case("leaky_relu", {"slope": 0.2}, [(3, 7)], None), (3, 7)),
    (Case("elu", {"alpha": 0.5}, [(2, 3, 2, 2)], None), (2, 3, 2, 2)),
    (Case("sigmoid", {}, [(3, 5)], None,
          make_inputs=lambda rng: [rng.standard_normal((3, 5)).astype(np.float32) * 40]), (3, 5)),
    (Case("tanh", {}, [(2, 9)], None), (2, 9)),
    (Case("prelu", {}, [(2, 3, 2, 2)], None, params={"weight": (3,)}), (2, 3, 2, 2)),
    (Case("prelu", {}, [(5, 4)], None, params={"weight": (4,)}), (5, 4)),
    (Case("prelu", {}, [(2, 3, 5)], None, params={"weight": (3,)}, grad_inputs=()), (2, 3, 5)),
    (Case("softmax", {"axis": 1}, [(3, 7)], None,
          make_inputs=lambda rng: [rng.standard_normal((3, 7)).astype(np.float32) * 100]), (3, 7)),
    (Case("softmax", {"axis": 1}, [(2, 4, 3)], None), (2, 4, 3)),
    (Case("softmax", {"axis": 2}, [(2, 3, 5)], None), (2, 3, 5)),
    (Case("maxout", {"pieces": 2}, [(2, 4, 3)], None), (2, 2, 3)),
    (Case("maxout", {"pieces": 3}, [(3, 6)], None), (3, 2)),
]


@pytest.mark.parametrize("case,out_shape", CASES, ids=[str(c) for c, _ in CASES])
def test_matches_cpu(case, out_shape):
    check_cuda_against_cpu(case, out_shape)
