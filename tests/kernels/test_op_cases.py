"""The shared case table (tests/ops_cases.py) on the CPU: every row against torch, the tiny rows
against float64 finite differences, and the table's coverage of the registered ops."""
import numpy as np
import pytest

from dslc.ops import OPS
from tests.kernels.harness import (
    _inputs,
    _params,
    _torch_reference,
    check_against_torch,
    check_finite_differences,
    declared_params,
    in_types,
)
from tests.ops_cases import CASES, LOWERING_FIXTURE_OPS

# conv and deconv run in test_cpu_conv.py, once per lowering.
TORCH_ROWS = [c for c in CASES if c.vs_torch and c.op not in LOWERING_FIXTURE_OPS]
FD_ROWS = [c for c in CASES if c.fd and c.op not in LOWERING_FIXTURE_OPS]


@pytest.mark.parametrize("case", TORCH_ROWS, ids=str)
def test_against_torch(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", FD_ROWS, ids=str)
def test_finite_differences(case):
    check_finite_differences(case)


@pytest.mark.parametrize("check", ["vs_torch", "fd", "cuda"])
def test_every_registered_op_has_a_row_for_each_check(check):
    """Adding an op means adding its rows to tests/ops_cases.py: one compared with torch, one
    tiny one for finite differences, one for the CUDA kernel."""
    covered = {c.op for c in CASES if getattr(c, check)}
    missing = sorted(set(OPS) - covered)
    assert not missing, f"ops without a `{check}` row in tests/ops_cases.py: {', '.join(missing)}"


def test_every_row_names_a_registered_op():
    assert not {c.op for c in CASES} - set(OPS)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op_shape_rule_gives_the_torch_output_shape(case):
    """The row's attrs and inputs are ones the op accepts, and its shape rule agrees with the
    torch reference (batch dimension aside); the row's params are the op's declared ones."""
    assert {n: np.shape(p) if isinstance(p, np.ndarray) else tuple(p) for n, p in case.params.items()} \
        == declared_params(case.op, case.attrs, case.in_shapes, case.in_dtypes)
    declared = OPS[case.op].shape(case.attrs, in_types(case.in_shapes, case.in_dtypes)).shape
    rng = np.random.default_rng(0)
    out = tuple(_torch_reference(case, _inputs(case, rng, np.float32), _params(case, rng, np.float32))[2].shape)
    assert declared[1:] == out[1:] and len(declared) == len(out)
