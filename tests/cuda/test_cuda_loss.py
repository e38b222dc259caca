"""CUDA loss kernels against the CPU kernels (in Numba's CUDA simulator without a GPU)."""
import pytest

from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import Case


def _ce_case(logits_shape, class_axis=1, **kw):
    labels_shape = logits_shape[:class_axis] + logits_shape[class_axis + 1:]
    return Case("cross_entropy", {"class_axis": class_axis}, [logits_shape, labels_shape], None,
                in_dtypes=["float32", "int64"], int_high=logits_shape[class_axis], **kw)


def _hinge_case(shape, margin):
    return Case("hinge", {"margin": margin}, [shape, shape[:1]], None,
                in_dtypes=["float32", "int64"], int_high=shape[1])


def _bce_case(shape, logit_scale=1.0, **kw):
    def make_inputs(rng):   # targets are probabilities
        return [(rng.standard_normal(shape) * logit_scale).astype("float32"), rng.random(shape).astype("float32")]
    return Case("bce", {}, [shape, shape], None, make_inputs=make_inputs, **kw)


# The losses are scalars: out_shape ().
CASES = [
    _ce_case((5, 4)),
    _ce_case((2, 3, 2, 2)),                     # per-pixel labels (N, H, W)
    _ce_case((2, 3, 5), class_axis=2),          # per-step labels (N, T)
    _ce_case((3, 6), make_inputs=lambda rng: [(rng.standard_normal((3, 6)) * 200).astype("float32"),
                                              rng.integers(0, 6, size=3)], id="cross_entropy-huge-logits"),
    _hinge_case((5, 4), margin=1.0),
    _hinge_case((3, 6), margin=0.5),
    Case("mse", {}, [(3, 4), (3, 4)], None),
    Case("mse", {}, [(2, 3, 2)] * 2, None, grad_inputs=(0,), id="mse-target-without-gradient"),
    _bce_case((4, 3)),
    _bce_case((3, 4), logit_scale=100.0, grad_inputs=(0,), id="bce-huge-logits-target-without-gradient"),
    Case("loss_sum", {"weights": (1.0,)}, [()], None),
    Case("loss_sum", {"weights": (0.5, 2.0, -1.0)}, [()] * 3, None, grad_inputs=(0, 2)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_cpu(case):
    check_cuda_against_cpu(case, ())
