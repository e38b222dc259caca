"""The conv family's "shifted windows" lowering: stride-1 convolution without a column matrix.

With stride 1, every kernel tap (i, j) multiplies the whole image shifted by (i*dh, j*dw).
Pad the image once into rows of width Wp = W + 2*pw ("padded", one row per channel, H + 2*ph
rows of Wp each) and compute the output on a grid as wide as the padded rows ("wide", Ho rows
of Wp): then tap (i, j) reads the padded image as one matrix, starting at element
i*dh*Wp + j*dw of each channel's row, so the convolution is kh*kw GEMMs accumulating into
`wide`, each reading the image in place (BLAS takes the row stride), and the kw - 1 columns
past Wo on each wide row (which wrap into the next image row) are computed and dropped.
That replaces im2col's kh*kw-fold copy of the image with a copy of about 1x, at the cost of
(Wp - Wo)/Wo extra columns. The backward is the same GEMMs transposed: the output gradient is
laid out wide (zeros in the dropped columns), the weight gradient of tap (i, j) is
gwide @ shifted-padded-image^T, and the input gradient adds W_ij^T @ gwide into a padded
gradient at the tap's shift, whose interior is the input gradient. No col2im.

One sample at a time, each tap's GEMM has Ho*Wp columns: on small grids with many channels
that is too few to amortise streaming the tap's (F/G, C/G) weights, and im2col, which puts
several samples side by side, wins (see shifted_pays).

Weights are used tap by tap, as (F/G, C/G) matrices: `taps` (G, kh*kw, F/G, C/G) is the
weight rearranged, written by forward and read by backward.

A batch smaller than the threads shares each sample between them in the forward pass
(shifted_forward_split), as conv.py describes.
"""
from numba import uint64 as _u

from dslc.runtime.cpu.arrays import accumulate_row_sums, add_into, copy_into, epilogue_rows, fill, part_bounds
from dslc.runtime.cpu.blas import gemm
from dslc.runtime.jit import njit, pnjit, prange


def shifted_pays(wide_columns: int, channels: int, features: int, samples: int) -> bool:
    """Whether a stride-1 layer runs faster on shifted windows than on im2col, from the columns
    of each tap's GEMM (Ho*Wp) and the channels C/G and features F/G of a group.

    Two costs decide it. A tap's GEMM is C/G deep, so shifted windows update the (F/G, Ho*Wp)
    output kh*kw times, which costs most when C/G is small next to F/G; im2col copies C/G*kh*kw
    rows per sample, a cost spread over F/G outputs, so it costs most when F/G is small.
    Measured in the benchmark's training steps, forward + backward, 2 workers (python -m
    bench.profile --train, each layer forced either way; ms, shifted vs im2col): DenseNet-style's
    48->12 3x3 at 32x32 20.2 vs 24.0; GoogLeNet-style's 16->32 5x5 at 32x32 22.3 vs 18.5; LeNet's
    6->16 5x5 at 14x14 4.0 vs 1.3. Hence im2col once a group has more features than channels.
    On small grids, a tap's weights are reused over few columns, and im2col, which
    puts several samples side by side, wins (one core, batch 64: 128->128 at 8x8 56 vs 86 but
    256->512 at 4x4 246 vs 137, 512->512 at 2x2 403 vs 97): shifted windows only while a tap's
    weights have at most 1024 times fewer elements than its GEMM has columns. And the taps'
    rearrangement of the weights, which an inference plan redoes on every call whatever the
    batch, must be spread over at least as many columns in a pass (`samples` of Ho*Wp each)
    as the larger of channels and features, as in conv_winograd.winograd_pays: ResNet-18's
    256->256 at 8x8, inference at batch 1, 2 workers, took 0.49 ms on shifted windows and 0.35
    on im2col, while DenseNet-style's 48->12 at 32x32 took 0.10 against 0.15 (2026-12-08)."""
    return (features <= channels and wide_columns * 1024 >= channels * features
            and samples * wide_columns >= max(channels, features))


@njit
def _pad_image(image, geometry, padded):
    """padded (C, L): each channel's image with ph zero rows above and below, pw zeros left and
    right of every row, and zeros in the slack past the last row."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    row_width = image_w + 2 * pw
    for c in range(image.shape[0]):
        written = 0
        for ih in range(image_h):
            start = (ih + ph) * row_width + pw
            padded[c, written:start] = 0
            copy_into(padded[c, start:start + image_w], image[c, ih * image_w:(ih + 1) * image_w])
            written = start + image_w
        padded[c, written:] = 0


@njit
def _weight_taps(weight, taps, lo, hi):
    """taps[g, t, f, c] = weight[g, f, c*kk + t] for features f in [lo, hi), kk = kh*kw taps
    per channel. Each tap's row is written in one run, reading the feature's weight row (in
    L1) with stride kk: 3.6x faster than writing kk rows a value at a time (256 -> 256 3x3:
    0.26 against 0.96 ms, one core), which an inference plan pays on every call."""
    groups, kk, rows, channels = taps.shape
    for g in range(groups):
        for f in range(lo, hi):
            source = weight[g, f]
            for t in range(kk):
                row = taps[g, t, f]
                for c in range(channels):
                    row[_u(c)] = source[_u(c) * _u(kk) + _u(t)]


@njit
def _shifted_geometry(geometry):
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    row_width = image_w + 2 * pw
    padded_length = (image_h + 2 * ph) * row_width + (kw - 1) * dw
    return row_width, padded_length, grid_h * row_width


@pnjit
def shifted_forward(x, weight, scale, shift, relu, out, geometry, taps, padded, wide):
    """padded (workers, C/G, L) / wide (workers, F/G, Ho*Wp): per-worker buffers for one
    (sample, group)."""
    n_batch, groups, rows, positions = out.shape
    channels = x.shape[2]
    _, _, kh, kw, _, _, _, _, dh, dw, grid_h, grid_w = geometry
    row_width, padded_length, wide_width = _shifted_geometry(geometry)
    _weight_taps(weight, taps, 0, rows)
    workers = padded.shape[0]
    for worker in prange(workers):
        image = padded[worker]
        result = wide[worker]
        for n in range(worker, n_batch, workers):
            for g in range(groups):
                _pad_image(x[n, g], geometry, image)
                for i in range(kh):
                    for j in range(kw):
                        t = i * kw + j
                        gemm(False, False, rows, wide_width, channels, taps[g, t], 0, channels,
                             image, i * dh * row_width + j * dw, padded_length,
                             0.0 if t == 0 else 1.0, result, 0, wide_width)
                for f in range(rows):
                    for oh in range(grid_h):
                        copy_into(out[n, g, f, oh * grid_w:(oh + 1) * grid_w],
                                  result[f, oh * row_width:oh * row_width + grid_w])
                epilogue_rows(scale, shift, g, relu, out[n, g], 0, rows)


@pnjit
def shifted_forward_split(x, weight, scale, shift, relu, out, geometry, taps, padded, wide, workers):
    """shifted_forward for a batch smaller than the workers (latency, batch 1), shared as in
    conv.py's _conv_forward_split: the weights' taps and each tap's GEMM by output features, the padded
    image by input channels. padded, wide: as for shifted_forward; all `workers` share the
    first worker's."""
    n_batch, groups, rows, positions = out.shape
    channels = x.shape[2]
    _, _, kh, kw, _, _, _, _, dh, dw, grid_h, grid_w = geometry
    row_width, padded_length, wide_width = _shifted_geometry(geometry)
    image = padded[0]
    result = wide[0]
    for worker in prange(workers):
        lo, hi = part_bounds(rows, workers, worker)
        _weight_taps(weight, taps, lo, hi)
    for n in range(n_batch):
        for g in range(groups):
            for worker in prange(workers):
                lo, hi = part_bounds(channels, workers, worker)
                _pad_image(x[n, g, lo:hi], geometry, image[lo:hi])
            for worker in prange(workers):
                lo, hi = part_bounds(rows, workers, worker)
                for i in range(kh):
                    for j in range(kw):
                        t = i * kw + j
                        gemm(False, False, hi - lo, wide_width, channels, taps[g, t], lo * channels, channels,
                             image, i * dh * row_width + j * dw, padded_length,
                             0.0 if t == 0 else 1.0, result, lo * wide_width, wide_width)
                for f in range(lo, hi):
                    for oh in range(grid_h):
                        copy_into(out[n, g, f, oh * grid_w:(oh + 1) * grid_w],
                                  result[f, oh * row_width:oh * row_width + grid_w])
                epilogue_rows(scale, shift, g, relu, out[n, g], lo, hi)


@pnjit
def shifted_backward(x, gout, gx, gweight, gbias, geometry, taps, padded, wide, gpadded,
                      gtaps_partial, gbias_partial):
    """Per worker: its samples' weight gradient summed tap by tap in gtaps_partial[worker]
    (G, kh*kw, F/G, C/G), its bias gradient in gbias_partial[worker]; both summed over workers
    at the end. taps is what forward wrote."""
    n_batch, groups, rows, positions = gout.shape
    channels = x.shape[2]
    image_h, image_w, kh, kw, _, _, ph, pw, dh, dw, grid_h, grid_w = geometry
    row_width, padded_length, wide_width = _shifted_geometry(geometry)
    workers = padded.shape[0]
    for worker in prange(workers):
        if gbias is not None:
            for g in range(groups):
                fill(gbias_partial[worker, g], 0)
        image = padded[worker]
        gimage = gpadded[worker]
        gresult = wide[worker]
        for n in range(worker, n_batch, workers):
            first_sample = n == worker
            for g in range(groups):
                if gbias is not None:
                    accumulate_row_sums(gout[n, g], gbias_partial[worker, g])
                for f in range(rows):
                    for oh in range(grid_h):
                        copy_into(gresult[f, oh * row_width:oh * row_width + grid_w],
                                  gout[n, g, f, oh * grid_w:(oh + 1) * grid_w])
                        fill(gresult[f, oh * row_width + grid_w:(oh + 1) * row_width], 0)
                if gweight is not None:
                    _pad_image(x[n, g], geometry, image)
                    for t in range(kh * kw):
                        i, j = t // kw, t % kw
                        gemm(False, True, rows, channels, wide_width, gresult, 0, wide_width,
                             image, i * dh * row_width + j * dw, padded_length,
                             0.0 if first_sample else 1.0, gtaps_partial[worker, g, t], 0, channels)
                if gx is not None:
                    for c in range(channels):
                        fill(gimage[c], 0)
                    for t in range(kh * kw):
                        i, j = t // kw, t % kw
                        gemm(True, False, channels, wide_width, rows, taps[g, t], 0, channels,
                             gresult, 0, wide_width, 1.0, gimage, i * dh * row_width + j * dw, padded_length)
                    for c in range(channels):
                        for ih in range(image_h):
                            start = (ih + ph) * row_width + pw
                            copy_into(gx[n, g, c, ih * image_w:(ih + 1) * image_w], gimage[c, start:start + image_w])
    busy_workers = min(workers, n_batch)
    if gweight is not None:
        kk = kh * kw
        for g in range(groups):
            for f in range(rows):
                for c in range(channels):
                    for t in range(kk):
                        total = gtaps_partial[0, g, t, f, c]
                        for worker in range(1, busy_workers):
                            total += gtaps_partial[worker, g, t, f, c]
                        gweight[g, f, c * kk + t] = total
    if gbias is not None:   # loops, not array expressions: see runtime/cpu/arrays.py
        for g in range(groups):
            fill(gbias[g], 0)
            for worker in range(busy_workers):
                add_into(gbias[g], gbias_partial[worker, g])
