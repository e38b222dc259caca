"""The CUDA conv / deconv kernels' sample chunks, against the CPU kernels (in Numba's CUDA
simulator without a GPU). The other conv checks are rows of the shared table (tests/ops_cases.py).

Shapes are tiny: the simulator runs every GPU thread as a Python thread.
"""
import numpy as np
import pytest
import torch

from dslc.runtime.cuda import conv as cuda_conv
from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import make_kernel
from tests.ops_cases import conv_attrs, conv_case, deconv_attrs, deconv_case

pytestmark = pytest.mark.slow   # the simulator: seconds per case


def out_shape(case):
    """The output shape, from the torch reference run on zeros."""
    xs = [torch.zeros(s) for s in case.in_shapes]
    ps = {n: torch.zeros(s) for n, s in case.params.items()}
    return tuple(case.torch_fn(xs, ps, case.attrs).shape)


# With a column budget below one sample's columns, every sample is its own chunk: backward must
# recompute what forward left in the workspace and accumulate the weight gradient over chunks.
@pytest.mark.parametrize("case", [
    conv_case("chunked", (2, 2, 4, 4), conv_attrs(3, (3, 3), pad=(1, 1))),
    deconv_case("chunked", (2, 2, 3, 3), deconv_attrs(2, (2, 2), stride=(2, 2))),
], ids=str)
def test_cuda_matches_cpu_one_sample_per_chunk(case, monkeypatch):
    monkeypatch.setattr(cuda_conv, "COLS_BUDGET", 1)
    xs = [np.zeros(s, np.float32) for s in case.in_shapes]
    ps = {n: np.zeros(s, np.float32) for n, s in case.params.items()}
    assert make_kernel(case, xs, ps, out_shape(case), "float32", device="cuda").chunk == 1
    check_cuda_against_cpu(case, out_shape(case), atol=1e-4)
