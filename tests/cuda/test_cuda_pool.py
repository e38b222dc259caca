"""CUDA pool-family kernels against the CPU kernels (in Numba's CUDA simulator without a GPU).

Shapes are tiny: the simulator runs every GPU thread as a Python thread.
"""
import pytest
import torch
import torch.nn.functional as F

from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import Case


def _window(kernel, stride, pad, ceil=False):
    return dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil)


def _torch_maxpool(xs, ps, a):
    return F.max_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"])


def _torch_avgpool(xs, ps, a):
    return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"], count_include_pad=True)


def _torch_maxunpool(xs, ps, a):
    y, src = xs
    _, argmax = F.max_pool2d(src, a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"], return_indices=True)
    return F.max_unpool2d(y, argmax, a["kernel"], a["stride"], a["pad"], output_size=src.shape[-2:])


def _torch_global_avgpool(xs, ps, a):
    return xs[0].mean(dim=(2, 3))


def _torch_unpool(xs, ps, a):
    x = xs[0]
    n, c, h, w = x.shape
    sh, sw = a["scale"]
    out = torch.zeros(n, c, h * sh, w * sw, dtype=x.dtype)
    out[:, :, ::sh, ::sw] = x
    return out


def _torch_upsample(xs, ps, a):
    if a["mode"] == "nearest":
        return F.interpolate(xs[0], scale_factor=a["scale"], mode="nearest")
    return F.interpolate(xs[0], scale_factor=a["scale"], mode="bilinear", align_corners=False)


def _pooled_shape(x_shape, kernel, stride, pad, ceil=False):
    """The max-pool's output shape, as torch computes it."""
    return tuple(F.max_pool2d(torch.zeros(x_shape), kernel, stride, pad, ceil_mode=ceil).shape)


def out_shape(case):
    """The output shape, from the torch reference run on zeros."""
    return tuple(case.torch_fn([torch.zeros(s) for s in case.in_shapes], {}, case.attrs).shape)


X = (2, 2, 5, 5)
CASES = [
    Case("maxpool", _window((2, 2), (2, 2), (0, 0)), [X], _torch_maxpool, id="maxpool-2x2-floor"),
    # overlapping windows: an input that is the max of several windows gets all their gradients
    Case("maxpool", _window((3, 3), (1, 2), (1, 1)), [X], _torch_maxpool, id="maxpool-3x3-overlap-pad"),
    Case("avgpool", _window((3, 2), (2, 1), (1, 0)), [X], _torch_avgpool, id="avgpool-rect-pad"),
    # ceil mode: last windows overhang the map (and its padding); avgpool divides by the part inside
    Case("maxpool", _window((2, 2), (2, 2), (0, 0), ceil=True), [X], _torch_maxpool, id="maxpool-2x2-ceil"),
    Case("maxpool", _window((3, 2), (2, 2), (1, 1), ceil=True), [(1, 2, 6, 5)], _torch_maxpool,
         id="maxpool-ceil-pad"),
    Case("avgpool", _window((3, 3), (2, 2), (1, 1), ceil=True), [(1, 2, 6, 5)], _torch_avgpool,
         id="avgpool-ceil-pad"),
    Case("avgpool", _window((2, 3), (2, 2), (0, 1), ceil=True), [X], _torch_avgpool, id="avgpool-ceil-rect"),
    Case("global_avgpool", {}, [(2, 3, 3, 4)], _torch_global_avgpool, id="global_avgpool"),
    Case("maxunpool", _window((2, 2), (2, 2), (0, 0)), [_pooled_shape(X, (2, 2), (2, 2), (0, 0)), X],
         _torch_maxunpool, grad_inputs=(0,), id="maxunpool-2x2"),
    # overlapping windows sharing an argmax: the later window's value wins, like torch
    Case("maxunpool", _window((3, 3), (1, 1), (1, 1)), [_pooled_shape(X, (3, 3), (1, 1), (1, 1)), X],
         _torch_maxunpool, grad_inputs=(0,), id="maxunpool-3x3-overlap"),
    # ceil mode: 6x6 pools to 3x3, the last windows overlapping the previous ones and the edge
    Case("maxunpool", _window((3, 3), (2, 2), (0, 0), ceil=True),
         [_pooled_shape((2, 2, 6, 6), (3, 3), (2, 2), (0, 0), ceil=True), (2, 2, 6, 6)], _torch_maxunpool,
         grad_inputs=(0,), id="maxunpool-3x3-ceil"),
    Case("unpool", {"scale": (2, 3)}, [(2, 2, 3, 2)], _torch_unpool, id="unpool"),
    Case("upsample", {"scale": (2, 3), "mode": "nearest"}, [(2, 2, 3, 2)], _torch_upsample, id="upsample-nearest"),
    Case("upsample", {"scale": (2, 2), "mode": "bilinear"}, [(2, 2, 3, 4)], _torch_upsample, id="upsample-bilinear"),
    Case("upsample", {"scale": (3, 2), "mode": "bilinear"}, [(1, 2, 2, 3)], _torch_upsample,
         id="upsample-bilinear-scale3"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cuda_matches_cpu(case):
    check_cuda_against_cpu(case, out_shape(case))
