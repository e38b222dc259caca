"""CPU dense kernel against F.linear and finite differences."""
import pytest
import torch.nn.functional as F

from tests.kernels.harness import Case, check_against_torch, check_finite_differences, check_nan_propagates


def _linear(xs, ps, a):
    x = xs[0]
    # A rank-3 x (N, T, F) is applied per step; any other rank is flattened to (N, F).
    return F.linear(x if x.dim() == 3 else x.flatten(1), ps["weight"], ps.get("bias"))


def _case(in_shape, units, bias=True, **kw):
    if len(in_shape) == 3:
        features = in_shape[2]
    else:
        features = 1
        for d in in_shape[1:]:
            features *= d
    params = {"weight": (units, features)}
    if bias:
        params["bias"] = (units,)
    return Case("dense", {"units": units, "bias": bias}, [in_shape], _linear, params=params, **kw)


CASES = [
    _case((4, 7), 5),
    _case((1, 3), 1),
    _case((3, 2, 3, 4), 6),           # flattened from (N, C, H, W)
    _case((5, 8), 3, bias=False),
    _case((2, 3, 5), 4),              # per step of a sequence (N, T, F)
    _case((3, 4, 6), 2, bias=False),
    _case((64, 100), 33, rtol=1e-4, atol=3e-4),
    _case((3, 6), 4, trainable=("bias",), id="dense-frozen-weight"),
    _case((3, 6), 4, grad_inputs=(), id="dense-no-input-grad"),
]

FD_CASES = [
    _case((3, 4), 2),
    _case((2, 2, 3, 1), 3, bias=False),
    _case((2, 3, 4), 2),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_torch(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_finite_differences(case):
    check_finite_differences(case)


@pytest.mark.parametrize("case", [_case((4, 7), 5), _case((64, 100), 33, bias=False, atol=3e-4)], ids=str)
def test_fused_relu_keeps_nan(case):
    """dense -> relu as one kernel (the plan's fuse_activation): relu(NaN) is NaN, as in torch."""
    case.fuse, linear = "relu", case.torch_fn
    case.torch_fn = lambda xs, ps, a: F.relu(linear(xs, ps, a))
    check_nan_propagates(case)
