"""CPU loss kernels against torch.nn.functional and finite differences."""
import numpy as np
import pytest
import torch.nn.functional as F

from dslc.runtime.kernel_api import Context, NodeSpec, kernel_class
from tests.kernels.harness import Case, check_against_torch, check_finite_differences


def _cross_entropy(xs, ps, a):
    logits, labels = xs
    return F.cross_entropy(logits.movedim(a["class_axis"], 1), labels)


def _ce_case(logits_shape, class_axis=1, **kw):
    labels_shape = logits_shape[:class_axis] + logits_shape[class_axis + 1:]
    return Case("cross_entropy", {"class_axis": class_axis}, [logits_shape, labels_shape], _cross_entropy,
                in_dtypes=["float32", "int64"], int_high=logits_shape[class_axis], **kw)


def _hinge_case(shape, margin=1.0, **kw):
    return Case("hinge", {"margin": margin}, [shape, shape[:1]],
                lambda xs, ps, a: F.multi_margin_loss(xs[0], xs[1], margin=a["margin"]),
                in_dtypes=["float32", "int64"], int_high=shape[1], **kw)


def _mse_case(shape, **kw):
    return Case("mse", {}, [shape, shape], lambda xs, ps, a: F.mse_loss(xs[0], xs[1]), **kw)


def _bce_case(shape, logit_scale=1.0, **kw):
    def make_inputs(rng):   # targets are probabilities
        return [rng.standard_normal(shape) * logit_scale, rng.random(shape)]
    return Case("bce", {}, [shape, shape], lambda xs, ps, a: F.binary_cross_entropy_with_logits(xs[0], xs[1]),
                make_inputs=make_inputs, **kw)


def _loss_sum_case(weights):
    return Case("loss_sum", {"weights": weights}, [()] * len(weights),
                lambda xs, ps, a: sum(w * x for w, x in zip(a["weights"], xs)))


CASES = [
    _ce_case((6, 5)),
    _ce_case((1, 3)),
    _ce_case((2, 4, 3, 5)),                    # per-pixel labels (N, H, W)
    _ce_case((3, 4, 7), class_axis=2),         # per-step labels (N, T)
    _ce_case((4, 6), make_inputs=lambda rng: [rng.standard_normal((4, 6)) * 200,
                                              rng.integers(0, 6, size=4)], id="cross_entropy-huge-logits"),
    _hinge_case((6, 5)),
    _hinge_case((4, 3), margin=0.5),
    _hinge_case((3, 8), margin=2.0),
    _mse_case((4, 5)),
    _mse_case((2, 3, 4, 4)),
    _mse_case((3, 7), grad_inputs=(0,), id="mse-target-without-gradient"),
    _bce_case((5, 3)),
    _bce_case((2, 3, 4, 4)),
    _bce_case((4, 6), logit_scale=100.0, id="bce-huge-logits"),
    _bce_case((3, 5), grad_inputs=(0,), id="bce-target-without-gradient"),
    _loss_sum_case((1.0,)),
    _loss_sum_case((1.0, 0.3)),
    _loss_sum_case((0.5, 2.0, 0.25)),
]

FD_CASES = [
    _ce_case((3, 4)),
    _ce_case((2, 3, 2, 2)),
    _ce_case((2, 3, 4), class_axis=2),
    _hinge_case((3, 4)),
    _mse_case((2, 5)),
    _bce_case((2, 5)),
    _loss_sum_case((1.0, 0.3)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_torch(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_finite_differences(case):
    check_finite_differences(case)


def test_mse_and_bce_reduce_across_chunks():
    """Inputs larger than one parallel chunk: every chunk's partial sum counts."""
    check_against_torch(_mse_case((5, 10000), rtol=1e-4, atol=1e-6))
    check_against_torch(_bce_case((5, 10000), rtol=1e-4, atol=1e-6))


@pytest.mark.parametrize("op", ["cross_entropy", "hinge"])
def test_out_of_range_labels_are_rejected(op):
    spec = NodeSpec(name="test.loss", op=op, attrs={"class_axis": 1, "margin": 1.0}, in_shapes=((2, 3), (2,)),
                    in_dtypes=("float32", "int64"), out_shape=())
    kernel = kernel_class("cpu", op)(spec)
    ws = {n: np.zeros(s, dtype=d) for n, (s, d) in kernel.workspace().items()}
    with pytest.raises(ValueError, match="labels"):
        kernel.forward(Context(), [np.zeros((2, 3), np.float32), np.array([0, 3])], {}, np.zeros(()), ws)
