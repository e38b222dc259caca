"""CPU tensor kernels (identity, flatten, reshape, concat, add) against torch and finite differences."""
import pytest
import torch

import dslc.runtime.cpu.tensor
from tests.kernels.harness import Case, check_against_torch, check_finite_differences, check_nan_propagates


def _reshape(xs, ps, a):
    return xs[0].reshape(xs[0].shape[0], *a["shape"])


def _concat(xs, ps, a):
    return torch.cat(xs, dim=a["axis"])


def _add(xs, ps, a):
    return sum(xs[1:], xs[0])


CASES = [
    Case("identity", {}, [(2, 3, 4, 4)], lambda xs, ps, a: xs[0] * 1),
    Case("identity", {}, [(3, 5)], lambda xs, ps, a: xs[0] * 1),
    Case("flatten", {}, [(2, 3, 4, 5)], lambda xs, ps, a: xs[0].flatten(1)),
    Case("flatten", {}, [(4, 6)], lambda xs, ps, a: xs[0].flatten(1)),
    Case("reshape", {"shape": (4, 15)}, [(2, 3, 4, 5)], _reshape),
    Case("reshape", {"shape": (2, 3, 4)}, [(3, 24)], _reshape),
    Case("concat", {"axis": 1}, [(2, 3, 4, 4), (2, 5, 4, 4)], _concat),
    Case("concat", {"axis": 1}, [(2, 3), (2, 1), (2, 4), (2, 2)], _concat),
    Case("concat", {"axis": 2}, [(2, 3, 4), (2, 3, 2)], _concat),
    Case("concat", {"axis": 3}, [(2, 3, 4, 1), (2, 3, 4, 5)], _concat),
    Case("concat", {"axis": 1}, [(3, 4, 2)], _concat),
    Case("add", {}, [(2, 3, 4, 4), (2, 3, 4, 4)], _add),
    Case("add", {}, [(3, 5), (3, 5), (3, 5), (3, 5)], _add),
    Case("add", {}, [(4, 7)], _add),
    # A frozen input gets no gradient and the others are still written.
    Case("add", {}, [(2, 6), (2, 6), (2, 6)], _add, grad_inputs=(0, 2), id="add-frozen-input"),
    Case("concat", {"axis": 1}, [(2, 3), (2, 4)], _concat, grad_inputs=(1,), id="concat-frozen-input"),
    # add -> relu fused into one kernel (a residual block's join), two and three inputs
    Case("add", {}, [(2, 3, 4, 4), (2, 3, 4, 4)], lambda xs, ps, a: torch.relu(_add(xs, ps, a)),
         fuse="relu", id="add+relu"),
    Case("add", {}, [(3, 5), (3, 5), (3, 5)], lambda xs, ps, a: torch.relu(_add(xs, ps, a)),
         fuse="relu", grad_inputs=(1, 2), id="add3+relu-frozen-input"),
]

@pytest.mark.parametrize("case", [c for c in CASES if c.fuse == "relu"], ids=str)
def test_fused_relu_keeps_nan(case):
    check_nan_propagates(case)


FD_CASES = [
    Case("reshape", {"shape": (3, 2)}, [(2, 6)], _reshape),
    Case("concat", {"axis": 1}, [(2, 2, 3), (2, 1, 3), (2, 3, 3)], _concat),
    Case("add", {}, [(2, 5), (2, 5), (2, 5)], _add),
    Case("add", {}, [(2, 5), (2, 5)], lambda xs, ps, a: torch.relu(_add(xs, ps, a)), fuse="relu", id="fd-add+relu"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_torch(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.op == "concat"], ids=str)
def test_concat_split_between_workers(case, monkeypatch):
    """Big concats split their copies' rows between the workers (parallel_elementwise): the
    concat cases again with that path taken."""
    monkeypatch.setattr(dslc.runtime.cpu.tensor, "parallel_elementwise", lambda size: True)
    check_against_torch(case)


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_finite_differences(case):
    check_finite_differences(case)
