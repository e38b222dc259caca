"""CUDA conv / deconv kernels against the CPU kernels (in Numba's CUDA simulator without a GPU).

Shapes are tiny: the simulator runs every GPU thread as a Python thread.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.runtime.cuda import conv as cuda_conv
from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import Case, make_kernel


def _torch_conv(xs, ps, a):
    return F.conv2d(xs[0], ps["weight"], ps.get("bias"), stride=a["stride"], padding=a["pad"],
                    dilation=a["dilation"], groups=a["groups"])


def _torch_deconv(xs, ps, a):
    return F.conv_transpose2d(xs[0], ps["weight"], ps.get("bias"), stride=a["stride"], padding=a["pad"],
                              output_padding=a["output_pad"], groups=a["groups"])


def conv_case(id, x_shape, channels, kernel, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1,
              bias=True, **kw):
    attrs = dict(channels=channels, kernel=kernel, stride=stride, pad=pad, dilation=dilation,
                 groups=groups, bias=bias)
    params = {"weight": (channels, x_shape[1] // groups, *kernel)}
    if bias:
        params["bias"] = (channels,)
    return Case("conv", attrs, [x_shape], _torch_conv, params=params, id=f"conv-{id}", **kw)


def deconv_case(id, x_shape, channels, kernel, stride=(1, 1), pad=(0, 0), output_pad=(0, 0), groups=1,
                bias=True, **kw):
    attrs = dict(channels=channels, kernel=kernel, stride=stride, pad=pad, output_pad=output_pad,
                 groups=groups, bias=bias)
    params = {"weight": (x_shape[1], channels // groups, *kernel)}
    if bias:
        params["bias"] = (channels,)
    return Case("deconv", attrs, [x_shape], _torch_deconv, params=params, id=f"deconv-{id}", **kw)


def out_shape(case):
    """The output shape, from the torch reference run on zeros."""
    xs = [torch.zeros(s) for s in case.in_shapes]
    ps = {n: torch.zeros(s) for n, s in case.params.items()}
    return tuple(case.torch_fn(xs, ps, case.attrs).shape)


CASES = [
    conv_case("3x3-pad1", (2, 3, 5, 5), 4, (3, 3), pad=(1, 1)),
    conv_case("rect-stride-dilation", (2, 2, 6, 5), 3, (3, 2), stride=(2, 1), pad=(1, 1), dilation=(2, 1)),
    conv_case("groups2-nobias", (2, 4, 5, 4), 6, (3, 3), groups=2, bias=False),
    conv_case("depthwise-stride2", (2, 3, 5, 5), 3, (3, 3), stride=(2, 2), pad=(1, 1), groups=3),
    # a first layer: no input gradient wanted
    conv_case("first-layer", (2, 2, 4, 4), 3, (2, 2), grad_inputs=()),
    # a frozen layer: only the input gradient and the bias's
    deconv_case("frozen-weight", (2, 2, 3, 3), 2, (2, 2), trainable=("bias",)),
    deconv_case("stride2-outpad1", (2, 2, 3, 3), 3, (3, 3), stride=(2, 2), pad=(1, 1), output_pad=(1, 1)),
    deconv_case("groups2-rect-nobias", (2, 4, 3, 2), 2, (2, 3), stride=(1, 2), groups=2, bias=False),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_matches_cpu(case):
    check_cuda_against_cpu(case, out_shape(case), atol=1e-4)


# With a column budget below one sample's columns, every sample is its own chunk: backward must
# recompute what forward left in the workspace and accumulate the weight gradient over chunks.
@pytest.mark.parametrize("case", [
    conv_case("chunked", (2, 2, 4, 4), 3, (3, 3), pad=(1, 1)),
    deconv_case("chunked", (2, 2, 3, 3), 2, (2, 2), stride=(2, 2)),
], ids=str)
def test_cuda_matches_cpu_one_sample_per_chunk(case, monkeypatch):
    monkeypatch.setattr(cuda_conv, "COLS_BUDGET", 1)
    xs = [np.zeros(s, np.float32) for s in case.in_shapes]
    ps = {n: np.zeros(s, np.float32) for n, s in case.params.items()}
    assert make_kernel(case, xs, ps, out_shape(case), "float32", device="cuda").chunk == 1
    check_cuda_against_cpu(case, out_shape(case), atol=1e-4)
