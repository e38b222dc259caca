"""CPU tensor kernels: fused relu keeps NaN, concat split between workers. Their checks against
torch and finite differences are rows of the shared table (tests/ops_cases.py, run by
test_op_cases.py)."""
import pytest

import dslc.runtime.cpu.tensor
from tests.kernels.harness import check_against_torch, check_nan_propagates
from tests.ops_cases import rows

CASES = [c for c in rows(family="tensor") if not (c.fd or c.cuda)]


@pytest.mark.parametrize("case", [c for c in CASES if c.fuse == "relu"], ids=str)
def test_fused_relu_keeps_nan(case):
    check_nan_propagates(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.op == "concat"], ids=str)
def test_concat_split_between_workers(case, monkeypatch):
    """Big concats split their copies' rows between the workers (parallel_elementwise): the
    concat cases again with that path taken."""
    monkeypatch.setattr(dslc.runtime.cpu.tensor, "parallel_elementwise", lambda size: True)
    check_against_torch(case)
