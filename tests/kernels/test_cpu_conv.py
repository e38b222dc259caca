"""CPU conv / deconv kernels against torch.nn.functional and finite differences, in every lowering,
and the lowerings' own machinery."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dslc.runtime.cpu.conv
from dslc.runtime.cpu import conv_winograd
from dslc.runtime.cpu.conv_geometry import window_offsets
from dslc.runtime.kernel_api import Context, NodeSpec
from tests.kernels.harness import check_against_torch, check_finite_differences, check_nan_propagates
from tests.ops_cases import conv_attrs, rows, torch_conv

DEFAULT_SHIFTED_PAYS = dslc.runtime.cpu.conv.shifted_pays
DEFAULT_WINOGRAD_PAYS = dslc.runtime.cpu.conv.winograd_pays
DEFAULT_UNROLLED_PAYS = dslc.runtime.cpu.conv.unrolled_pays
DEFAULT_GATHER_PAYS = dslc.runtime.cpu.conv.gather_pays


# The conv and deconv rows of the shared table (tests/ops_cases.py) run here rather than in
# test_op_cases.py: the fixture below runs each under every lowering.
CASES = [c for c in rows("conv", "deconv") if c.vs_torch]
FD_CASES = [c for c in rows("conv", "deconv") if c.fd]


LOWERINGS = ["one-worker", "all-workers", "shifted-all-workers", "winograd-all-workers", "unrolled-all-workers",
             "split-samples", "shifted-split-samples", "winograd-split-samples"]
# More threads than any case's batch: every sample is shared out between workers (the forward
# passes' *_split functions), as at batch 1 on two cores, with uneven and empty shares.
SPLIT_THREADS = 16


@pytest.fixture(autouse=True, params=LOWERINGS)
def workers(request, monkeypatch):
    """Every case runs with the conv on one worker and on all of them: these tiny layers
    would otherwise stay under PARALLEL_MIN_FLOPS and never split the batch. The third run
    takes the shifted-window path wherever it applies (stride 1, not pointwise), the fourth
    Winograd wherever it applies (3x3, stride 1, one group), the fifth unrolled weights wherever
    they apply (one group, any geometry); the first two take shifted windows and Winograd where
    shifted_pays / winograd_pays say so, which for these few channels is never Winograd, and
    never unrolled weights, which would otherwise take every case whose input grid is no bigger
    than its kernel away from the chunked im2col path those cases are there to drive.
    im2col builds its columns by the loops over grid rows in the first run and by the table of
    offsets in every other (gather_pays would give nearly all these small grids the table).
    The split-samples runs ask for more threads than any case has samples (SPLIT_THREADS), so
    that the forward pass shares every sample between workers, in the same three lowerings
    (Numba's prange runs the extra workers' shares on the threads it has)."""
    lowering = request.param
    if lowering != "one-worker":
        monkeypatch.setattr(dslc.runtime.cpu.conv, "parallel_gemm", lambda flops: True)
    if lowering.endswith("split-samples"):
        monkeypatch.setattr(dslc.runtime.cpu.conv.numba, "get_num_threads", lambda: SPLIT_THREADS)
    monkeypatch.setattr(dslc.runtime.cpu.conv, "gather_pays", lambda grid_w: lowering != "one-worker")
    if lowering.startswith("shifted-"):
        monkeypatch.setattr(dslc.runtime.cpu.conv, "shifted_pays", lambda columns, channels, features, samples: True)
    if lowering.startswith("winograd-"):
        monkeypatch.setattr(dslc.runtime.cpu.conv, "winograd_pays", lambda channels, rows, positions: True)
    monkeypatch.setattr(dslc.runtime.cpu.conv, "unrolled_pays",
                        lambda positions, taps, groups, elements, samples: request.param == "unrolled-all-workers"
                        and groups == 1)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_torch(case):
    check_against_torch(case)


# float64 finite differences take a second or two per case: the inner loop (-m "not slow") runs
# them under the first lowering only. The split-samples runs change the forward pass only
# (and Winograd's input gradient, which test_against_torch checks): no finite differences.
FD_LOWERINGS = [w for w in LOWERINGS if not w.endswith("split-samples")]


@pytest.mark.parametrize("workers", [FD_LOWERINGS[0], *(pytest.param(w, marks=pytest.mark.slow)
                                                        for w in FD_LOWERINGS[1:])], indirect=True)
@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_finite_differences(case, workers):
    check_finite_differences(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.fuse == "relu" and not c.fd], ids=str)
def test_fused_relu_keeps_nan(case, request):
    """relu(NaN) is NaN in every lowering's epilogue (torch's too). Winograd may spread it over
    a tile, and the unrolled weights to every output of the sample (their zeros multiply it)."""
    lowering = request.node.callspec.params["workers"]
    check_nan_propagates(case, may_spread=lowering.startswith(("winograd-", "unrolled-")))


@pytest.mark.parametrize("x_shape,channels,kernel,pad,path", [
    ((64, 128, 16, 16), 128, (3, 3), (1, 1), "winograd"),   # many channels: Winograd
    ((64, 512, 4, 4), 512, (3, 3), (1, 1), "winograd"),
    ((16, 512, 4, 4), 512, (3, 3), (1, 1), "im2col"),       # ... too few positions for its weight transform
    ((1, 128, 16, 16), 128, (3, 3), (1, 1), "winograd"),    # batch 1: only on grids wide enough
    ((1, 256, 8, 8), 256, (3, 3), (1, 1), "im2col"),        # ... nor shifted windows, whose taps cost as much
    ((4, 256, 8, 8), 256, (5, 5), (2, 2), "shifted"),       # ... but from enough samples
    ((1, 48, 32, 32), 12, (3, 3), (1, 1), "shifted"),
    ((64, 64, 32, 32), 64, (3, 3), (1, 1), "winograd"),     # ... on wide grids too (4x4 tiles)
    ((64, 32, 16, 16), 32, (3, 3), (1, 1), "shifted"),      # too few channels for Winograd
    ((64, 48, 32, 32), 12, (3, 3), (1, 1), "shifted"),      # few channels, wide grid: shifted windows
    ((64, 6, 14, 14), 16, (5, 5), (0, 0), "im2col"),        # LeNet's second conv: more features than channels
    ((32, 16, 32, 32), 32, (5, 5), (2, 2), "im2col"),       # GoogLeNet's 5x5 in 3a
    ((32, 32, 32, 32), 32, (5, 5), (2, 2), "shifted"),      # as many features as channels
    ((32, 3, 32, 32), 192, (3, 3), (1, 1), "im2col"),       # a stem on RGB
    ((64, 128, 4, 4), 128, (5, 5), (2, 2), "unrolled"),     # the kernel window covers the grid
    ((64, 512, 2, 2), 512, (3, 3), (1, 1), "unrolled"),     # ... (VGG's last layers on CIFAR)
    ((64, 256, 3, 3), 256, (3, 3), (1, 1), "unrolled"),
    ((64, 512, 4, 4), 512, (5, 5), (2, 2), "im2col"),       # ... but D would pass UNROLLED_MAX_ELEMENTS
    ((64, 512, 4, 4), 512, (3, 5), (1, 2), "im2col"),       # small grid, big taps: im2col chunks samples
    ((8, 512, 2, 2), 512, (3, 3), (1, 1), "im2col"),        # too few samples to spread D's build over
])
def test_path_choice(x_shape, channels, kernel, pad, path, monkeypatch):
    """Which lowering a stride-1 layer gets by default (see winograd_pays and shifted_pays)."""
    monkeypatch.setattr(dslc.runtime.cpu.conv, "shifted_pays", DEFAULT_SHIFTED_PAYS)
    monkeypatch.setattr(dslc.runtime.cpu.conv, "winograd_pays", DEFAULT_WINOGRAD_PAYS)
    monkeypatch.setattr(dslc.runtime.cpu.conv, "unrolled_pays", DEFAULT_UNROLLED_PAYS)
    n, c, h, w = x_shape
    out_h, out_w = h + 2 * pad[0] - kernel[0] + 1, w + 2 * pad[1] - kernel[1] + 1
    spec = NodeSpec(name="conv", op="conv", attrs=conv_attrs(channels, kernel, pad=pad), in_shapes=(x_shape,),
                    in_dtypes=("float32",), out_shape=(n, channels, out_h, out_w),
                    param_shapes={"weight": (channels, c, *kernel), "bias": (channels,)})
    kernel = dslc.runtime.cpu.conv.Conv(spec)
    assert kernel.lowering == path
    assert kernel.describe().startswith(f"conv {path}")


@pytest.mark.parametrize("batch,threads,split", [(1, 2, True), (3, 4, True), (2, 2, False), (64, 2, False),
                                                  (1, 1, False)])
def test_batches_smaller_than_the_threads_share_samples(batch, threads, split, monkeypatch):
    """Where a batch has fewer samples than there are threads, the forward pass shares each
    sample between all of them (split_samples), and the backward pass keeps one worker per
    sample (workers)."""
    monkeypatch.setattr(dslc.runtime.cpu.conv.numba, "get_num_threads", lambda: threads)
    spec = NodeSpec(name="conv", op="conv", attrs=conv_attrs(256, (3, 3), pad=(1, 1)), in_shapes=((batch, 256, 8, 8),),
                    in_dtypes=("float32",), out_shape=(batch, 256, 8, 8),
                    param_shapes={"weight": (256, 256, 3, 3), "bias": (256,)})
    kernel = dslc.runtime.cpu.conv.Conv(spec)
    assert kernel.split_samples == split
    assert kernel.threads == threads
    assert kernel.workers == min(batch, threads)


@pytest.mark.parametrize("grid_w,gathers", [(4, True), (8, True), (16, False), (32, False)])
def test_gather_choice(grid_w, gathers):
    """im2col goes through a table of offsets on short grid rows only (see gather_pays)."""
    assert DEFAULT_GATHER_PAYS(grid_w) == gathers


def test_window_offsets_match_the_geometry():
    """Each table entry is the input position a window tap reads, -1 in the padding: checked
    against the definition, on a geometry with stride, padding and dilation differing per axis."""
    geometry = image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = (7, 9, 3, 2, 2, 1, 1, 0, 2, 1, 3, 8)
    offsets = window_offsets(geometry)
    assert offsets.shape == (kh * kw, grid_h * grid_w)
    for i in range(kh):
        for j in range(kw):
            for oh in range(grid_h):
                for ow in range(grid_w):
                    ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                    inside = 0 <= ih < image_h and 0 <= iw < image_w
                    assert offsets[i * kw + j, oh * grid_w + ow] == (ih * image_w + iw if inside else -1)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_flipped_weights_are_the_forward_planes_permuted(tile):
    """F(2x2)'s input gradient reads the forward's transformed weights (conv_winograd._flip_planes):
    transforming the flipped kernel gives exactly those planes, permuted and transposed. F(4x4)
    has no such permutation and transforms the flipped kernel itself."""
    g_matrix = conv_winograd.ALGORITHMS[tile][1]
    planes = conv_winograd._flip_planes(g_matrix)
    if tile == 4:
        assert planes is None
        return
    features, channels, alpha = 5, 3, tile + 2
    weight = np.random.default_rng(0).standard_normal((features, channels, 9))
    scratch = np.empty((9 + 3 * alpha) * max(features, channels))
    forward = np.empty(alpha * alpha * features * channels)
    flipped = np.empty_like(forward)
    conv_winograd._transform_weights(weight, g_matrix, False, forward, scratch, 0, features)
    conv_winograd._transform_weights(weight, g_matrix, True, flipped, scratch, 0, channels)
    forward = forward.reshape(alpha * alpha, features, channels)
    flipped = flipped.reshape(alpha * alpha, channels, features)
    np.testing.assert_allclose(flipped, forward[planes].transpose(0, 2, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_shape,attrs,relu", [
    ((3, 3, 9, 10), conv_attrs(4, (3, 3), pad=(1, 1)), True),
    ((9, 4, 6, 6), conv_attrs(3, (3, 3), stride=(2, 2), pad=(1, 1), bias=False), True),
    ((2, 5, 4, 3), conv_attrs(3, (1, 1)), False),
    ((2, 4, 6, 5), conv_attrs(6, (3, 3), groups=2, bias=False), True),
    ((4, 3, 2, 2), conv_attrs(5, (3, 3), pad=(1, 1)), True),
], ids=["3x3", "stride2-nobias", "pointwise-no-relu", "groups2", "2x2-grid"])
def test_folded_batchnorm_matches_torch_eval(x_shape, attrs, relu):
    """An inference plan's conv -> batchnorm (-> relu) as one kernel (fuse_batchnorm): the
    batchnorm's parameters arrive as "batchnorm.<name>", and the output is torch's eval-mode
    batch_norm of the convolution, in every lowering (the fixture picks it)."""
    rng = np.random.default_rng(0)
    n, c, h, w = x_shape
    f, groups, (kh, kw) = attrs["channels"], attrs["groups"], attrs["kernel"]
    x = rng.standard_normal(x_shape).astype(np.float32)
    params = {"weight": rng.standard_normal((f, c // groups, kh, kw)).astype(np.float32)}
    if attrs["bias"]:
        params["bias"] = rng.standard_normal(f).astype(np.float32)
    bn = {"weight": rng.uniform(0.5, 1.5, f), "bias": rng.standard_normal(f),
          "running_mean": rng.standard_normal(f), "running_var": rng.uniform(0.5, 2.0, f)}
    bn = {k: v.astype(np.float32) for k, v in bn.items()}
    t = {k: torch.from_numpy(v) for k, v in bn.items()}
    expected = F.batch_norm(torch_conv([torch.from_numpy(x)], {k: torch.from_numpy(v) for k, v in params.items()},
                                        attrs), t["running_mean"], t["running_var"], t["weight"], t["bias"],
                            training=False, eps=1e-3)
    if relu:
        expected = F.relu(expected)
    spec = NodeSpec(name="conv", op="conv", attrs=attrs, in_shapes=(x_shape,), in_dtypes=("float32",),
                    out_shape=tuple(expected.shape), param_shapes={k: v.shape for k, v in params.items()})
    kernel = dslc.runtime.cpu.conv.Conv(spec)
    assert kernel.fuse_batchnorm({"eps": 1e-3, "momentum": 0.1})
    assert not kernel.fuse_batchnorm({"eps": 1e-3, "momentum": 0.1})     # one batchnorm
    if relu:
        assert kernel.fuse_activation("relu", {})
    ws = {k: np.zeros(shape, dt) for k, (shape, dt) in kernel.workspace().items()}
    out = np.full(tuple(expected.shape), np.nan, np.float32)
    kernel.forward(Context(training=False), [x], {**params, **{f"batchnorm.{k}": v for k, v in bn.items()}}, out, ws)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="inference plans only"):
        kernel.backward(Context(), [x], params, out, out, [None], {}, ws)


def test_batchnorm_is_not_folded_after_a_relu():
    """relu then batchnorm is not batchnorm then relu: once a relu is fused the conv refuses."""
    attrs = conv_attrs(3, (3, 3), pad=(1, 1))
    spec = NodeSpec(name="conv", op="conv", attrs=attrs, in_shapes=((2, 2, 5, 5),), in_dtypes=("float32",),
                    out_shape=(2, 3, 5, 5), param_shapes={"weight": (3, 2, 3, 3), "bias": (3,)})
    kernel = dslc.runtime.cpu.conv.Conv(spec)
    assert kernel.fuse_activation("relu", {})
    assert not kernel.fuse_batchnorm({"eps": 1e-5})


def test_epilogue_operands_have_one_type_whatever_is_fused():
    """With a bias or none, a batchnorm folded in or not, the forward lowerings get a scale and
    a shift of one Numba type (empty where left out), so an inference plan compiles none of
    them again after the training plan (Conv._epilogue_operands)."""
    import numba
    rng = np.random.default_rng(0)
    types = set()
    for bias in (True, False):
        for folded in (False, True):
            attrs = conv_attrs(4, (3, 3), pad=(1, 1), bias=bias)
            params = {"weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)}
            if bias:
                params["bias"] = rng.standard_normal(4).astype(np.float32)
            spec = NodeSpec(name="conv", op="conv", attrs=attrs, in_shapes=((2, 3, 5, 5),), in_dtypes=("float32",),
                            out_shape=(2, 4, 5, 5), param_shapes={k: v.shape for k, v in params.items()})
            kernel = dslc.runtime.cpu.conv.Conv(spec)
            if folded:
                assert kernel.fuse_batchnorm({"eps": 1e-5})
                params.update({f"batchnorm.{k}": np.ones(4, np.float32) for k in ("weight", "running_var")})
                params.update({f"batchnorm.{k}": np.zeros(4, np.float32) for k in ("bias", "running_mean")})
            _, _, bias_view, _ = kernel._operands([np.empty((2, 3, 5, 5), np.float32)], params,
                                                  np.empty((2, 4, 5, 5), np.float32))
            scale, shift = kernel._epilogue_operands(params, bias_view)
            types.add((numba.typeof(scale), numba.typeof(shift)))
    assert len(types) == 1
