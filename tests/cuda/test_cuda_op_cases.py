"""The shared case table's CUDA rows (tests/ops_cases.py, `cuda=True`): the CUDA kernel's forward,
gradients and updated buffers against the CPU kernel's, in Numba's CUDA simulator without a GPU."""
import pytest

from tests.cuda.harness import check_cuda_against_cpu
from tests.ops_cases import CASES

# The simulator runs every GPU thread as a Python thread: seconds per row.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", [c for c in CASES if c.cuda], ids=str)
def test_cuda_matches_cpu(case):
    check_cuda_against_cpu(case)
