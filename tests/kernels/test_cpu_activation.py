"""CPU activation kernels against torch.nn.functional and finite differences."""
import pytest
import torch
import torch.nn.functional as F

from tests.kernels.harness import Case, check_against_torch, check_finite_differences, check_nan_propagates


def _maxout(xs, ps, a):
    x = xs[0]
    k = a["pieces"]
    return x.view(x.shape[0], x.shape[1] // k, k, *x.shape[2:]).max(dim=2).values


CASES = [
    Case("relu", {}, [(2, 3, 4, 5)], lambda xs, ps, a: F.relu(xs[0])),
    Case("relu", {}, [(3, 7)], lambda xs, ps, a: F.relu(xs[0])),
    Case("leaky_relu", {"slope": 0.01}, [(2, 3, 4, 4)], lambda xs, ps, a: F.leaky_relu(xs[0], 0.01)),
    Case("leaky_relu", {"slope": 0.2}, [(4, 9)], lambda xs, ps, a: F.leaky_relu(xs[0], 0.2)),
    Case("elu", {"alpha": 1.0}, [(2, 3, 4, 4)], lambda xs, ps, a: F.elu(xs[0], 1.0)),
    Case("elu", {"alpha": 0.5}, [(3, 6)], lambda xs, ps, a: F.elu(xs[0], 0.5)),
    Case("sigmoid", {}, [(2, 3, 4, 4)], lambda xs, ps, a: torch.sigmoid(xs[0])),
    Case("sigmoid", {}, [(5, 8)], lambda xs, ps, a: torch.sigmoid(xs[0]),
         make_inputs=lambda rng: [rng.standard_normal((5, 8)) * 40]),   # saturated both ways
    Case("tanh", {}, [(2, 3, 4, 4)], lambda xs, ps, a: torch.tanh(xs[0])),
    Case("tanh", {}, [(3, 2, 11)], lambda xs, ps, a: torch.tanh(xs[0])),
    Case("prelu", {}, [(2, 3, 4, 5)], lambda xs, ps, a: F.prelu(xs[0], ps["weight"]), params={"weight": (3,)}),
    Case("prelu", {}, [(4, 6)], lambda xs, ps, a: F.prelu(xs[0], ps["weight"]), params={"weight": (6,)}),
    Case("prelu", {}, [(2, 5, 7)], lambda xs, ps, a: F.prelu(xs[0], ps["weight"]), params={"weight": (5,)}),
    Case("softmax", {"axis": 1}, [(4, 10)], lambda xs, ps, a: F.softmax(xs[0], dim=1)),
    Case("softmax", {"axis": 1}, [(2, 5, 3, 4)], lambda xs, ps, a: F.softmax(xs[0], dim=1)),
    Case("softmax", {"axis": 2}, [(2, 3, 6)], lambda xs, ps, a: F.softmax(xs[0], dim=2)),
    Case("softmax", {"axis": 1}, [(3, 7)], lambda xs, ps, a: F.softmax(xs[0], dim=1),
         make_inputs=lambda rng: [rng.standard_normal((3, 7)) * 100]),   # would overflow a naive exp
    Case("maxout", {"pieces": 2}, [(2, 6, 3, 3)], _maxout),
    Case("maxout", {"pieces": 3}, [(4, 9)], _maxout),
    Case("maxout", {"pieces": 4}, [(2, 8, 5)], _maxout),
]

@pytest.mark.parametrize("case", CASES, ids=str)
def test_nan_propagates(case):
    check_nan_propagates(case)


FD_CASES = [
    Case("relu", {}, [(2, 3, 2, 2)], lambda xs, ps, a: F.relu(xs[0])),
    Case("leaky_relu", {"slope": 0.1}, [(3, 5)], lambda xs, ps, a: F.leaky_relu(xs[0], 0.1)),
    Case("elu", {"alpha": 0.7}, [(3, 5)], lambda xs, ps, a: F.elu(xs[0], 0.7)),
    Case("sigmoid", {}, [(3, 5)], lambda xs, ps, a: torch.sigmoid(xs[0])),
    Case("tanh", {}, [(3, 5)], lambda xs, ps, a: torch.tanh(xs[0])),
    Case("prelu", {}, [(2, 3, 2, 2)], lambda xs, ps, a: F.prelu(xs[0], ps["weight"]), params={"weight": (3,)}),
    Case("softmax", {"axis": 1}, [(2, 4, 3)], lambda xs, ps, a: F.softmax(xs[0], dim=1)),
    Case("maxout", {"pieces": 2}, [(2, 4, 3)], _maxout),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_torch(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_finite_differences(case):
    check_finite_differences(case)


def test_prelu_skips_unwanted_weight_gradient():
    """With the weight frozen only the input gradient is computed."""
    check_against_torch(Case("prelu", {}, [(2, 3, 4)], lambda xs, ps, a: F.prelu(xs[0], ps["weight"]),
                             params={"weight": (3,)}, trainable=()))
