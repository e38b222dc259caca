"""CPU activation kernels: NaN propagation. Their checks against torch and finite differences
are rows of the shared table (tests/ops_cases.py, run by test_op_cases.py)."""
import pytest

from tests.kernels.harness import check_nan_propagates
from tests.ops_cases import rows

CASES = [c for c in rows(family="activation") if not (c.fd or c.cuda)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_nan_propagates(case):
    check_nan_propagates(case)
