"""CPU dense kernel: a fused relu keeps NaN. Its checks against torch and finite differences
are rows of the shared table (tests/ops_cases.py, run by test_op_cases.py)."""
import pytest
import torch.nn.functional as F

from tests.kernels.harness import check_nan_propagates
from tests.ops_cases import dense_case


@pytest.mark.parametrize("case", [dense_case((4, 7), 5), dense_case((64, 100), 33, bias=False, atol=3e-4)], ids=str)
def test_fused_relu_keeps_nan(case):
    """dense -> relu as one kernel (the plan's fuse_activation): relu(NaN) is NaN, as in torch."""
    case.fuse, linear = "relu", case.torch_fn
    case.torch_fn = lambda xs, ps, a: F.relu(linear(xs, ps, a))
    check_nan_propagates(case)
