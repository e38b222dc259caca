"""CPU loss kernels: out-of-range labels. Their checks against torch and finite differences
are rows of the shared table (tests/ops_cases.py, run by test_op_cases.py)."""
import numpy as np
import pytest

from dslc.runtime.kernel_api import Context, NodeSpec, kernel_class


@pytest.mark.parametrize("op", ["cross_entropy", "hinge"])
def test_out_of_range_labels_are_rejected(op):
    spec = NodeSpec(name="test.loss", op=op, attrs={"class_axis": 1, "margin": 1.0}, in_shapes=((2, 3), (2,)),
                    in_dtypes=("float32", "int64"), out_shape=())
    kernel = kernel_class("cpu", op)(spec)
    ws = {n: np.zeros(s, dtype=d) for n, (s, d) in kernel.workspace().items()}
    with pytest.raises(ValueError, match="labels"):
        kernel.forward(Context(), [np.zeros((2, 3), np.float32), np.array([0, 3])], {}, np.zeros(()), ws)
