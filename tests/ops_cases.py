"""The shared case table: one row per op case, driving every kernel check.

Each row (`tests.kernels.harness.Case`) names an op, its attrs, its input shapes and dtypes, a
torch reference function `(xs, params, attrs) -> Tensor` and tolerances. The params are the
ones the op declares for those attrs and inputs (`dslc.ops.OPS[op].params`), unless a row
fixes them. Flags on the row pick the checks:

- every row with `vs_torch` (the default): the CPU kernel's forward, gradients and buffers
  against torch autograd (tests/kernels/test_op_cases.py);
- `fd=True`: the CPU kernel's backward against float64 central finite differences (tiny shapes);
- `cuda=True`: the CUDA kernel against the CPU kernel, in Numba's CUDA simulator without a GPU
  (tests/cuda/test_cuda_op_cases.py; tiny shapes, the simulator runs every thread in Python).

conv and deconv rows run in tests/kernels/test_cpu_conv.py instead, once per CPU lowering.
Adding an op means adding rows here: tests/kernels/test_op_cases.py fails for a registered op
without a row for each check. Tests of one kernel's own machinery (lowering choice, fusion,
NaN propagation, parallel loops) stay in the family's test file and may draw rows from here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dslc.ops import OPS
from tests.kernels.harness import Case, Rows

# Ops whose CPU checks run in their family's file, under a fixture the generic test lacks.
LOWERING_FIXTURE_OPS = {"conv", "deconv"}


# ---- tensor ----------------------------------------------------------------------------------

def _reshape(xs, ps, a):
    return xs[0].reshape(xs[0].shape[0], *a["shape"])


def _concat(xs, ps, a):
    return torch.cat(xs, dim=a["axis"])


def _add(xs, ps, a):
    return sum(xs[1:], xs[0])


def _add_relu(xs, ps, a):
    return torch.relu(_add(xs, ps, a))


def _identity(xs, ps, a):
    return xs[0] * 1


def _flatten(xs, ps, a):
    return xs[0].flatten(1)


TENSOR = [
    Case("identity", {}, [(2, 3, 4, 4)], _identity),
    Case("identity", {}, [(3, 5)], _identity),
    Case("flatten", {}, [(2, 3, 4, 5)], _flatten),
    Case("flatten", {}, [(4, 6)], _flatten),
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
    Case("add", {}, [(2, 3, 4, 4), (2, 3, 4, 4)], _add_relu, fuse="relu", id="add+relu"),
    Case("add", {}, [(3, 5), (3, 5), (3, 5)], _add_relu, fuse="relu", grad_inputs=(1, 2),
         id="add3+relu-frozen-input"),
    # finite differences
    Case("identity", {}, [(2, 3, 2)], _identity, fd=True),
    Case("flatten", {}, [(2, 2, 3)], _flatten, fd=True),
    Case("reshape", {"shape": (3, 2)}, [(2, 6)], _reshape, fd=True),
    Case("concat", {"axis": 1}, [(2, 2, 3), (2, 1, 3), (2, 3, 3)], _concat, fd=True),
    Case("add", {}, [(2, 5), (2, 5), (2, 5)], _add, fd=True),
    Case("add", {}, [(2, 5), (2, 5)], _add_relu, fuse="relu", fd=True, id="fd-add+relu"),
    # CUDA against CPU
    Case("identity", {}, [(2, 3, 2)], _identity, cuda=True),
    Case("flatten", {}, [(2, 3, 2, 2)], _flatten, cuda=True),
    Case("reshape", {"shape": (3, 4)}, [(2, 12)], _reshape, cuda=True),
    Case("concat", {"axis": 1}, [(2, 3, 2), (2, 1, 2), (2, 2, 2)], _concat, cuda=True),
    Case("concat", {"axis": 2}, [(2, 3, 1), (2, 3, 4)], _concat, cuda=True),
    Case("concat", {"axis": 1}, [(3, 2), (3, 4)], _concat, grad_inputs=(1,), cuda=True),
    Case("add", {}, [(2, 3, 2)], _add, cuda=True),
    Case("add", {}, [(2, 3, 2), (2, 3, 2)], _add, cuda=True),
    Case("add", {}, [(3, 4), (3, 4), (3, 4)], _add, grad_inputs=(0, 2), cuda=True),
]


# ---- activation ------------------------------------------------------------------------------

def _relu(xs, ps, a):
    return F.relu(xs[0])


def _leaky_relu(xs, ps, a):
    return F.leaky_relu(xs[0], a["slope"])


def _elu(xs, ps, a):
    return F.elu(xs[0], a["alpha"])


def _sigmoid(xs, ps, a):
    return torch.sigmoid(xs[0])


def _tanh(xs, ps, a):
    return torch.tanh(xs[0])


def _prelu(xs, ps, a):
    return F.prelu(xs[0], ps["weight"])


def _softmax(xs, ps, a):
    return F.softmax(xs[0], dim=a["axis"])


def _maxout(xs, ps, a):
    x = xs[0]
    k = a["pieces"]
    return x.view(x.shape[0], x.shape[1] // k, k, *x.shape[2:]).max(dim=2).values


def _scaled(shape, scale):
    return lambda rng: [rng.standard_normal(shape) * scale]


ACTIVATION = [
    Case("relu", {}, [(2, 3, 4, 5)], _relu),
    Case("relu", {}, [(3, 7)], _relu),
    Case("leaky_relu", {"slope": 0.01}, [(2, 3, 4, 4)], _leaky_relu),
    Case("leaky_relu", {"slope": 0.2}, [(4, 9)], _leaky_relu),
    Case("elu", {"alpha": 1.0}, [(2, 3, 4, 4)], _elu),
    Case("elu", {"alpha": 0.5}, [(3, 6)], _elu),
    Case("sigmoid", {}, [(2, 3, 4, 4)], _sigmoid),
    Case("sigmoid", {}, [(5, 8)], _sigmoid, make_inputs=_scaled((5, 8), 40)),   # saturated both ways
    Case("tanh", {}, [(2, 3, 4, 4)], _tanh),
    Case("tanh", {}, [(3, 2, 11)], _tanh),
    Case("prelu", {}, [(2, 3, 4, 5)], _prelu),
    Case("prelu", {}, [(4, 6)], _prelu),
    Case("prelu", {}, [(2, 5, 7)], _prelu),
    Case("prelu", {}, [(2, 3, 4)], _prelu, trainable=(), id="prelu-frozen-weight"),
    Case("softmax", {"axis": 1}, [(4, 10)], _softmax),
    Case("softmax", {"axis": 1}, [(2, 5, 3, 4)], _softmax),
    Case("softmax", {"axis": 2}, [(2, 3, 6)], _softmax),
    Case("softmax", {"axis": 1}, [(3, 7)], _softmax, make_inputs=_scaled((3, 7), 100)),  # would overflow a naive exp
    Case("maxout", {"pieces": 2}, [(2, 6, 3, 3)], _maxout),
    Case("maxout", {"pieces": 3}, [(4, 9)], _maxout),
    Case("maxout", {"pieces": 4}, [(2, 8, 5)], _maxout),
    # finite differences
    Case("relu", {}, [(2, 3, 2, 2)], _relu, fd=True),
    Case("leaky_relu", {"slope": 0.1}, [(3, 5)], _leaky_relu, fd=True),
    Case("elu", {"alpha": 0.7}, [(3, 5)], _elu, fd=True),
    Case("sigmoid", {}, [(3, 5)], _sigmoid, fd=True),
    Case("tanh", {}, [(3, 5)], _tanh, fd=True),
    Case("prelu", {}, [(2, 3, 2, 2)], _prelu, fd=True),
    Case("softmax", {"axis": 1}, [(2, 4, 3)], _softmax, fd=True),
    Case("maxout", {"pieces": 2}, [(2, 4, 3)], _maxout, fd=True),
    # CUDA against CPU
    Case("relu", {}, [(2, 3, 4)], _relu, cuda=True),
    Case("leaky_relu", {"slope": 0.2}, [(3, 7)], _leaky_relu, cuda=True),
    Case("elu", {"alpha": 0.5}, [(2, 3, 2, 2)], _elu, cuda=True),
    Case("sigmoid", {}, [(3, 5)], _sigmoid, make_inputs=_scaled((3, 5), 40), cuda=True),
    Case("tanh", {}, [(2, 9)], _tanh, cuda=True),
    Case("prelu", {}, [(2, 3, 2, 2)], _prelu, cuda=True),
    Case("prelu", {}, [(5, 4)], _prelu, cuda=True),
    Case("prelu", {}, [(2, 3, 5)], _prelu, grad_inputs=(), cuda=True),
    Case("softmax", {"axis": 1}, [(3, 7)], _softmax, make_inputs=_scaled((3, 7), 100), cuda=True),
    Case("softmax", {"axis": 1}, [(2, 4, 3)], _softmax, cuda=True),
    Case("softmax", {"axis": 2}, [(2, 3, 5)], _softmax, cuda=True),
    Case("maxout", {"pieces": 2}, [(2, 4, 3)], _maxout, cuda=True),
    Case("maxout", {"pieces": 3}, [(3, 6)], _maxout, cuda=True),
]


# ---- dense -----------------------------------------------------------------------------------

def _linear(xs, ps, a):
    x = xs[0]
    # A rank-3 x (N, T, F) is applied per step; any other rank is flattened to (N, F).
    return F.linear(x if x.dim() == 3 else x.flatten(1), ps["weight"], ps.get("bias"))


def dense_case(in_shape, units, bias=True, **kw):
    return Case("dense", {"units": units, "bias": bias}, [in_shape], _linear, **kw)


DENSE = [
    dense_case((4, 7), 5),
    dense_case((1, 3), 1),
    dense_case((3, 2, 3, 4), 6),           # flattened from (N, C, H, W)
    dense_case((5, 8), 3, bias=False),
    dense_case((2, 3, 5), 4),              # per step of a sequence (N, T, F)
    dense_case((3, 4, 6), 2, bias=False),
    dense_case((64, 100), 33, rtol=1e-4, atol=3e-4),
    dense_case((3, 6), 4, trainable=("bias",), id="dense-frozen-weight"),
    dense_case((3, 6), 4, grad_inputs=(), id="dense-no-input-grad"),
    dense_case((3, 4), 2, fd=True),
    dense_case((2, 2, 3, 1), 3, bias=False, fd=True),
    dense_case((2, 3, 4), 2, fd=True),
    dense_case((3, 7), 5, cuda=True, id="dense-flat"),
    dense_case((2, 2, 3, 2), 4, bias=False, cuda=True, id="dense-from-4d-nobias"),
    # a first layer with a frozen weight: only the bias gradient is asked for
    dense_case((2, 6), 3, grad_inputs=(), trainable=("bias",), cuda=True, id="dense-first-layer-frozen"),
]


# ---- conv / deconv ---------------------------------------------------------------------------

def conv_attrs(channels, kernel, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, bias=True):
    return dict(channels=channels, kernel=kernel, stride=stride, pad=pad, dilation=dilation,
                groups=groups, bias=bias)


def deconv_attrs(channels, kernel, stride=(1, 1), pad=(0, 0), output_pad=(0, 0), groups=1, bias=True):
    return dict(channels=channels, kernel=kernel, stride=stride, pad=pad, output_pad=output_pad,
                groups=groups, bias=bias)


def torch_conv(xs, ps, a):
    return F.conv2d(xs[0], ps["weight"], ps.get("bias"), stride=a["stride"], padding=a["pad"],
                    dilation=a["dilation"], groups=a["groups"])


def _torch_conv_relu(xs, ps, a):
    return F.relu(torch_conv(xs, ps, a))


def _torch_deconv(xs, ps, a):
    return F.conv_transpose2d(xs[0], ps["weight"], ps.get("bias"), stride=a["stride"], padding=a["pad"],
                              output_padding=a["output_pad"], groups=a["groups"])


def conv_case(id, x_shape, attrs, relu=False, **kw):
    """relu: the kernel absorbs a following relu (the plan's fuse_activation)."""
    return Case("conv", attrs, [x_shape], _torch_conv_relu if relu else torch_conv,
                id=f"conv-{id}{'+relu' if relu else ''}", fuse="relu" if relu else None, **kw)


def deconv_case(id, x_shape, attrs, **kw):
    return Case("deconv", attrs, [x_shape], _torch_deconv, id=f"deconv-{id}", **kw)


_CONV_CUDA = dict(cuda=True, cuda_atol=1e-4)

CONV = [
    conv_case("3x3-pad1", (2, 3, 7, 6), conv_attrs(4, (3, 3), pad=(1, 1))),
    conv_case("3x3-stride2-odd", (2, 3, 9, 7), conv_attrs(5, (3, 3), stride=(2, 2), pad=(1, 1))),
    conv_case("5x5-valid-to-1x1", (2, 2, 5, 5), conv_attrs(3, (5, 5))),
    conv_case("dilation2", (1, 2, 9, 8), conv_attrs(3, (3, 3), pad=(2, 2), dilation=(2, 2))),
    conv_case("mixed-dilation-pad", (2, 2, 7, 9), conv_attrs(3, (3, 2), pad=(0, 2), dilation=(1, 2))),
    conv_case("rect-kernel-stride", (2, 3, 8, 7), conv_attrs(4, (2, 5), stride=(2, 1), pad=(1, 2))),
    conv_case("groups2-nobias", (2, 4, 6, 5), conv_attrs(6, (3, 3), groups=2, bias=False)),
    conv_case("depthwise-stride2", (2, 4, 7, 6), conv_attrs(4, (3, 3), stride=(2, 2), pad=(1, 1), groups=4)),
    conv_case("depthwise-multiplier2", (1, 3, 5, 5), conv_attrs(6, (3, 3), pad=(1, 1), groups=3)),
    conv_case("pointwise", (2, 5, 4, 3), conv_attrs(3, (1, 1))),
    conv_case("pointwise-groups2-nobias", (2, 4, 3, 5), conv_attrs(6, (1, 1), groups=2, bias=False)),
    conv_case("1x1-stride2", (2, 3, 5, 6), conv_attrs(4, (1, 1), stride=(2, 2))),
    conv_case("1x1-pad1", (1, 3, 3, 3), conv_attrs(2, (1, 1), pad=(1, 1))),
    # a first layer (no input gradient) and a frozen weight (bias still trained)
    conv_case("first-layer", (2, 3, 6, 6), conv_attrs(4, (3, 3), pad=(1, 1)), grad_inputs=()),
    conv_case("first-layer-pointwise", (2, 3, 4, 4), conv_attrs(2, (1, 1)), grad_inputs=()),
    conv_case("frozen-weight", (2, 3, 6, 6), conv_attrs(4, (3, 3), pad=(1, 1)), trainable=("bias",)),
    # Small grids put several samples in one GEMM chunk (see MIN_GEMM_COLUMNS in runtime/cpu/conv.py):
    # a short last chunk, a worker with several chunks, groups, pointwise and strided chunks.
    conv_case("chunked-short-last", (7, 3, 3, 3), conv_attrs(4, (3, 3), pad=(1, 1))),
    conv_case("chunked-many-per-worker", (11, 3, 8, 16), conv_attrs(5, (3, 3), pad=(1, 1))),
    conv_case("chunked-groups2", (5, 4, 4, 4), conv_attrs(6, (3, 3), pad=(1, 1), groups=2)),
    conv_case("chunked-pointwise", (6, 5, 4, 4), conv_attrs(3, (1, 1))),
    conv_case("chunked-stride2-nobias", (9, 4, 6, 6), conv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1), bias=False)),
    conv_case("chunked-first-layer", (5, 3, 4, 4), conv_attrs(4, (3, 3), pad=(1, 1)), grad_inputs=()),
    conv_case("chunked-frozen-weight", (5, 3, 4, 4), conv_attrs(4, (3, 3), pad=(1, 1)), trainable=("bias",)),
    conv_case("batch-of-one", (1, 3, 5, 5), conv_attrs(4, (3, 3), pad=(1, 1))),
    # An odd batch, so that one worker has more samples than the other.
    conv_case("odd-batch-wide", (3, 4, 5, 17), conv_attrs(5, (3, 3), pad=(1, 1))),
    conv_case("valid-5x5-nobias", (2, 2, 6, 20), conv_attrs(3, (5, 5), groups=1, bias=False)),
    # one input channel (depth-1 GEMMs on the shifted path)
    conv_case("grayscale-5x5", (3, 1, 9, 8), conv_attrs(4, (5, 5), pad=(1, 0))),
    # 3x3 stride 1 with each padding Winograd takes (its input gradient pads by 2 - pad), odd
    # and even sizes (a tile overhangs an odd edge)
    conv_case("3x3-valid-odd", (2, 3, 7, 8), conv_attrs(4, (3, 3))),
    conv_case("3x3-pad2", (2, 3, 5, 4), conv_attrs(4, (3, 3), pad=(2, 2))),
    conv_case("3x3-mixed-pad", (3, 2, 6, 5), conv_attrs(3, (3, 3), pad=(0, 2), bias=False)),
    conv_case("grayscale-dilation2", (2, 1, 7, 7), conv_attrs(2, (3, 3), pad=(2, 2), dilation=(2, 2))),
    # grids of 8 and more: Winograd's 4x4 tiles (see F4_MIN_GRID), overhanging the edges
    conv_case("3x3-f4-overhang", (3, 3, 9, 10), conv_attrs(4, (3, 3), pad=(1, 1))),
    conv_case("3x3-f4-valid", (2, 2, 10, 13), conv_attrs(3, (3, 3), bias=False)),
    # a fused relu, in every lowering's epilogue
    conv_case("3x3-pad1", (2, 3, 7, 6), conv_attrs(4, (3, 3), pad=(1, 1)), relu=True),
    conv_case("3x3-f4-overhang", (3, 3, 9, 10), conv_attrs(4, (3, 3), pad=(1, 1), bias=False), relu=True),
    conv_case("chunked-stride2", (9, 4, 6, 6), conv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1)), relu=True),
    conv_case("pointwise", (2, 5, 4, 3), conv_attrs(3, (1, 1)), relu=True),
    conv_case("chunked-pointwise-groups2", (6, 4, 4, 4), conv_attrs(6, (1, 1), groups=2), relu=True),
    conv_case("grayscale-5x5", (3, 1, 9, 8), conv_attrs(4, (5, 5), pad=(1, 0)), relu=True),
    conv_case("first-layer", (2, 3, 6, 6), conv_attrs(4, (3, 3), pad=(1, 1)), relu=True, grad_inputs=()),
    deconv_case("3x3-pad1", (2, 3, 5, 6), deconv_attrs(4, (3, 3), pad=(1, 1))),
    deconv_case("3x3-stride2-outpad1", (2, 3, 4, 5), deconv_attrs(2, (3, 3), stride=(2, 2), pad=(1, 1),
                                                                   output_pad=(1, 1))),
    deconv_case("4x4-stride2-pad1", (2, 2, 3, 4), deconv_attrs(3, (4, 4), stride=(2, 2), pad=(1, 1))),
    deconv_case("stride3-kernel2-gaps", (1, 2, 3, 3), deconv_attrs(2, (2, 2), stride=(3, 3))),
    deconv_case("rect-kernel-outpad", (2, 3, 4, 3), deconv_attrs(4, (2, 3), stride=(2, 1), pad=(0, 1),
                                                                  output_pad=(1, 0))),
    deconv_case("groups2-nobias", (2, 4, 4, 5), deconv_attrs(6, (3, 3), stride=(2, 2), groups=2, bias=False)),
    deconv_case("depthwise", (2, 3, 4, 4), deconv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1), groups=3)),
    deconv_case("pointwise", (2, 5, 3, 4), deconv_attrs(3, (1, 1))),
    deconv_case("1x1-stride2-outpad1", (2, 3, 3, 4), deconv_attrs(2, (1, 1), stride=(2, 2), output_pad=(1, 1))),
    deconv_case("first-layer", (2, 3, 4, 4), deconv_attrs(2, (3, 3), stride=(2, 2)), grad_inputs=()),
    deconv_case("bias-grad-only", (2, 3, 4, 4), deconv_attrs(2, (3, 3), stride=(2, 2)),
                grad_inputs=(), trainable=("bias",)),
    # finite differences: each runs the forward ~150 times in float64, so tiny shapes only
    conv_case("fd-stride2-pad1", (1, 2, 5, 4), conv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1)), fd=True),
    conv_case("fd-groups2-dilation2", (1, 4, 5, 5), conv_attrs(2, (2, 2), pad=(1, 1), dilation=(2, 2), groups=2),
              fd=True),
    conv_case("fd-pointwise", (2, 3, 2, 3), conv_attrs(2, (1, 1)), fd=True),
    conv_case("fd-chunked", (3, 2, 3, 3), conv_attrs(2, (3, 3), pad=(1, 1)), fd=True),
    conv_case("fd-grayscale", (2, 1, 4, 4), conv_attrs(2, (3, 3), pad=(1, 1)), fd=True),
    conv_case("fd-f4-tiles", (1, 2, 8, 9), conv_attrs(2, (3, 3), pad=(1, 1)), fd=True),
    conv_case("fd-chunked", (3, 2, 3, 3), conv_attrs(2, (3, 3), pad=(1, 1)), relu=True, fd=True),
    deconv_case("fd-stride2-outpad1", (1, 2, 3, 3), deconv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1),
                                                                 output_pad=(1, 1)), fd=True),
    deconv_case("fd-groups2", (1, 4, 3, 2), deconv_attrs(2, (2, 3), stride=(1, 2), groups=2), fd=True),
    # CUDA against CPU
    conv_case("cuda-3x3-pad1", (2, 3, 5, 5), conv_attrs(4, (3, 3), pad=(1, 1)), **_CONV_CUDA),
    conv_case("cuda-rect-stride-dilation", (2, 2, 6, 5), conv_attrs(3, (3, 2), stride=(2, 1), pad=(1, 1),
                                                                    dilation=(2, 1)), **_CONV_CUDA),
    conv_case("cuda-groups2-nobias", (2, 4, 5, 4), conv_attrs(6, (3, 3), groups=2, bias=False), **_CONV_CUDA),
    conv_case("cuda-depthwise-stride2", (2, 3, 5, 5), conv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1), groups=3),
              **_CONV_CUDA),
    # a first layer: no input gradient wanted
    conv_case("cuda-first-layer", (2, 2, 4, 4), conv_attrs(3, (2, 2)), grad_inputs=(), **_CONV_CUDA),
    # a frozen layer: only the input gradient and the bias's
    deconv_case("cuda-frozen-weight", (2, 2, 3, 3), deconv_attrs(2, (2, 2)), trainable=("bias",), **_CONV_CUDA),
    deconv_case("cuda-stride2-outpad1", (2, 2, 3, 3), deconv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1),
                                                                   output_pad=(1, 1)), **_CONV_CUDA),
    deconv_case("cuda-groups2-rect-nobias", (2, 4, 3, 2), deconv_attrs(2, (2, 3), stride=(1, 2), groups=2,
                                                                       bias=False), **_CONV_CUDA),
]


# ---- loss ------------------------------------------------------------------------------------

def _cross_entropy(xs, ps, a):
    logits, labels = xs
    return F.cross_entropy(logits.movedim(a["class_axis"], 1), labels)


def _ce_case(logits_shape, class_axis=1, **kw):
    labels_shape = logits_shape[:class_axis] + logits_shape[class_axis + 1:]
    return Case("cross_entropy", {"class_axis": class_axis}, [logits_shape, labels_shape], _cross_entropy,
                in_dtypes=["float32", "int64"], int_high=logits_shape[class_axis], **kw)


def _huge_logits(shape):
    return lambda rng: [rng.standard_normal(shape) * 200, rng.integers(0, shape[1], size=shape[0])]


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


def _loss_sum_case(weights, **kw):
    return Case("loss_sum", {"weights": weights}, [()] * len(weights),
                lambda xs, ps, a: sum(w * x for w, x in zip(a["weights"], xs)), **kw)


LOSS = [
    _ce_case((6, 5)),
    _ce_case((1, 3)),
    _ce_case((2, 4, 3, 5)),                    # per-pixel labels (N, H, W)
    _ce_case((3, 4, 7), class_axis=2),         # per-step labels (N, T)
    _ce_case((4, 6), make_inputs=_huge_logits((4, 6)), id="cross_entropy-huge-logits"),
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
    # Inputs larger than one parallel chunk: every chunk's partial sum counts.
    _mse_case((5, 10000), atol=1e-6, id="mse-across-chunks"),
    _bce_case((5, 10000), atol=1e-6, id="bce-across-chunks"),
    _loss_sum_case((1.0,)),
    _loss_sum_case((1.0, 0.3)),
    _loss_sum_case((0.5, 2.0, 0.25)),
    # finite differences
    _ce_case((3, 4), fd=True),
    _ce_case((2, 3, 2, 2), fd=True),
    _ce_case((2, 3, 4), class_axis=2, fd=True),
    _hinge_case((3, 4), fd=True),
    _mse_case((2, 5), fd=True),
    _bce_case((2, 5), fd=True),
    _loss_sum_case((1.0, 0.3), fd=True),
    # CUDA against CPU
    _ce_case((5, 4), cuda=True),
    _ce_case((2, 3, 2, 2), cuda=True),
    _ce_case((2, 3, 5), class_axis=2, cuda=True),
    _ce_case((3, 6), make_inputs=_huge_logits((3, 6)), cuda=True, id="cross_entropy-huge-logits-cuda"),
    _hinge_case((5, 4), margin=1.0, cuda=True),
    _hinge_case((3, 6), margin=0.5, cuda=True),
    _mse_case((3, 4), cuda=True),
    _mse_case((2, 3, 2), grad_inputs=(0,), cuda=True, id="mse-target-without-gradient-cuda"),
    _bce_case((4, 3), cuda=True),
    _bce_case((3, 4), logit_scale=100.0, grad_inputs=(0,), cuda=True, id="bce-huge-logits-target-without-gradient"),
    _loss_sum_case((1.0,), cuda=True),
    _loss_sum_case((0.5, 2.0, -1.0), grad_inputs=(0, 2), cuda=True),
]


# ---- norm ------------------------------------------------------------------------------------

def batchnorm_case(shape, training, eps=1e-5, momentum=0.1, fuse=None, **kw):
    """The running statistics after the forward are compared with torch's too (the harness
    compares every param after the call). fuse="relu": the kernel absorbs a following relu."""
    def torch_fn(xs, ps, a):
        out = F.batch_norm(xs[0], ps["running_mean"], ps["running_var"], ps["weight"], ps["bias"],
                           training=training, momentum=a["momentum"], eps=a["eps"])
        return F.relu(out) if fuse == "relu" else out

    kw.setdefault("id", f"batchnorm{shape}{'train' if training else 'eval'}{'+' + fuse if fuse else ''}")
    return Case("batchnorm", {"eps": eps, "momentum": momentum}, [shape], torch_fn, training=training, fuse=fuse,
                **kw)


def _lrn_case(shape, size=5, alpha=1e-4, beta=0.75, k=1.0, **kw):
    return Case("lrn", {"size": size, "alpha": alpha, "beta": beta, "k": k}, [shape],
                lambda xs, ps, a: F.local_response_norm(xs[0], a["size"], a["alpha"], a["beta"], a["k"]), **kw)


def dropout_case(shape, p, training, **kw):
    """torch's random stream cannot be matched: with training, only the finite differences
    (the mask is fixed by the seed, so dropout is linear) and the statistical tests in
    tests/kernels/test_cpu_norm.py check it."""
    return Case("dropout", {"p": p}, [shape], lambda xs, ps, a: F.dropout(xs[0], a["p"], training),
                training=training, vs_torch=not training, **kw)


NORM = [
    *(batchnorm_case(shape, training) for shape in [(8, 3), (4, 3, 1, 1), (4, 3, 5), (2, 3, 4, 4), (3, 2, 1, 5)]
      for training in (True, False)),
    batchnorm_case((5, 4, 3), True, eps=1e-3, momentum=0.3, id="batchnorm-momentum-and-eps"),
    # frozen weight and bias: only the input gradient is written
    batchnorm_case((4, 3, 2, 2), True, trainable=(), id="batchnorm-frozen-affine-train"),
    batchnorm_case((4, 3, 2, 2), False, trainable=(), id="batchnorm-frozen-affine-eval"),
    batchnorm_case((4, 3, 2), True, grad_inputs=(), id="batchnorm-no-input-grad"),
    # batchnorm + relu as one kernel (the plan fuses them): the output is relu'd, and every
    # gradient is masked where it was clipped
    *(batchnorm_case(shape, training, fuse="relu") for shape in [(2, 3, 4, 4), (4, 3, 5)]
      for training in (True, False)),
    batchnorm_case((4, 3, 2, 2), True, fuse="relu", trainable=(), id="batchnorm+relu-frozen-affine"),
    batchnorm_case((4, 3, 2, 2), True, fuse="relu", grad_inputs=(), id="batchnorm+relu-no-input-grad"),
    _lrn_case((2, 7, 3, 3)),
    _lrn_case((2, 7, 3, 3), size=3, alpha=0.5, beta=0.75, k=2.0),
    _lrn_case((1, 6, 2, 4), size=4, alpha=0.3, beta=0.6, k=1.0),      # even window: asymmetric padding
    _lrn_case((2, 3, 2, 2), size=5, alpha=0.4, beta=1.2, k=1.5),      # window wider than the channels
    # finite differences
    *(batchnorm_case(shape, training, fd=True, id=f"fd-batchnorm{shape}{'train' if training else 'eval'}")
      for shape in [(5, 3), (3, 2, 2, 2)] for training in (True, False)),
    batchnorm_case((3, 2, 2, 2), True, fuse="relu", fd=True, id="fd-batchnorm+relu"),
    _lrn_case((2, 5, 2, 2), size=4, alpha=0.5, beta=0.75, k=1.0, fd=True),
    dropout_case((3, 4, 2), 0.4, training=True, fd=True),
    # CUDA against CPU
    batchnorm_case((6, 3), True, cuda=True, id="batchnorm(6, 3)train-cuda"),
    batchnorm_case((2, 3, 4), True, cuda=True, id="batchnorm(2, 3, 4)train-cuda"),
    batchnorm_case((2, 3, 2, 2), True, cuda=True, id="batchnorm(2, 3, 2, 2)train-cuda"),
    batchnorm_case((2, 3, 2, 2), False, cuda=True, id="batchnorm(2, 3, 2, 2)eval-cuda"),
    batchnorm_case((2, 3, 3), True, trainable=("weight",), grad_inputs=(), cuda=True,
                   id="batchnorm-weight-only-cuda"),
    _lrn_case((2, 5, 2, 2), size=3, alpha=0.1, beta=0.75, k=1.0, cuda=True),
    _lrn_case((1, 6, 1, 3), size=4, alpha=1e-2, beta=0.5, k=2.0, cuda=True),
    dropout_case((2, 3, 2), 0.5, training=False, cuda=True),
]


# ---- pool ------------------------------------------------------------------------------------

def window(kernel, stride, pad=(0, 0), ceil=False):
    return dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil)


def maxpool_case(x_shape, attrs, **kw):
    return Case("maxpool", attrs, [x_shape],
                lambda xs, ps, a: F.max_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"]), **kw)


def _ties_nans_and_infinities(*shapes):
    """make_inputs for max-pooling: small integers (windows full of ties), a NaN in about one
    place in eight (a window with several takes its last, as torch), and the first plane's
    top-left 3x3 corner at -inf (windows whose maximum is -inf report their first element)."""
    def make(rng):
        xs = []
        for shape in shapes:
            x = rng.integers(-2, 3, size=shape).astype(np.float32)
            x[rng.random(shape) < 0.125] = np.nan
            x[0, 0, :3, :3] = -np.inf
            xs.append(x)
        return xs
    return make


def _maxpool_ties_case(x_shape, attrs):
    return maxpool_case(x_shape, attrs, make_inputs=_ties_nans_and_infinities(x_shape),
                        id=f"maxpool-ties-nans{list(x_shape)}{attrs}")


def avgpool_case(x_shape, attrs, **kw):
    return Case("avgpool", attrs, [x_shape],
                lambda xs, ps, a: F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"],
                                               count_include_pad=True), **kw)


def global_avgpool_case(x_shape, **kw):
    return Case("global_avgpool", {}, [x_shape], lambda xs, ps, a: F.adaptive_avg_pool2d(xs[0], 1).flatten(1), **kw)


def _pooled_shape(src_shape, attrs):
    """The max-pool's output shape, as torch computes it (floor or ceil mode)."""
    return tuple(F.max_pool2d(torch.zeros(src_shape), attrs["kernel"], attrs["stride"], attrs["pad"],
                              ceil_mode=attrs["ceil"]).shape)


def _torch_maxunpool(xs, ps, a):
    values, src = xs
    _, indices = F.max_pool2d(src.detach(), a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"],
                              return_indices=True)
    return F.max_unpool2d(values, indices, a["kernel"], a["stride"], a["pad"], output_size=src.shape[-2:])


def maxunpool_case(src_shape, attrs, **kw):
    """Input 0: one value per max-pool window; input 1: the tensor that max-pool pooled. torch
    gives no gradient to input 1 at all, so rows compared with torch set grad_inputs=(0,)."""
    return Case("maxunpool", attrs, [_pooled_shape(src_shape, attrs), src_shape], _torch_maxunpool, **kw)


def _torch_unpool(xs, ps, a):
    x = xs[0]
    sh, sw = a["scale"]
    n, c, h, w = x.shape
    out = x.new_zeros((n, c, h * sh, w * sw))
    out[:, :, ::sh, ::sw] = x
    return out


def unpool_case(x_shape, scale, **kw):
    return Case("unpool", {"scale": scale}, [x_shape], _torch_unpool, **kw)


def _torch_upsample(xs, ps, a):
    align_corners = False if a["mode"] == "bilinear" else None
    return F.interpolate(xs[0], scale_factor=tuple(map(float, a["scale"])), mode=a["mode"],
                         align_corners=align_corners)


def upsample_case(x_shape, scale, mode, **kw):
    return Case("upsample", {"scale": scale, "mode": mode}, [x_shape], _torch_upsample, **kw)


_X = (2, 2, 5, 5)

POOL = [
    maxpool_case((2, 3, 7, 6), window((2, 2), (2, 2))),                      # odd size: floor drops a row
    maxpool_case((2, 2, 9, 8), window((3, 3), (2, 2), (1, 1))),              # ResNet stem pool
    maxpool_case((2, 2, 6, 5), window((3, 3), (1, 1), (1, 1))),              # GoogLeNet branch pool
    maxpool_case((1, 3, 5, 7), window((2, 3), (1, 2), (1, 1))),              # rectangular
    maxpool_case((2, 2, 8, 8), window((3, 3), (3, 3))),
    # ceil mode: a last, partial window where floor mode drops the rest of the map
    maxpool_case((2, 3, 7, 6), window((2, 2), (2, 2), ceil=True)),
    maxpool_case((2, 2, 8, 9), window((3, 3), (2, 2), ceil=True)),           # SqueezeNet's pools
    maxpool_case((1, 2, 5, 7), window((2, 3), (2, 2), (1, 1), ceil=True)),   # 5: a window would start in padding only
    maxpool_case((1, 2, 1, 3), window((2, 2), (2, 2), ceil=True)),           # every window overhangs
    # the geometries with a plane function of their own, at the smallest shapes that select it
    maxpool_case((2, 3, 8, 6), window((2, 2), (2, 2))),                      # 2x2 windows tile the image
    maxpool_case((2, 2, 3, 3), window((3, 3), (1, 1), (1, 1))),              # 3x3 same: no interior run
    maxpool_case((2, 2, 4, 3), window((3, 3), (1, 1), (1, 1))),              # 3x3 same: one interior output
    maxpool_case((1, 2, 2, 5), window((3, 3), (1, 1), (1, 1))),              # too small for it: any-window loop
    maxpool_case((2, 3, 9, 11), window((3, 3), (1, 1), (1, 1))),
    maxpool_case((2, 2, 4, 4), window((3, 3), (2, 2), (1, 1))),              # 3x3 stride 2: one interior output
    maxpool_case((2, 2, 3, 5), window((3, 3), (2, 2), (1, 1))),              # 3x3 stride 2: no interior row
    _maxpool_ties_case((2, 3, 8, 6), window((2, 2), (2, 2))),
    _maxpool_ties_case((2, 3, 7, 9), window((3, 3), (1, 1), (1, 1))),
    _maxpool_ties_case((2, 3, 7, 9), window((3, 3), (2, 2), (1, 1), ceil=True)),
    _maxpool_ties_case((2, 3, 12, 11), window((3, 3), (2, 2), (1, 1))),     # 3x3 stride 2, rows of interior windows
    _maxpool_ties_case((2, 3, 11, 12), window((3, 3), (2, 2), ceil=True)),
    avgpool_case((2, 3, 7, 6), window((2, 2), (2, 2))),
    avgpool_case((2, 2, 9, 8), window((3, 3), (2, 2), (1, 1))),              # padding counts as zeros
    avgpool_case((2, 2, 6, 5), window((3, 3), (1, 1), (1, 1))),
    avgpool_case((1, 2, 5, 7), window((3, 2), (2, 1), (1, 0))),
    avgpool_case((2, 3, 8, 6), window((2, 2), (2, 2))),                      # windows tile the image exactly
    # ceil mode: an overhanging window divides by its part inside the input and its padding
    avgpool_case((2, 3, 7, 6), window((2, 2), (2, 2), ceil=True)),
    avgpool_case((1, 2, 6, 5), window((3, 3), (2, 2), (1, 1), ceil=True)),
    avgpool_case((1, 2, 5, 7), window((2, 3), (2, 2), (1, 1), ceil=True)),
    avgpool_case((2, 2, 8, 9), window((3, 3), (2, 2), ceil=True)),
    global_avgpool_case((2, 3, 5, 4)),
    global_avgpool_case((3, 4, 1, 1)),
    global_avgpool_case((1, 2, 7, 3)),
    maxunpool_case((2, 3, 6, 5), window((2, 2), (2, 2)), grad_inputs=(0,)),  # odd width: last column stays 0
    maxunpool_case((1, 2, 8, 6), window((3, 2), (2, 2), (1, 0)), grad_inputs=(0,)),
    maxunpool_case((2, 2, 7, 8), window((3, 3), (2, 2), ceil=True), grad_inputs=(0,)),
    maxunpool_case((2, 3, 6, 4), window((2, 2), (2, 2)), grad_inputs=(0,)),
    # overlapping windows share argmaxes; the later window's value is written, as torch
    maxunpool_case((2, 2, 5, 6), window((3, 3), (1, 1), (1, 1)), grad_inputs=(0,)),
    unpool_case((2, 3, 3, 4), (2, 2)),
    unpool_case((1, 2, 2, 3), (3, 2)),
    unpool_case((2, 2, 3, 3), (1, 2)),
    upsample_case((2, 3, 3, 4), (2, 2), "nearest"),
    upsample_case((1, 2, 2, 3), (3, 2), "nearest"),
    upsample_case((2, 3, 3, 4), (2, 2), "bilinear"),
    upsample_case((1, 2, 4, 3), (3, 2), "bilinear"),
    upsample_case((2, 2, 1, 3), (2, 3), "bilinear"),                          # height 1: both rows clamp
    # finite differences: each runs the forward ~50 times per input in float64, so tiny shapes only
    maxpool_case((1, 2, 5, 4), window((3, 3), (2, 2), (1, 1)), fd=True),
    avgpool_case((1, 2, 5, 4), window((3, 3), (2, 2), (1, 1)), fd=True),
    maxpool_case((1, 2, 5, 4), window((2, 3), (2, 2), (1, 1), ceil=True), fd=True),
    maxpool_case((1, 2, 4, 4), window((3, 3), (1, 1), (1, 1)), fd=True),
    maxpool_case((1, 2, 4, 6), window((2, 2), (2, 2)), fd=True),
    avgpool_case((1, 2, 4, 6), window((2, 2), (2, 2)), fd=True),
    avgpool_case((1, 2, 6, 5), window((3, 3), (2, 2), (1, 1), ceil=True), fd=True),
    global_avgpool_case((2, 2, 3, 2), fd=True),
    # input 1 included: its gradient is 0 (torch gives none, so no torch comparison)
    maxunpool_case((1, 2, 4, 5), window((2, 2), (2, 2)), fd=True, vs_torch=False),
    unpool_case((1, 2, 2, 3), (2, 3), fd=True),
    upsample_case((1, 2, 2, 3), (2, 3), "nearest", fd=True),
    upsample_case((1, 2, 3, 2), (3, 2), "bilinear", fd=True),
    # CUDA against CPU
    maxpool_case(_X, window((2, 2), (2, 2)), cuda=True, id="maxpool-2x2-floor"),
    # overlapping windows: an input that is the max of several windows gets all their gradients
    maxpool_case(_X, window((3, 3), (1, 2), (1, 1)), cuda=True, id="maxpool-3x3-overlap-pad"),
    avgpool_case(_X, window((3, 2), (2, 1), (1, 0)), cuda=True, id="avgpool-rect-pad"),
    # ceil mode: last windows overhang the map (and its padding); avgpool divides by the part inside
    maxpool_case(_X, window((2, 2), (2, 2), ceil=True), cuda=True, id="maxpool-2x2-ceil"),
    maxpool_case((1, 2, 6, 5), window((3, 2), (2, 2), (1, 1), ceil=True), cuda=True, id="maxpool-ceil-pad"),
    avgpool_case((1, 2, 6, 5), window((3, 3), (2, 2), (1, 1), ceil=True), cuda=True, id="avgpool-ceil-pad"),
    avgpool_case(_X, window((2, 3), (2, 2), (0, 1), ceil=True), cuda=True, id="avgpool-ceil-rect"),
    global_avgpool_case((2, 3, 3, 4), cuda=True, id="global_avgpool"),
    maxunpool_case(_X, window((2, 2), (2, 2)), grad_inputs=(0,), cuda=True, id="maxunpool-2x2"),
    # overlapping windows sharing an argmax: the later window's value wins, like torch
    maxunpool_case(_X, window((3, 3), (1, 1), (1, 1)), grad_inputs=(0,), cuda=True, id="maxunpool-3x3-overlap"),
    # ceil mode: 6x6 pools to 3x3, the last windows overlapping the previous ones and the edge
    maxunpool_case((2, 2, 6, 6), window((3, 3), (2, 2), ceil=True), grad_inputs=(0,), cuda=True,
                   id="maxunpool-3x3-ceil"),
    unpool_case((2, 2, 3, 2), (2, 3), cuda=True, id="unpool"),
    upsample_case((2, 2, 3, 2), (2, 3), "nearest", cuda=True, id="upsample-nearest"),
    upsample_case((2, 2, 3, 4), (2, 2), "bilinear", cuda=True, id="upsample-bilinear"),
    upsample_case((1, 2, 2, 3), (3, 2), "bilinear", cuda=True, id="upsample-bilinear-scale3"),
]


# ---- recurrent -------------------------------------------------------------------------------

_TORCH_RECURRENT = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_recurrent(op):
    def run(xs, ps, attrs):
        x = xs[0]
        reverse = attrs.get("reverse", False)      # torch has no flag: flip -> layer -> flip
        if reverse:
            x = x.flip(1)
        directions = 2 if attrs.get("bidirectional") else 1
        module = _TORCH_RECURRENT[op](x.shape[2], attrs["hidden"], attrs["layers"], batch_first=True,
                                      bidirectional=directions == 2)
        # functional_call runs the module on the harness's tensors, so autograd reaches them.
        # Initial states, batch first [N, layers, H] (or [N, H]), are torch's [layers, N, H].
        states = [s.reshape(x.shape[0], directions * attrs["layers"], attrs["hidden"]).transpose(0, 1).contiguous()
                  for s in xs[1:]]
        if op == "lstm" and len(states) == 1:           # h0 alone: c0 is zero
            states.append(torch.zeros_like(states[0]))
        args = (x,) if not states else (x, tuple(states) if op == "lstm" else states[0])
        out, _ = torch.func.functional_call(module, ps, args)
        if reverse and attrs["sequence"]:
            out = out.flip(1)
        return out if attrs["sequence"] else out[:, -1]
    return run


def recurrent_case(op, batch, steps, features, hidden, layers, sequence, **kw):
    return Case(op, {"hidden": hidden, "layers": layers, "sequence": sequence},
                [(batch, steps, features)], torch_recurrent(op),
                id=f"{op}-N{batch}-T{steps}-F{features}-H{hidden}-L{layers}-seq{sequence}", **kw)


def initial_state_case(op, batch, steps, features, hidden, layers, sequence, states, flat=False, **kw):
    """A recurrent row with `states` initial-state inputs (h0, then c0), [N, layers, H] or,
    with `flat` (one layer), [N, H]."""
    shape = (batch, hidden) if flat else (batch, layers, hidden)
    return Case(op, {"hidden": hidden, "layers": layers, "sequence": sequence},
                [(batch, steps, features)] + [shape] * states, torch_recurrent(op),
                id=f"{op}-N{batch}-T{steps}-F{features}-H{hidden}-L{layers}-seq{sequence}-states{states}"
                   + "-flat" * flat, **kw)


def reverse_case(op, batch, steps, features, hidden, layers, sequence, states=0, **kw):
    """A recurrent row with reverse = true (and `states` initial states, [N, layers, H])."""
    return Case(op, {"hidden": hidden, "layers": layers, "sequence": sequence, "reverse": True},
                [(batch, steps, features)] + [(batch, layers, hidden)] * states, torch_recurrent(op),
                id=f"{op}-N{batch}-T{steps}-F{features}-H{hidden}-L{layers}-seq{sequence}-states{states}-reverse",
                **kw)


def torch_recurrent_dropout(op):
    """The stack as torch runs it with dropout between layers, one torch layer at a time, the
    dropout factors re-derived from the harness's generator (np.random.default_rng(0)): one
    uniform float32 per state of each layer but the last, in order, kept where u >= p."""
    def run(xs, ps, attrs):
        x = xs[0]
        layers, hidden, p = attrs["layers"], attrs["hidden"], attrs["dropout"]
        directions = 2 if attrs.get("bidirectional") else 1
        rng = np.random.default_rng(0)
        states = [s.reshape(x.shape[0], directions * layers, hidden).transpose(0, 1) for s in xs[1:]]
        for layer in range(layers):
            module = _TORCH_RECURRENT[op](x.shape[2], hidden, 1, batch_first=True, bidirectional=directions == 2)
            own = {name.replace(f"_l{layer}", "_l0"): v for name, v in ps.items() if f"_l{layer}" in name}
            init = [s[directions * layer:directions * (layer + 1)].contiguous() for s in states]
            if op == "lstm" and len(init) == 1:
                init.append(torch.zeros_like(init[0]))
            args = (x,) if not init else (x, tuple(init) if op == "lstm" else init[0])
            x, _ = torch.func.functional_call(module, own, args)
            if layer < layers - 1:
                u = torch.from_numpy(rng.random(tuple(x.shape), dtype=np.float32))
                x = x * ((u >= p).to(x.dtype) / (1 - p))
        return x if attrs["sequence"] else x[:, -1]
    return run


def dropout_recurrent_case(op, batch, steps, features, hidden, layers, sequence, p, states=0, bidirectional=False,
                           **kw):
    """A recurrent row with dropout = p between layers (training)."""
    directions = 2 if bidirectional else 1
    return Case(op, {"hidden": hidden, "layers": layers, "sequence": sequence, "dropout": p,
                     "bidirectional": bidirectional},
                [(batch, steps, features)] + [(batch, directions * layers, hidden)] * states,
                torch_recurrent_dropout(op),
                id=f"{op}-N{batch}-T{steps}-F{features}-H{hidden}-L{layers}-seq{sequence}-states{states}"
                   f"-dropout{p}" + "-bi" * bidirectional, **kw)


def bidirectional_case(op, batch, steps, features, hidden, layers, sequence, states=0, **kw):
    """A recurrent row with bidirectional = true (and `states` initial states, [N, 2 layers, H])."""
    return Case(op, {"hidden": hidden, "layers": layers, "sequence": sequence, "bidirectional": True},
                [(batch, steps, features)] + [(batch, 2 * layers, hidden)] * states, torch_recurrent(op),
                id=f"{op}-N{batch}-T{steps}-F{features}-H{hidden}-L{layers}-seq{sequence}-states{states}-bi",
                **kw)


def embed_case(batch, steps, vocab, dim, **kw):
    return Case("embed", {"vocab": vocab, "dim": dim}, [(batch, steps)],
                lambda xs, ps, a: F.embedding(xs[0], ps["weight"]),
                in_dtypes=["int64"], int_high=vocab, id=f"embed-N{batch}-T{steps}-V{vocab}-D{dim}", **kw)


RECURRENT_OPS = ("rnn", "lstm", "gru")

# (N, T, F, H, layers, sequence): 1 and 2 layers, both output modes, T from 1 to 12 with
# backpropagation through 10+ steps for every cell. The cell loops vectorise over the batch:
# N = 21 runs their vector body (16 float32 lanes with AVX-512) and a remainder.
_RECURRENT_SHAPES = [
    (2, 5, 3, 4, 1, False),
    (1, 1, 3, 2, 1, True),
    (3, 12, 4, 3, 2, False),
    (2, 4, 3, 5, 2, True),
    (3, 1, 2, 3, 2, False),
    (1, 11, 2, 3, 1, True),
    (21, 6, 5, 7, 2, True),
]

RECURRENT = [
    embed_case(2, 5, vocab=7, dim=3),
    embed_case(3, 4, vocab=3, dim=2, fd=True, cuda=True),      # 12 ids over 3 rows: repeated ids must add up
    embed_case(1, 1, vocab=4, dim=5),
    *(recurrent_case(op, *shape) for op in RECURRENT_OPS for shape in _RECURRENT_SHAPES),
    *(recurrent_case(op, 2, 3, 2, 2, 2, sequence, fd=True) for op in RECURRENT_OPS for sequence in (True, False)),
    # CUDA: two layers and three steps: the recurrence, the layer stacking, both output modes
    recurrent_case("rnn", 2, 3, 3, 2, 2, True, cuda=True),
    recurrent_case("lstm", 2, 3, 3, 2, 2, False, cuda=True),
    recurrent_case("gru", 2, 3, 3, 2, 2, True, cuda=True),
    # one step: no recurrent GEMM, a zero W_hh gradient; only some parameters want gradients
    recurrent_case("lstm", 2, 1, 2, 3, 1, True, trainable=("weight_ih_l0", "weight_hh_l0", "bias_hh_l0"),
                   cuda=True),
    recurrent_case("gru", 1, 4, 2, 2, 1, False, grad_inputs=(), cuda=True),
    # initial states (h0, c0): one and two layers, [N, H] for one layer, an LSTM given h0 alone,
    # one step (only step 0 reads them), 21 sequences (the vector body and its remainder)
    *(initial_state_case(op, 2, 4, 3, 3, 2, True, len(states), fd=True, cuda=True)
      for op, states in (("rnn", "h"), ("gru", "h"), ("lstm", "hc"))),
    *(initial_state_case(op, 3, 5, 2, 4, 1, False, len(states), flat=True)
      for op, states in (("rnn", "h"), ("gru", "h"), ("lstm", "hc"))),
    initial_state_case("lstm", 2, 3, 2, 3, 1, True, 1, flat=True, fd=True, cuda=True),
    *(initial_state_case(op, 2, 1, 3, 2, 1, True, states, fd=True)
      for op, states in (("rnn", 1), ("gru", 1), ("lstm", 2))),
    initial_state_case("lstm", 21, 6, 5, 7, 2, True, 2),
    initial_state_case("gru", 21, 6, 5, 7, 2, False, 1),
    # only the states want gradients; the sequence none
    initial_state_case("lstm", 2, 3, 2, 3, 2, True, 2, grad_inputs=(1, 2), cuda=True),
    # reverse = true: the last step first, with and without initial states, both output modes
    *(reverse_case(op, 2, 4, 3, 3, 2, sequence, fd=True, cuda=True)
      for op in RECURRENT_OPS for sequence in (True, False)),
    *(reverse_case(op, 21, 6, 5, 7, 2, True) for op in RECURRENT_OPS),
    reverse_case("lstm", 2, 3, 2, 3, 1, True, states=2, fd=True, cuda=True),
    reverse_case("gru", 3, 5, 2, 4, 2, False, states=1, cuda=True),
    # bidirectional = true: torch's layout and `_reverse` parameters, 1 and 2 layers
    *(bidirectional_case(op, 2, 4, 3, 3, 2, sequence, fd=True)
      for op in RECURRENT_OPS for sequence in (True, False)),
    *(bidirectional_case(op, 3, 5, 4, 2, 1, True) for op in RECURRENT_OPS),
    bidirectional_case("lstm", 21, 6, 5, 7, 2, True),
    bidirectional_case("lstm", 2, 3, 2, 3, 2, True, states=2, fd=True, cuda=True),
    bidirectional_case("gru", 2, 3, 2, 3, 1, False, states=1, fd=True, cuda=True),
    bidirectional_case("rnn", 2, 3, 2, 3, 2, True, states=1, grad_inputs=(1,), cuda=True),
    bidirectional_case("gru", 2, 3, 2, 2, 2, False, cuda=True),
    # dropout = p between layers: the factors re-derived from the harness's seed
    *(dropout_recurrent_case(op, 2, 3, 3, 3, 2, sequence, 0.4, fd=True)
      for op in RECURRENT_OPS for sequence in (True, False)),
    dropout_recurrent_case("lstm", 3, 4, 2, 3, 3, True, 0.5, states=2, fd=True, cuda=True),
    dropout_recurrent_case("gru", 2, 3, 2, 2, 2, True, 0.3, bidirectional=True, fd=True, cuda=True),
    dropout_recurrent_case("rnn", 2, 3, 2, 3, 2, False, 0.5, states=1, cuda=True),
    dropout_recurrent_case("lstm", 21, 6, 5, 7, 2, True, 0.2),
    # in evaluation nothing is dropped: torch's stack as is
    Case("lstm", {"hidden": 3, "layers": 2, "sequence": True, "dropout": 0.5}, [(2, 4, 3)], torch_recurrent("lstm"),
         training=False, id="lstm-dropout0.5-eval"),
]


# ---- layout ----------------------------------------------------------------------------------
# The kernels see the attrs the shape rule wrote (positive axes, clamped bounds), as in a plan;
# the torch references slice with the attrs as written, so the rows check that rewriting too.

def _canonical(op, attrs, shapes):
    from tests.kernels.harness import in_types
    attrs = dict(attrs)
    OPS[op].shape(attrs, in_types(shapes))
    return attrs


def _slice(written):
    def reference(xs, ps, a):
        index = [slice(None)] * xs[0].dim()
        index[written["axis"]] = slice(written["start"], written["end"], written["step"])
        return xs[0][tuple(index)]
    return reference


def slice_case(shape, axis=1, start=0, end=None, step=1, **kw):
    written = {"axis": axis, "start": start, "end": end, "step": step}
    return Case("slice", _canonical("slice", written, [shape]), [shape], _slice(written), **kw)


LAYOUT = [
    slice_case((2, 30, 7, 7), 1, 0, 10, id="slice-yolo-boxes"),
    slice_case((2, 30, 7, 7), 1, 10, 30, id="slice-yolo-classes"),
    slice_case((3, 8), -1, -3, id="slice-last-three"),
    slice_case((2, 3, 9), 2, 1, 8, 3, id="slice-step"),
    slice_case((2, 3, 10), 2, 1, None, 3, id="slice-step-to-the-end"),
    slice_case((2, 4, 5, 6), 3, 2, 100, id="slice-end-clamped"),
    slice_case((2, 4, 5), 1, -100, 2, id="slice-start-clamped"),
    slice_case((2, 5, 3), 1, 1, 5, 2, fd=True, id="fd-slice-step"),
    slice_case((2, 3, 7), -1, 2, 6, 3, cuda=True, id="cuda-slice-step"),
    slice_case((2, 4, 3, 2), 1, 1, 3, cuda=True, id="cuda-slice-channels"),
]


def _transpose(written):
    return lambda xs, ps, a: xs[0].transpose(written["axis0"], written["axis1"])


def _permute(written):
    return lambda xs, ps, a: xs[0].permute(0, *written["order"])


def transpose_case(shape, axis0, axis1, **kw):
    written = {"axis0": axis0, "axis1": axis1}
    return Case("transpose", _canonical("transpose", written, [shape]), [shape], _transpose(written), **kw)


def permute_case(shape, order, **kw):
    written = {"order": tuple(order)}
    return Case("permute", _canonical("permute", written, [shape]), [shape], _permute(written), **kw)


LAYOUT += [
    transpose_case((2, 3, 5), 1, 2, id="transpose-sequence"),
    transpose_case((2, 3, 4, 5), -1, -2, id="transpose-last-two"),
    transpose_case((2, 3, 4, 5), 3, 1),
    transpose_case((2, 2, 3, 4), 1, 3, fd=True, id="fd-transpose"),
    transpose_case((2, 3, 2, 4), 2, -1, cuda=True, id="cuda-transpose"),
    permute_case((2, 3, 4, 5), (2, 3, 1), id="permute-nchw-to-nhwc"),
    permute_case((2, 4, 5, 3), (-1, 1, 2), id="permute-nhwc-to-nchw"),
    permute_case((2, 3, 4), (1, 2), id="permute-identity"),
    permute_case((2, 2, 3, 4, 5), (4, 2, 1, 3)),
    permute_case((2, 2, 3, 4), (3, 1, 2), fd=True, id="fd-permute"),
    permute_case((2, 3, 2, 4), (2, 3, 1), cuda=True, id="cuda-permute"),
    permute_case((3, 5), (1,), cuda=True, id="cuda-permute-rank2"),
]


def _stopped(xs, ps, a):
    return xs[0].detach() + 0 * xs[0]      # torch's detach, with a (zero) gradient to compare


# The plan never runs these backward passes (grad_inputs is empty); the kernel still writes the
# zero gradient a caller asking for one would get. The finite-difference rows differentiate
# nothing: the forward is the identity, whose derivative the op deliberately does not pass on.
LAYOUT += [
    Case("stop_gradient", {}, [(2, 3, 4, 4)], _stopped),
    Case("detach", {}, [(3, 5)], _stopped),
    Case("stop_gradient", {}, [(2, 3)], _stopped, fd=True, grad_inputs=(), vs_torch=False),
    Case("detach", {}, [(2, 3)], _stopped, fd=True, grad_inputs=(), vs_torch=False),
    Case("stop_gradient", {}, [(2, 3, 2)], _stopped, cuda=True),
    Case("detach", {}, [(2, 3)], _stopped, cuda=True),
]


# ---- elementwise -----------------------------------------------------------------------------

def _positive(*shapes):
    """Inputs away from 0 and positive: log, sqrt and division stay finite and smooth."""
    return lambda rng: [np.abs(rng.standard_normal(s)) + 0.5 for s in shapes]


def _numerator_and_denominator(a_shape, b_shape):
    """div's inputs: any numerator, a denominator at least 0.5 away from 0 (either sign)."""
    def make(rng):
        b = rng.standard_normal(b_shape)
        return [rng.standard_normal(a_shape), np.sign(b) * (np.abs(b) + 0.5)]
    return make


def _unary(fn):
    return lambda xs, ps, a: fn(xs[0])


def _clamp(xs, ps, a):
    return torch.clamp(xs[0], min=a["min"], max=a["max"])


def _relu6(xs, ps, a):
    return F.relu6(xs[0])


def _mean_of(xs, ps, a):
    return torch.stack(xs).mean(0)


def _reduce(fn):
    return lambda xs, ps, a: fn(xs[0], dim=a["axes"], keepdim=a["keepdims"])


_exp, _log, _sqrt = _unary(torch.exp), _unary(torch.log), _unary(torch.sqrt)
_square, _abs = _unary(torch.square), _unary(torch.abs)
_mul, _sub, _div = (lambda xs, ps, a: xs[0] * xs[1]), (lambda xs, ps, a: xs[0] - xs[1]), \
    (lambda xs, ps, a: xs[0] / xs[1])
_reduce_sum, _reduce_mean = _reduce(torch.sum), _reduce(torch.mean)


def _scale(xs, ps, a):
    return xs[0] * a["factor"]


def _shift(xs, ps, a):
    return xs[0] + a["offset"]


def _clamp_attrs(low=None, high=None):
    return {"min": low, "max": high}


def _axes(*axes, keepdims=False):
    return {"axes": axes, "keepdims": keepdims}


# Broadcast pairs: per channel, per position, a scalar per sample, either side broadcast, both.
_BROADCASTS = [
    [(2, 3, 4, 4), (2, 3, 1, 1)],
    [(2, 3, 1, 1), (2, 3, 4, 4)],
    [(2, 1, 4, 5), (2, 3, 1, 5)],
    [(3, 6), (3, 1)],
    [(2, 4, 3), (2, 4, 3)],
]

ELEMENTWISE = [
    Case("exp", {}, [(2, 3, 4, 4)], _exp),
    Case("log", {}, [(2, 3, 4, 4)], _log, make_inputs=_positive((2, 3, 4, 4))),
    Case("sqrt", {}, [(3, 7)], _sqrt, make_inputs=_positive((3, 7))),
    Case("square", {}, [(2, 3, 5)], _square),
    Case("abs", {}, [(2, 3, 4, 4)], _abs),
    Case("scale", {"factor": 0.5}, [(2, 3, 4, 4)], _scale),
    Case("scale", {"factor": -3.0}, [(4, 5)], _scale),
    Case("shift", {"offset": 1.5}, [(2, 3, 4, 4)], _shift),
    Case("clamp", _clamp_attrs(-0.5, 0.7), [(2, 3, 4, 4)], _clamp),
    Case("clamp", _clamp_attrs(low=0.0), [(3, 8)], _clamp),
    Case("clamp", _clamp_attrs(high=0.2), [(3, 8)], _clamp),
    Case("relu6", {}, [(2, 3, 4, 4)], _relu6, make_inputs=lambda rng: [rng.standard_normal((2, 3, 4, 4)) * 5]),
    *(Case(op, {}, shapes, fn, make_inputs=_numerator_and_denominator(*shapes) if op == "div" else None)
      for op, fn in (("mul", _mul), ("sub", _sub), ("div", _div)) for shapes in _BROADCASTS),
    Case("mul", {}, [(2, 3, 4), (2, 3, 4)], _mul, grad_inputs=(1,), id="mul-frozen-input"),
    Case("mean", {}, [(2, 3, 4, 4), (2, 3, 4, 4)], _mean_of),
    Case("mean", {}, [(3, 5), (3, 5), (3, 5)], _mean_of),
    Case("mean", {}, [(3, 5), (3, 5), (3, 5)], _mean_of, grad_inputs=(0, 2), id="mean-frozen-input"),
    Case("reduce_sum", _axes(1), [(3, 7)], _reduce_sum),
    Case("reduce_sum", _axes(2, 3, keepdims=True), [(2, 3, 4, 5)], _reduce_sum),
    Case("reduce_sum", _axes(1, 3), [(2, 3, 4, 5)], _reduce_sum),
    Case("reduce_mean", _axes(1), [(2, 3, 4, 5)], _reduce_mean),
    Case("reduce_mean", _axes(2, 3, keepdims=True), [(2, 3, 4, 5)], _reduce_mean),
    Case("reduce_mean", _axes(2), [(2, 6, 5)], _reduce_mean),
    # finite differences
    Case("exp", {}, [(3, 5)], _exp, fd=True),
    Case("log", {}, [(3, 5)], _log, make_inputs=_positive((3, 5)), fd=True),
    Case("sqrt", {}, [(3, 5)], _sqrt, make_inputs=_positive((3, 5)), fd=True),
    Case("square", {}, [(3, 5)], _square, fd=True),
    Case("abs", {}, [(3, 5)], _abs, fd=True),
    Case("scale", {"factor": 0.5}, [(3, 5)], _scale, fd=True),
    Case("shift", {"offset": -2.0}, [(3, 5)], _shift, fd=True),
    Case("clamp", _clamp_attrs(-0.5, 0.5), [(3, 5)], _clamp, fd=True),
    Case("relu6", {}, [(3, 5)], _relu6, make_inputs=lambda rng: [rng.standard_normal((3, 5)) * 5], fd=True),
    Case("mul", {}, [(2, 3, 2), (2, 3, 1)], _mul, fd=True),
    Case("sub", {}, [(2, 1, 2), (2, 3, 2)], _sub, fd=True),
    Case("div", {}, [(2, 3, 2), (2, 1, 2)], _div, make_inputs=_numerator_and_denominator((2, 3, 2), (2, 1, 2)),
         fd=True),
    Case("mean", {}, [(2, 5), (2, 5), (2, 5)], _mean_of, fd=True),
    Case("reduce_sum", _axes(2, keepdims=True), [(2, 3, 4)], _reduce_sum, fd=True),
    Case("reduce_mean", _axes(1, 2), [(2, 3, 4)], _reduce_mean, fd=True),
    # CUDA against CPU
    Case("exp", {}, [(2, 3, 2)], _exp, cuda=True),
    Case("log", {}, [(2, 3, 2)], _log, make_inputs=_positive((2, 3, 2)), cuda=True),
    Case("sqrt", {}, [(3, 4)], _sqrt, make_inputs=_positive((3, 4)), cuda=True),
    Case("square", {}, [(3, 4)], _square, cuda=True),
    Case("abs", {}, [(3, 4)], _abs, cuda=True),
    Case("scale", {"factor": 0.5}, [(3, 4)], _scale, cuda=True),
    Case("shift", {"offset": 2.0}, [(3, 4)], _shift, cuda=True),
    Case("clamp", _clamp_attrs(-0.5, 0.5), [(3, 4)], _clamp, cuda=True),
    Case("clamp", _clamp_attrs(high=0.0), [(3, 4)], _clamp, cuda=True),
    Case("relu6", {}, [(3, 4)], _relu6, make_inputs=lambda rng: [rng.standard_normal((3, 4)) * 5], cuda=True),
    Case("mul", {}, [(2, 3, 2, 2), (2, 3, 1, 1)], _mul, cuda=True),
    Case("mul", {}, [(2, 1, 3), (2, 2, 1)], _mul, cuda=True),
    Case("sub", {}, [(2, 1, 2), (2, 3, 2)], _sub, cuda=True),
    Case("div", {}, [(2, 3, 2), (2, 3, 1)], _div, make_inputs=_numerator_and_denominator((2, 3, 2), (2, 3, 1)),
         cuda=True),
    Case("mean", {}, [(2, 3), (2, 3), (2, 3)], _mean_of, grad_inputs=(0, 2), cuda=True),
    Case("reduce_sum", _axes(2, keepdims=True), [(2, 3, 4)], _reduce_sum, cuda=True),
    Case("reduce_mean", _axes(1, 3), [(2, 3, 2, 2)], _reduce_mean, cuda=True),
]


CASES = TENSOR + ACTIVATION + DENSE + CONV + LOSS + NORM + POOL + RECURRENT + LAYOUT + ELEMENTWISE



# ---- loss: smooth_l1, kl_gaussian, weighted (masked) losses ----------------------------------
# A weight (third input) multiplies each term; the mean divides by the number of terms, as
# torch's reduction='mean' of the weighted terms: (w * terms).mean(). The weight gets no gradient.

def _per_sample(w, like):
    """A per-sample weight [N] broadcast over the other axes of `like`."""
    return w.reshape(w.shape[0], *[1] * (like.dim() - w.dim())) if w.dim() == 1 else w


def _weighted_mse(xs, ps, a):
    pred, target, w = xs
    return (_per_sample(w, pred) * (pred - target) ** 2).mean()


def _weighted_bce(xs, ps, a):
    pred, target, w = xs
    return (_per_sample(w, pred) * F.binary_cross_entropy_with_logits(pred, target, reduction="none")).mean()


def _weighted_smooth_l1(xs, ps, a):
    pred, target, w = xs
    return (_per_sample(w, pred) * F.smooth_l1_loss(pred, target, beta=a["beta"], reduction="none")).mean()


def _weighted_cross_entropy(xs, ps, a):
    logits, labels, w = xs
    terms = F.cross_entropy(logits.movedim(a["class_axis"], 1), labels, reduction="none")
    return (_per_sample(w, terms) * terms).mean()


def _kl_gaussian(xs, ps, a):
    mu, logvar = xs
    return -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / mu.shape[0]


def _weighted_case(op, shape, weight_shape, attrs=None, **kw):
    """pred, target (probabilities for bce) and a weight in [0, 1) of weight_shape."""
    def make_inputs(rng):
        target = rng.random(shape) if op == "bce" else rng.standard_normal(shape)
        return [rng.standard_normal(shape), target, rng.random(weight_shape)]
    fn = {"mse": _weighted_mse, "bce": _weighted_bce, "smooth_l1": _weighted_smooth_l1}[op]
    return Case(op, attrs or ({"beta": 1.0} if op == "smooth_l1" else {}), [shape, shape, weight_shape], fn,
                make_inputs=make_inputs, grad_inputs=(0, 1), **kw)


def _weighted_ce_case(logits_shape, weight_shape, class_axis=1, **kw):
    labels_shape = logits_shape[:class_axis] + logits_shape[class_axis + 1:]

    def make_inputs(rng):
        return [rng.standard_normal(logits_shape), rng.integers(0, logits_shape[class_axis], size=labels_shape),
                rng.random(weight_shape)]
    return Case("cross_entropy", {"class_axis": class_axis}, [logits_shape, labels_shape, weight_shape],
                _weighted_cross_entropy, in_dtypes=["float32", "int64", "float32"], make_inputs=make_inputs,
                grad_inputs=(0,), **kw)


def _smooth_l1_case(shape, beta=1.0, scale=1.0, **kw):
    def make_inputs(rng):   # scale spreads the differences over both sides of beta
        return [rng.standard_normal(shape) * scale, rng.standard_normal(shape) * scale]
    return Case("smooth_l1", {"beta": beta}, [shape, shape],
                lambda xs, ps, a: F.smooth_l1_loss(xs[0], xs[1], beta=a["beta"]), make_inputs=make_inputs, **kw)


def _kl_case(shape, **kw):
    return Case("kl_gaussian", {}, [shape, shape], _kl_gaussian, **kw)


LOSS_MORE = [
    _smooth_l1_case((4, 5)),
    _smooth_l1_case((2, 3, 4, 4), beta=0.5, scale=2.0),
    _smooth_l1_case((3, 6), beta=0.0, id="smooth_l1-beta-0-is-l1"),
    _smooth_l1_case((3, 7), grad_inputs=(0,), id="smooth_l1-target-without-gradient"),
    _smooth_l1_case((5, 10000), beta=0.3, atol=1e-6, id="smooth_l1-across-chunks"),
    _kl_case((6, 4)),
    _kl_case((3, 2, 5)),
    _kl_case((5, 10000), atol=1e-5, rtol=1e-4, id="kl_gaussian-across-chunks"),
    _weighted_case("mse", (4, 5), (4, 5), id="mse-weighted"),
    _weighted_case("mse", (3, 2, 4), (3,), id="mse-weighted-per-sample"),
    _weighted_case("bce", (4, 5), (4, 5), id="bce-weighted"),
    _weighted_case("bce", (3, 2, 4), (3,), id="bce-weighted-per-sample"),
    _weighted_case("smooth_l1", (4, 5), (4, 5), id="smooth_l1-weighted"),
    _weighted_case("smooth_l1", (3, 6), (3,), attrs={"beta": 0.5}, id="smooth_l1-weighted-per-sample"),
    _weighted_ce_case((6, 5), (6,), id="cross_entropy-weighted"),
    _weighted_ce_case((2, 4, 3, 5), (2, 3, 5), id="cross_entropy-weighted-per-pixel"),
    _weighted_ce_case((2, 4, 3, 5), (2,), id="cross_entropy-weighted-per-sample"),
    _weighted_ce_case((3, 4, 7), (3, 4), class_axis=2, id="cross_entropy-weighted-per-step"),
    _weighted_ce_case((3, 4, 7), (3,), class_axis=2, id="cross_entropy-weighted-per-sample-classes-last"),
    # finite differences
    _smooth_l1_case((2, 5), beta=0.5, fd=True),
    _kl_case((2, 5), fd=True),
    _weighted_case("mse", (2, 3), (2,), fd=True, id="fd-mse-weighted"),
    _weighted_case("bce", (2, 3), (2, 3), fd=True, id="fd-bce-weighted"),
    _weighted_case("smooth_l1", (2, 3), (2, 3), fd=True, id="fd-smooth_l1-weighted"),
    _weighted_ce_case((2, 3, 4), (2, 4), class_axis=1, fd=True, id="fd-cross_entropy-weighted"),
    # CUDA against CPU
    _smooth_l1_case((3, 4), beta=0.5, cuda=True),
    _smooth_l1_case((2, 5), beta=0.0, grad_inputs=(0,), cuda=True, id="smooth_l1-beta-0-cuda"),
    _kl_case((3, 4), cuda=True),
    _weighted_case("mse", (3, 4), (3,), cuda=True, id="mse-weighted-per-sample-cuda"),
    _weighted_case("bce", (3, 4), (3, 4), cuda=True, id="bce-weighted-cuda"),
    _weighted_case("smooth_l1", (3, 4), (3, 4), cuda=True, id="smooth_l1-weighted-cuda"),
    _weighted_ce_case((2, 3, 2, 2), (2, 2, 2), cuda=True, id="cross_entropy-weighted-per-pixel-cuda"),
    _weighted_ce_case((2, 3, 5), (2,), class_axis=2, cuda=True, id="cross_entropy-weighted-per-sample-cuda"),
]


# ---- random ----------------------------------------------------------------------------------
# torch cannot draw the kernels' noise, so the references re-derive it: the harness gives the
# kernel's Context the generator np.random.default_rng(0) (seed 0, the harness's default), whose
# first draw is the noise, standard_normal in float32 of the input's shape. In eval, sample is mu.
# FD rows: the noise is the same in every evaluation (same seed), so the op is smooth in mu, logvar.

def _noise(shape):
    return torch.from_numpy(np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32))


def _sample(training):
    def fn(xs, ps, a):
        mu, logvar = xs
        if not training:
            return mu + 0 * logvar
        return mu + torch.exp(0.5 * logvar) * _noise(mu.shape).to(mu.dtype)
    return fn


def _sample_case(shape, training=True, **kw):
    kw.setdefault("id", f"sample{shape}{'train' if training else 'eval'}")
    return Case("sample", {}, [shape, shape], _sample(training), training=training, **kw)


def _gaussian_like(xs, ps, a):
    return xs[0] * 0 + _noise(xs[0].shape).to(xs[0].dtype)


RANDOM = [
    _sample_case((4, 5)),
    _sample_case((2, 3, 4)),
    _sample_case((4, 5), training=False),
    _sample_case((3, 6), grad_inputs=(1,), id="sample-mu-without-gradient"),
    Case("gaussian_like", {}, [(3, 4)], _gaussian_like),
    Case("gaussian_like", {}, [(2, 3, 2)], _gaussian_like, training=False, id="gaussian_like-eval-draws-too"),
    # finite differences (float64: the noise drawn in float64 differs, but it is fixed by the seed)
    _sample_case((2, 3), fd=True, vs_torch=False, id="fd-sample-train"),
    _sample_case((2, 3), training=False, fd=True, vs_torch=False, id="fd-sample-eval"),
    Case("gaussian_like", {}, [(2, 3)], _gaussian_like, fd=True, vs_torch=False, id="fd-gaussian_like"),
    # CUDA against CPU: the same noise (drawn on the host from the same generator)
    _sample_case((3, 4), cuda=True, vs_torch=False, id="sample-train-cuda"),
    _sample_case((3, 4), training=False, cuda=True, vs_torch=False, id="sample-eval-cuda"),
    Case("gaussian_like", {}, [(2, 5)], _gaussian_like, cuda=True, vs_torch=False, id="gaussian_like-cuda"),
]


# ---- stochastic ------------------------------------------------------------------------------
# As for the random family, the references re-derive the kernels' draws: the harness's Context
# generator is np.random.default_rng(0), whose first draw is uniform float32, one number per
# sample (drop_path) or per weight (dropconnect_dense), kept where u >= p with factor 1/(1-p).
# With seed 0 and p = 0.5 a batch of 4 keeps samples 0, 1, 2 and drops sample 3: both kinds are
# checked. In eval both ops are their deterministic layer. FD rows: the draws are the same in
# every evaluation (same seed), so the op is linear in x (and in the weight).

def _factors(shape, p):
    u = torch.from_numpy(np.random.default_rng(0).random(tuple(shape), dtype=np.float32))
    return (u >= p).to(torch.float32) / (1 - p) if p < 1 else torch.zeros(tuple(shape))


def _drop_path(training):
    def fn(xs, ps, a):
        x = xs[0]
        if not training:
            return x * 1
        return x * _factors((x.shape[0],), a["p"]).to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
    return fn


def _drop_path_case(shape, p, training=True, **kw):
    kw.setdefault("id", f"drop_path{shape}p{p}{'train' if training else 'eval'}")
    return Case("drop_path", {"p": p}, [shape], _drop_path(training), training=training, **kw)


def _dropconnect(training):
    def fn(xs, ps, a):
        w = ps["weight"]
        if training:
            w = w * _factors(tuple(w.shape), a["p"]).to(w.dtype)
        x = xs[0].reshape(-1, w.shape[1])
        out = F.linear(x, w, ps.get("bias"))
        return out.reshape(*xs[0].shape[:-1], -1) if xs[0].dim() == 3 else out
    return fn


def _dropconnect_case(shape, units, p=0.5, training=True, bias=True, **kw):
    kw.setdefault("id", f"dropconnect_dense{shape}u{units}p{p}{'train' if training else 'eval'}"
                        f"{'' if bias else '-nobias'}")
    return Case("dropconnect_dense", {"units": units, "p": p, "bias": bias}, [shape], _dropconnect(training),
                training=training, **kw)


STOCHASTIC = [
    _drop_path_case((4, 3, 2, 2), 0.5),
    _drop_path_case((4, 5), 0.5),
    _drop_path_case((6, 3, 4), 0.2),
    _drop_path_case((4, 3), 0.0),
    _drop_path_case((4, 3), 1.0),
    _drop_path_case((4, 3, 2, 2), 0.5, training=False),
    _dropconnect_case((4, 6), 5),
    _dropconnect_case((4, 6), 5, p=0.3, bias=False),
    _dropconnect_case((3, 2, 2, 2), 4),
    _dropconnect_case((2, 3, 6), 5),
    _dropconnect_case((4, 6), 5, training=False),
    _dropconnect_case((4, 6), 5, grad_inputs=(), id="dropconnect_dense-no-input-grad"),
    # finite differences
    _drop_path_case((4, 3), 0.5, fd=True, vs_torch=False, id="fd-drop_path-train"),
    _drop_path_case((2, 3), 0.5, training=False, fd=True, vs_torch=False, id="fd-drop_path-eval"),
    _dropconnect_case((3, 4), 3, fd=True, vs_torch=False, id="fd-dropconnect_dense-train"),
    _dropconnect_case((3, 4), 3, training=False, fd=True, vs_torch=False, id="fd-dropconnect_dense-eval"),
    # CUDA against CPU: the same draws (made on the host from the same generator)
    _drop_path_case((4, 3, 2), 0.5, cuda=True, vs_torch=False, id="drop_path-train-cuda"),
    _drop_path_case((2, 3), 0.5, training=False, cuda=True, vs_torch=False, id="drop_path-eval-cuda"),
    _dropconnect_case((3, 4), 3, cuda=True, vs_torch=False, id="dropconnect_dense-train-cuda"),
    _dropconnect_case((3, 4), 3, training=False, bias=False, cuda=True, vs_torch=False,
                      id="dropconnect_dense-eval-cuda"),
]

CASES = CASES + LOSS_MORE + RANDOM + STOCHASTIC


# ---- roi (roi_pool, roi_align: torchvision.ops semantics, written out in plain torch) ----------

def _c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _roi_pool(xs, ps, a):
    """torchvision.ops.roi_pool: the scaled box rounded to cells, floor/ceil bin edges, max per bin."""
    x, rois = xs
    (oh, ow), s = a["output"], a["scale"]
    height, width = x.shape[2], x.shape[3]
    out = []
    for box in rois.detach().tolist():
        b = int(box[0])
        sw, sh, ew, eh = (_c_round(v * s) for v in box[1:])
        bin_h, bin_w = max(eh - sh + 1, 1) / oh, max(ew - sw + 1, 1) / ow
        bins = []
        for ph in range(oh):
            h0 = min(max(math.floor(ph * bin_h) + sh, 0), height)
            h1 = min(max(math.ceil((ph + 1) * bin_h) + sh, 0), height)
            for pw in range(ow):
                w0 = min(max(math.floor(pw * bin_w) + sw, 0), width)
                w1 = min(max(math.ceil((pw + 1) * bin_w) + sw, 0), width)
                if h1 <= h0 or w1 <= w0:
                    bins.append(x.new_zeros(x.shape[1]))
                else:
                    bins.append(x[b, :, h0:h1, w0:w1].amax(dim=(1, 2)))
        out.append(torch.stack(bins, 1).reshape(x.shape[1], oh, ow))
    return torch.stack(out)


def _bilinear_taps(y, x, height, width):
    """torchvision's roi_align bilinear interpolation: [(weight, row, col)], empty outside the map."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= height - 1:
        yl = yh = height - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= width - 1:
        xl = xh = width - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    return [((1 - ly) * (1 - lx), yl, xl), ((1 - ly) * lx, yl, xh), (ly * (1 - lx), yh, xl), (ly * lx, yh, xh)]


def _roi_align(xs, ps, a):
    """torchvision.ops.roi_align: a mean of bilinear samples on a regular grid in each bin."""
    x, rois = xs
    (oh, ow), s, ratio, aligned = a["output"], a["scale"], a["sampling_ratio"], a["aligned"]
    height, width = x.shape[2], x.shape[3]
    offset = 0.5 if aligned else 0.0
    out = []
    for box in rois.detach().tolist():
        b = int(box[0])
        sx, sy = box[1] * s - offset, box[2] * s - offset
        bw, bh = box[3] * s - offset - sx, box[4] * s - offset - sy
        if not aligned:
            bw, bh = max(bw, 1.0), max(bh, 1.0)
        bin_h, bin_w = bh / oh, bw / ow
        gy = ratio if ratio > 0 else math.ceil(bh / oh)
        gx = ratio if ratio > 0 else math.ceil(bw / ow)
        count = max(gy * gx, 1)
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                acc = x.new_zeros(x.shape[1])
                for iy in range(gy):
                    y = sy + ph * bin_h + (iy + 0.5) * bin_h / gy
                    for ix in range(gx):
                        xx = sx + pw * bin_w + (ix + 0.5) * bin_w / gx
                        for w, r, c in _bilinear_taps(y, xx, height, width):
                            acc = acc + w * x[b, :, r, c]
                bins.append(acc / count)
        out.append(torch.stack(bins, 1).reshape(x.shape[1], oh, ow))
    return torch.stack(out)


def _roi_inputs(x_shape, n_boxes, image_size, seed_offset=0):
    """Feature maps and [R, 5] boxes (batch index, x1, y1, x2, y2) in image coordinates, some
    reaching past the image's edge and some thinner than a cell."""
    def make(rng):
        x = rng.standard_normal(x_shape)
        rng = np.random.default_rng(rng.integers(1 << 30) + seed_offset)
        b = rng.integers(0, x_shape[0], n_boxes)
        x1 = rng.uniform(-2, image_size * 0.7, n_boxes)
        y1 = rng.uniform(-2, image_size * 0.7, n_boxes)
        x2 = x1 + rng.uniform(0.3, image_size * 0.6, n_boxes)
        y2 = y1 + rng.uniform(0.3, image_size * 0.6, n_boxes)
        return [x.astype(np.float32), np.stack([b, x1, y1, x2, y2], 1).astype(np.float32)]
    return make


def _roi_case(op, attrs, x_shape, n_boxes, image_size, **kw):
    return Case(op, attrs, [x_shape, Rows((n_boxes, 5))], _roi_pool if op == "roi_pool" else _roi_align,
                make_inputs=_roi_inputs(x_shape, n_boxes, image_size), grad_inputs=(0,), **kw)


def _align(output, scale=1.0, sampling_ratio=-1, aligned=False):
    return {"output": output, "scale": scale, "sampling_ratio": sampling_ratio, "aligned": aligned}


ROI = [
    _roi_case("roi_pool", {"output": (2, 2), "scale": 0.5}, (2, 3, 6, 7), 4, 14),
    _roi_case("roi_pool", {"output": (3, 2), "scale": 1.0}, (1, 2, 5, 5), 3, 5),
    _roi_case("roi_pool", {"output": (4, 4), "scale": 0.25}, (2, 2, 4, 4), 3, 16),
    _roi_case("roi_align", _align((2, 2), 0.5), (2, 3, 6, 7), 4, 14),
    _roi_case("roi_align", _align((2, 3), 0.5, sampling_ratio=2), (2, 2, 6, 6), 3, 12),
    _roi_case("roi_align", _align((2, 2), 0.5, aligned=True), (2, 3, 6, 7), 4, 14),
    _roi_case("roi_align", _align((3, 3), 1.0, sampling_ratio=1, aligned=True), (1, 2, 5, 4), 3, 5),
    # finite differences (float64; max and bilinear taps are piecewise linear in the maps)
    _roi_case("roi_pool", {"output": (2, 2), "scale": 0.5}, (2, 2, 4, 4), 3, 8, fd=True, id="fd-roi_pool"),
    _roi_case("roi_align", _align((2, 2), 0.5), (2, 2, 4, 4), 3, 8, fd=True, id="fd-roi_align"),
    _roi_case("roi_align", _align((2, 2), 0.5, 2, True), (1, 2, 4, 4), 2, 8, fd=True, id="fd-roi_align-aligned"),
    # CUDA against CPU
    _roi_case("roi_pool", {"output": (2, 2), "scale": 0.5}, (2, 2, 4, 4), 3, 8, cuda=True, id="roi_pool-cuda"),
    _roi_case("roi_align", _align((2, 2), 0.5), (2, 2, 4, 4), 3, 8, cuda=True, id="roi_align-cuda"),
    _roi_case("roi_align", _align((2, 2), 0.5, 2, True), (1, 2, 4, 4), 2, 8, cuda=True,
              id="roi_align-aligned-cuda"),
]

CASES = CASES + ROI

def rows(*ops, family=None):
    """The table's rows for these ops, or for every op of a family (dslc.ops OpDef.family)."""
    return [c for c in CASES if c.op in ops or (family is not None and OPS[c.op].family == family)]
