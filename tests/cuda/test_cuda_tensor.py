"""CUDA tensor kernels against the CPU kernels (in Numba's CUDA simulator without a GPU)."""
import pytest

from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import Case

# (case, output shape); the CPU kernel is the reference, so no torch function is needed.
CASES = [
    (Case("identity", {}, [(2, 3, 2)], None), (2, 3, 2)),
    (Case("flatten", {}, [(2, 3, 2, 2)], None), (2, 12)),
    (Case("reshape", {"shape": (3, 4)}, [(2, 12)], None), (2, 3, 4)),
    (Case("concat", {"axis": 1}, [(2, 3, 2), (2, 1, 2), (2, 2, 2)], None), (2, 6, 2)),
    (Case("concat", {"axis": 2}, [(2, 3, 1), (2, 3, 4)], None), (2, 3, 5)),
    (Case("concat", {"axis": 1}, [(3, 2), (3, 4)], None, grad_inputs=(1,)), (3, 6)),
    (Case("add", {}, [(2, 3, 2)], None), (2, 3, 2)),
    (Case("add", {}, [(2, 3, 2), (2, 3, 2)], None), (2, 3, 2)),
    (Case("add", {}, [(3, 4), (3, 4), (3, 4)], None, grad_inputs=(0, 2)), (3, 4)),
]


@pytest.mark.parametrize("case,out_shape", CASES, ids=[str(c) for c, _ in CASES])
def test_matches_cpu(case, out_shape):
    check_cuda_against_cpu(case, out_shape)
