"""CPU pool-family kernels against torch.nn.functional and against finite differences."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.runtime import jit
from dslc.runtime.kernel_api import Context
from tests.kernels.harness import Case, check_against_torch, check_finite_differences, make_kernel, run_kernel


def _window(kernel, stride, pad=(0, 0), ceil=False):
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


def maxpool_ties_case(x_shape, attrs):
    return maxpool_case(x_shape, attrs, make_inputs=_ties_nans_and_infinities(x_shape),
                        id=f"maxpool-ties-nans{list(x_shape)}{attrs}")


def avgpool_case(x_shape, attrs):
    return Case("avgpool", attrs, [x_shape],
                lambda xs, ps, a: F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], ceil_mode=a["ceil"],
                                               count_include_pad=True))


def global_avgpool_case(x_shape):
    return Case("global_avgpool", {}, [x_shape], lambda xs, ps, a: F.adaptive_avg_pool2d(xs[0], 1).flatten(1))


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
    gives no gradient to input 1 at all, so only input 0's gradient is compared with it."""
    return Case("maxunpool", attrs, [_pooled_shape(src_shape, attrs), src_shape], _torch_maxunpool, **kw)


def _torch_unpool(xs, ps, a):
    x = xs[0]
    sh, sw = a["scale"]
    n, c, h, w = x.shape
    out = x.new_zeros((n, c, h * sh, w * sw))
    out[:, :, ::sh, ::sw] = x
    return out


def unpool_case(x_shape, scale):
    return Case("unpool", {"scale": scale}, [x_shape], _torch_unpool)


def _torch_upsample(xs, ps, a):
    align_corners = False if a["mode"] == "bilinear" else None
    return F.interpolate(xs[0], scale_factor=tuple(map(float, a["scale"])), mode=a["mode"],
                         align_corners=align_corners)


def upsample_case(x_shape, scale, mode):
    return Case("upsample", {"scale": scale, "mode": mode}, [x_shape], _torch_upsample)


TORCH_CASES = [
    maxpool_case((2, 3, 7, 6), _window((2, 2), (2, 2))),                      # odd size: floor drops a row
    maxpool_case((2, 2, 9, 8), _window((3, 3), (2, 2), (1, 1))),              # ResNet stem pool
    maxpool_case((2, 2, 6, 5), _window((3, 3), (1, 1), (1, 1))),              # GoogLeNet branch pool
    maxpool_case((1, 3, 5, 7), _window((2, 3), (1, 2), (1, 1))),              # rectangular
    maxpool_case((2, 2, 8, 8), _window((3, 3), (3, 3))),
    # ceil mode: a last, partial window where floor mode drops the rest of the map
    maxpool_case((2, 3, 7, 6), _window((2, 2), (2, 2), ceil=True)),
    maxpool_case((2, 2, 8, 9), _window((3, 3), (2, 2), ceil=True)),           # SqueezeNet's pools
    maxpool_case((1, 2, 5, 7), _window((2, 3), (2, 2), (1, 1), ceil=True)),   # 5: a window would start in padding only
    maxpool_case((1, 2, 1, 3), _window((2, 2), (2, 2), ceil=True)),           # every window overhangs
    # the geometries with a plane function of their own, at the smallest shapes that select it
    maxpool_case((2, 3, 8, 6), _window((2, 2), (2, 2))),                      # 2x2 windows tile the image
    maxpool_case((2, 2, 3, 3), _window((3, 3), (1, 1), (1, 1))),              # 3x3 same: no interior run
    maxpool_case((2, 2, 4, 3), _window((3, 3), (1, 1), (1, 1))),              # 3x3 same: one interior output
    maxpool_case((1, 2, 2, 5), _window((3, 3), (1, 1), (1, 1))),              # too small for it: any-window loop
    maxpool_case((2, 3, 9, 11), _window((3, 3), (1, 1), (1, 1))),
    maxpool_ties_case((2, 3, 8, 6), _window((2, 2), (2, 2))),
    maxpool_ties_case((2, 3, 7, 9), _window((3, 3), (1, 1), (1, 1))),
    maxpool_ties_case((2, 3, 7, 9), _window((3, 3), (2, 2), (1, 1), ceil=True)),
    avgpool_case((2, 3, 7, 6), _window((2, 2), (2, 2))),
    avgpool_case((2, 2, 9, 8), _window((3, 3), (2, 2), (1, 1))),              # padding counts as zeros
    avgpool_case((2, 2, 6, 5), _window((3, 3), (1, 1), (1, 1))),
    avgpool_case((1, 2, 5, 7), _window((3, 2), (2, 1), (1, 0))),
    avgpool_case((2, 3, 8, 6), _window((2, 2), (2, 2))),                      # windows tile the image exactly
    # ceil mode: an overhanging window divides by its part inside the input and its padding
    avgpool_case((2, 3, 7, 6), _window((2, 2), (2, 2), ceil=True)),
    avgpool_case((1, 2, 6, 5), _window((3, 3), (2, 2), (1, 1), ceil=True)),
    avgpool_case((1, 2, 5, 7), _window((2, 3), (2, 2), (1, 1), ceil=True)),
    avgpool_case((2, 2, 8, 9), _window((3, 3), (2, 2), ceil=True)),
    global_avgpool_case((2, 3, 5, 4)),
    global_avgpool_case((3, 4, 1, 1)),
    global_avgpool_case((1, 2, 7, 3)),
    maxunpool_case((2, 3, 6, 5), _window((2, 2), (2, 2)), grad_inputs=(0,)),  # odd width: last column stays 0
    maxunpool_case((1, 2, 8, 6), _window((3, 2), (2, 2), (1, 0)), grad_inputs=(0,)),
    maxunpool_case((2, 2, 7, 8), _window((3, 3), (2, 2), ceil=True), grad_inputs=(0,)),
    maxunpool_case((2, 3, 6, 4), _window((2, 2), (2, 2)), grad_inputs=(0,)),
    # overlapping windows share argmaxes; the later window's value is written, as torch
    maxunpool_case((2, 2, 5, 6), _window((3, 3), (1, 1), (1, 1)), grad_inputs=(0,)),
    unpool_case((2, 3, 3, 4), (2, 2)),
    unpool_case((1, 2, 2, 3), (3, 2)),
    unpool_case((2, 2, 3, 3), (1, 2)),
    upsample_case((2, 3, 3, 4), (2, 2), "nearest"),
    upsample_case((1, 2, 2, 3), (3, 2), "nearest"),
    upsample_case((2, 3, 3, 4), (2, 2), "bilinear"),
    upsample_case((1, 2, 4, 3), (3, 2), "bilinear"),
    upsample_case((2, 2, 1, 3), (2, 3), "bilinear"),                          # height 1: both rows clamp
]

# Each finite-difference case runs the forward ~50 times per input in float64: tiny shapes only.
FD_CASES = [
    maxpool_case((1, 2, 5, 4), _window((3, 3), (2, 2), (1, 1))),
    avgpool_case((1, 2, 5, 4), _window((3, 3), (2, 2), (1, 1))),
    maxpool_case((1, 2, 5, 4), _window((2, 3), (2, 2), (1, 1), ceil=True)),
    maxpool_case((1, 2, 4, 4), _window((3, 3), (1, 1), (1, 1))),
    maxpool_case((1, 2, 4, 6), _window((2, 2), (2, 2))),
    avgpool_case((1, 2, 4, 6), _window((2, 2), (2, 2))),
    avgpool_case((1, 2, 6, 5), _window((3, 3), (2, 2), (1, 1), ceil=True)),
    global_avgpool_case((2, 2, 3, 2)),
    maxunpool_case((1, 2, 4, 5), _window((2, 2), (2, 2))),    # input 1 included: its gradient is 0
    unpool_case((1, 2, 2, 3), (2, 3)),
    upsample_case((1, 2, 2, 3), (2, 3), "nearest"),
    upsample_case((1, 2, 3, 2), (3, 2), "bilinear"),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_against_torch(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_finite_differences(case):
    check_finite_differences(case)


def test_maxunpool_fills_src_gradient_with_zeros():
    case = maxunpool_case((2, 2, 4, 6), _window((2, 2), (2, 2)))
    rng = np.random.default_rng(0)
    values, src = (rng.standard_normal(s).astype(np.float32) for s in case.in_shapes)
    gout = rng.standard_normal(src.shape).astype(np.float32)
    _, gxs, _, _ = run_kernel(case, [values, src], {}, src.shape, gout, np.float32)
    np.testing.assert_array_equal(gxs[1], 0)        # run_kernel hands in gradients filled with NaN


def test_maxpool_picks_first_maximum_of_ties():
    x = np.zeros((1, 1, 2, 4), dtype=np.float32)    # every window is a tie
    case = maxpool_case(x.shape, _window((2, 2), (2, 2)))
    gout = np.array([[[[1.0, 2.0]]]], dtype=np.float32)
    _, gxs, _, _ = run_kernel(case, [x], {}, gout.shape, gout, np.float32)
    np.testing.assert_array_equal(gxs[0], [[[[1, 0, 2, 0], [0, 0, 0, 0]]]])


# One case per plane function, each with both of its loops: the serial one and the `prange` one
# that kernels choose from PARALLEL_MIN_ELEMENTS up (the cases above are all below it).
PARALLEL_CASES = [
    maxpool_case((2, 3, 7, 9), _window((3, 3), (1, 1), (1, 1))),
    maxpool_case((2, 3, 8, 6), _window((2, 2), (2, 2))),
    maxpool_case((2, 3, 7, 9), _window((3, 3), (2, 2), (1, 1), ceil=True)),
    avgpool_case((2, 3, 8, 6), _window((2, 2), (2, 2))),
    avgpool_case((2, 3, 7, 9), _window((3, 3), (2, 2), (1, 1), ceil=True)),
    global_avgpool_case((2, 3, 5, 4)),
    maxunpool_case((2, 3, 6, 4), _window((2, 2), (2, 2)), grad_inputs=(0,)),
    maxunpool_case((2, 2, 5, 6), _window((3, 3), (1, 1), (1, 1)), grad_inputs=(0,)),
]


@pytest.mark.parametrize("case", PARALLEL_CASES, ids=str)
def test_serial_and_parallel_loops_agree(case):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in case.in_shapes]
    out_shape = tuple(case.torch_fn([torch.from_numpy(x) for x in xs], {}, case.attrs).shape)
    gout = rng.standard_normal(out_shape).astype(np.float32)
    kernel = make_kernel(case, xs, {}, out_shape, "float32")
    results = []
    for parallel in (False, True):
        kernel.parallel = parallel
        ws = {n: np.zeros(s, d) for n, (s, d) in kernel.workspace().items()}
        out = np.full(out_shape, np.nan, np.float32)
        kernel.forward(Context(), xs, {}, out, ws)
        gx = np.full(xs[0].shape, np.nan, np.float32)
        kernel.backward(Context(), xs, {}, out, gout, [gx] + [None] * (len(xs) - 1), {}, ws)
        results.append((out, gx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_pools_go_parallel_from_the_elementwise_threshold():
    window = _window((2, 2), (2, 2))
    for width, parallel in ((jit.PARALLEL_MIN_ELEMENTS // 2 - 2, False), (jit.PARALLEL_MIN_ELEMENTS // 2, True)):
        x = np.empty((1, 1, 2, width), np.float32)
        for case in (maxpool_case(x.shape, window), avgpool_case(x.shape, window)):
            assert make_kernel(case, [x], {}, (1, 1, 1, width // 2), "float32").parallel == parallel
