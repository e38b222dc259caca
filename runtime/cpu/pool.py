"""CPU kernels of the pool family: maxpool, avgpool, global_avgpool, maxunpool, unpool, upsample.

The Numba kernels see every tensor as planes: (N*C, H*W) views, one row per (sample, channel).
They loop over planes, split over the workers (`prange`) only when the image is large enough
for a parallel region to pay (runtime/jit.py's threading policy; the kernel decides once, as
`parallel`), which is race-free because a window never crosses planes. Ops that are a single
strided or broadcast numpy operation (global_avgpool forward, unpool, nearest upsample) stay
in numpy, writing through `out=` so nothing is allocated per step.

Max-pool and max-unpool share one argmax kernel: the index (within its input plane, int32) of
each window's first maximum in row-major order, like torch; a NaN takes over from any number
(the last NaN of a window wins, as in torch's `val > max || isnan(val)`), and padding never
wins. Max-pool saves it in the workspace for its backward; max-unpool recomputes it from the
tensor the max-pool pooled (its input 1).

Speed comes from the innermost loop: it runs over consecutive outputs with the window's
offsets unrolled in its body and a branch-free select per offset, so LLVM vectorises it; a
loop over a window's elements with a branch per element does not vectorise (docs/CPU-BACKEND.md,
"Measurements behind the kernels' choices"). Unrolling needs the window size at compile time, so the
geometries the networks use get their own plane functions: 3x3 stride 1 pad 1 (inception
branches) runs over the whole interior of a plane as one flat loop (rows are only 32 long,
too short for 16-lane vectors) and patches the border windows afterwards; 3x3 stride 2 (the
ImageNet stems) takes each row of interior windows in two passes, down then across (read at
stride 2 in one pass, it did not vectorise); 2x2 stride 2
(VGG, LeNet, DenseNet transitions) where the windows tile the image exactly, through views
with a tile's offsets as axes (see _tiles_argmax). Other geometries take a plain per-window
loop. Inner loops index slices from offset 0 (`row[i + k]`), because Numba
wraps negative indices: with an index LLVM cannot prove non-negative, it does not vectorise.
"""
import numba
import numpy as np

from dslc.runtime.jit import PARALLEL_MIN_ELEMENTS, njit, parallel_elementwise, pnjit, prange
from dslc.runtime.kernel_api import Kernel, register


@njit
def _pick(value, at, best, best_at):
    """The running first maximum after seeing `value` at `at`: a greater value or a NaN takes over."""
    take = (value > best) | (value != value)
    return (value if take else best), (at if take else best_at)


@njit
def _window_first_max(src, p, image_w, h_lo, h_hi, w_lo, w_hi):
    """The first maximum of src[p] over rows [h_lo, h_hi) x columns [w_lo, w_hi), and its index."""
    best_at = h_lo * image_w + w_lo
    best = src[p, best_at]
    for ih in range(h_lo, h_hi):
        for iw in range(w_lo, w_hi):
            best, best_at = _pick(src[p, ih * image_w + iw], ih * image_w + iw, best, best_at)
    return best, best_at


@njit
def _plane_argmax_any(src, p, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, argmax, maxima):
    """Any geometry: each window clipped to the image, one at a time."""
    for oh in range(out_h):
        h_lo = max(oh * sh - ph, 0)
        h_hi = min(oh * sh - ph + kh, image_h)
        for ow in range(out_w):
            w_lo = max(ow * sw - pw, 0)
            w_hi = min(ow * sw - pw + kw, image_w)
            maxima[p, oh * out_w + ow], argmax[p, oh * out_w + ow] = _window_first_max(
                src, p, image_w, h_lo, h_hi, w_lo, w_hi)


@njit
def _plane_argmax_3x3_same(src, p, h, w, argmax, maxima):
    """3x3 windows, stride 1, pad 1, on an image of at least 3x3: output (oh, ow) is centred on
    input (oh, ow). Output q = oh*w + ow of an interior row has its window's top-left corner at
    q - w - 1, so all interior rows run as one flat loop; that loop also writes the first and
    last column of those rows (their windows wrap into the neighbouring row), which the
    border passes below overwrite."""
    top = src[p, 0:]
    middle = src[p, w:]
    bottom = src[p, 2 * w:]
    out = maxima[p, w + 1:]
    out_at = argmax[p, w + 1:]
    for i in range((h - 2) * w - 2):
        best, at = top[i], i
        best, at = _pick(top[i + 1], i + 1, best, at)
        best, at = _pick(top[i + 2], i + 2, best, at)
        best, at = _pick(middle[i], w + i, best, at)
        best, at = _pick(middle[i + 1], w + i + 1, best, at)
        best, at = _pick(middle[i + 2], w + i + 2, best, at)
        best, at = _pick(bottom[i], 2 * w + i, best, at)
        best, at = _pick(bottom[i + 1], 2 * w + i + 1, best, at)
        best, at = _pick(bottom[i + 2], 2 * w + i + 2, best, at)
        out[i] = best
        out_at[i] = at
    # first and last row: the window's row above / below is padding
    for oh, first_row in ((0, 0), (h - 1, h - 2)):
        r = first_row * w
        upper = src[p, r:]
        lower = src[p, r + w:]
        out = maxima[p, oh * w + 1:]
        out_at = argmax[p, oh * w + 1:]
        for c in range(w - 2):
            best, at = upper[c], r + c
            best, at = _pick(upper[c + 1], r + c + 1, best, at)
            best, at = _pick(upper[c + 2], r + c + 2, best, at)
            best, at = _pick(lower[c], r + w + c, best, at)
            best, at = _pick(lower[c + 1], r + w + c + 1, best, at)
            best, at = _pick(lower[c + 2], r + w + c + 2, best, at)
            out[c] = best
            out_at[c] = at
    # first and last column: windows two columns wide (the corners two rows high as well)
    for oh in (0, h - 1):
        h_lo = max(oh - 1, 0)
        maxima[p, oh * w], argmax[p, oh * w] = _window_first_max(src, p, w, h_lo, h_lo + 2, 0, 2)
        maxima[p, oh * w + w - 1], argmax[p, oh * w + w - 1] = _window_first_max(
            src, p, w, h_lo, h_lo + 2, w - 2, w)
    for first_col in (0, w - 2):
        ow = first_col if first_col == 0 else w - 1
        for first_row in range(h - 2):
            at = first_row * w + first_col
            best, best_at = src[p, at], at
            best, best_at = _pick(src[p, at + 1], at + 1, best, best_at)
            at += w
            best, best_at = _pick(src[p, at], at, best, best_at)
            best, best_at = _pick(src[p, at + 1], at + 1, best, best_at)
            at += w
            best, best_at = _pick(src[p, at], at, best, best_at)
            best, best_at = _pick(src[p, at + 1], at + 1, best, best_at)
            maxima[p, (first_row + 1) * w + ow] = best
            argmax[p, (first_row + 1) * w + ow] = best_at


@njit
def _clipped_3x3_stride2(src, p, image_h, image_w, ph, pw, out_w, oh, ow_first, ow_last, argmax, maxima):
    """Outputs [ow_first, ow_last) of row oh of _plane_argmax_3x3_stride2, each window clipped
    to the image (the per-window loop)."""
    h_lo = max(oh * 2 - ph, 0)
    h_hi = min(oh * 2 - ph + 3, image_h)
    for ow in range(ow_first, ow_last):
        w_lo = max(ow * 2 - pw, 0)
        w_hi = min(ow * 2 - pw + 3, image_w)
        maxima[p, oh * out_w + ow], argmax[p, oh * out_w + ow] = _window_first_max(
            src, p, image_w, h_lo, h_hi, w_lo, w_hi)


@njit
def _plane_argmax_3x3_stride2(src, p, image_h, image_w, ph, pw, out_h, out_w, argmax, maxima, column_max,
                              column_at):
    """3x3 windows at stride 2, any padding (ImageNet stems: ResNet, DenseNet; GoogLeNet's
    ceil-mode pools). The windows that padding or the image's edge clips take the per-window
    loop. Those wholly inside the image go a row of windows at a time, in two passes that
    each vectorise: down the three rows, each column's first maximum and its index into
    column_max / column_at (image_w each); then across, three columns at a time. Read in one
    pass at stride 2, the nine offsets did not vectorise: DenseNet-121's stem pool
    (16x64x112x112, one thread) took 18.6 ms so and 6.6 ms in two passes.

    The row-major first maximum, which the two passes must reproduce: down a column it is
    the first of the rows (a NaN: the last NaN); across, a later column takes over with a
    greater value, or an equal one found in an earlier row (a smaller flat index), or a NaN
    when the best is no NaN or lies in an earlier row (the window's last NaN in row-major
    order has the greatest flat index)."""
    # the output rows and columns whose windows lie inside the image: from ceil(pad / 2), up
    # to where 2 * o - pad + 3 <= size
    oh_lo = min((ph + 1) // 2, out_h)
    oh_hi = max(min((image_h - 3 + ph) // 2 + 1, out_h), oh_lo)
    ow_lo = min((pw + 1) // 2, out_w)
    ow_hi = max(min((image_w - 3 + pw) // 2 + 1, out_w), ow_lo)
    for oh in range(out_h):
        if oh_lo <= oh < oh_hi:     # an interior row: only its first and last columns are clipped
            _clipped_3x3_stride2(src, p, image_h, image_w, ph, pw, out_w, oh, 0, ow_lo, argmax, maxima)
            _clipped_3x3_stride2(src, p, image_h, image_w, ph, pw, out_w, oh, ow_hi, out_w, argmax, maxima)
        else:
            _clipped_3x3_stride2(src, p, image_h, image_w, ph, pw, out_w, oh, 0, out_w, argmax, maxima)
    width = ow_hi - ow_lo
    columns = 2 * width + 1 if width > 0 else 0
    for oh in range(oh_lo, oh_hi):
        r0 = (oh * 2 - ph) * image_w + ow_lo * 2 - pw      # the first interior window's top-left
        r1 = r0 + image_w
        r2 = r1 + image_w
        top = src[p, r0:]
        middle = src[p, r1:]
        bottom = src[p, r2:]
        for c in range(columns):
            best, at = top[c], r0 + c
            best, at = _pick(middle[c], r1 + c, best, at)
            best, at = _pick(bottom[c], r2 + c, best, at)
            column_max[c] = best
            column_at[c] = at
        out = maxima[p, oh * out_w + ow_lo:]
        out_at = argmax[p, oh * out_w + ow_lo:]
        for i in range(width):
            best = column_max[2 * i]
            best_at = column_at[2 * i]
            for k in (1, 2):
                value = column_max[2 * i + k]
                at = column_at[2 * i + k]
                take = ((value > best) | ((value == best) & (at < best_at))
                        | ((value != value) & ((best == best) | (at > best_at))))
                best = value if take else best
                best_at = at if take else best_at
            out[i] = best
            out_at[i] = best_at


@njit
def _share(count, part, parts):
    """Where share `part` of `count` rows starts when they are split into `parts` runs."""
    return count * part // parts


# Each operation below is a function over a run of rows [first, last) and a driver that runs
# it once over every row, or, given `workers` > 1, once per worker over an equal share of
# them. A call per worker rather than per row keeps per-call costs out (VGG's last pools have
# 32k 2x2 planes) and lets a run's rows be filled as one long loop.

@njit
def _fill_rows(dst, first, last, value):
    """dst[first:last] = value as one long loop. A loop per row stays scalar on short rows
    (LLVM's vector loop takes 64 elements at a time), so small planes are zeroed as one run."""
    rows = dst[first:last].reshape(-1)
    for i in range(rows.size):
        rows[i] = value


@njit
def _planes_argmax(src, first, last, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, argmax, maxima):
    same_3x3 = kh == 3 and kw == 3 and sh == 1 and sw == 1 and ph == 1 and pw == 1 and image_h >= 3 \
        and image_w >= 3
    stride2_3x3 = kh == 3 and kw == 3 and sh == 2 and sw == 2
    column_max = np.empty(image_w if stride2_3x3 else 0, src.dtype)    # _plane_argmax_3x3_stride2's
    column_at = np.empty(image_w if stride2_3x3 else 0, np.int32)
    for p in range(first, last):
        if same_3x3:
            _plane_argmax_3x3_same(src, p, image_h, image_w, argmax, maxima)
        elif stride2_3x3:
            _plane_argmax_3x3_stride2(src, p, image_h, image_w, ph, pw, out_h, out_w, argmax, maxima,
                                      column_max, column_at)
        else:
            _plane_argmax_any(src, p, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, argmax, maxima)


@pnjit
def _window_argmax(src, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, argmax, maxima, workers):
    """argmax[p, oh*out_w + ow] = flat index in src[p] of the window's first maximum (padding
    never wins, a NaN wins); maxima[p, oh*out_w + ow] = the maximum itself."""
    if workers > 1:
        for part in prange(workers):
            _planes_argmax(src, _share(src.shape[0], part, workers), _share(src.shape[0], part + 1, workers),
                           image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, argmax, maxima)
    else:
        _planes_argmax(src, 0, src.shape[0], image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, argmax, maxima)


@njit
def _tile_rows_argmax(src, first, last, out_h, argmax, maxima):
    """_pick's result over each 2x2 tile (the first maximum, or the last NaN), computed so that
    the loop over ow vectorises: the winning value by a tournament of selects, then its place
    from comparisons with it (the first element equal to it, or the last NaN), rather than
    carrying the place through every select. 2.2-2.6x faster than the _pick chain on LeNet's
    and the digits net's pools (docs/CPU-BACKEND.md)."""
    out_w = argmax.shape[1]
    image_w = np.int32(src.shape[2])
    below, below_right = image_w, np.int32(image_w + 1)     # offsets of the tile's lower row
    for r in range(first, last):
        top_left = np.int32((r % out_h) * 2 * image_w)
        upper, lower, places, maxima_row = src[r, 0], src[r, 1], argmax[r], maxima[r]
        for ow in range(out_w):
            a, b = upper[2 * ow], upper[2 * ow + 1]
            c, d = lower[2 * ow], lower[2 * ow + 1]
            best = a
            best = b if (b > best) | (b != b) else best
            best = c if (c > best) | (c != c) else best
            best = d if (d > best) | (d != d) else best
            first_max = below_right
            first_max = below if c == best else first_max
            first_max = np.int32(1) if b == best else first_max
            first_max = np.int32(0) if a == best else first_max
            last_nan = np.int32(0)
            last_nan = np.int32(1) if b != b else last_nan
            last_nan = below if c != c else last_nan
            last_nan = below_right if d != d else last_nan
            maxima_row[ow] = best
            places[ow] = top_left + np.int32(2 * ow) + (last_nan if best != best else first_max)


@pnjit
def _tiles_argmax(src, out_h, argmax, maxima, workers):
    """_window_argmax for 2x2 windows at stride 2 that tile the image exactly: src viewed as
    (N*C*out_h, 2, W), one entry per row of windows, argmax and maxima as (N*C*out_h, out_w);
    the indices are plane-local, as _window_argmax's. In these views a window's elements sit
    at [r, 0 or 1, 2*ow + 0 or 1]: nothing is sliced per row (slicing cost more than the
    pooling on 4x4 images), and the stride over ow is a constant 2 (with the tile's column as
    an axis of its own, the stride is read from the array at run time and the loop ran ~4x
    slower)."""
    if workers > 1:
        for part in prange(workers):
            _tile_rows_argmax(src, _share(src.shape[0], part, workers), _share(src.shape[0], part + 1, workers),
                              out_h, argmax, maxima)
    else:
        _tile_rows_argmax(src, 0, src.shape[0], out_h, argmax, maxima)


@njit
def _scatter_rows(values, index, dst, first, last, accumulate):
    _fill_rows(dst, first, last, 0)
    for p in range(first, last):
        for k in range(values.shape[1]):
            if accumulate:
                dst[p, index[p, k]] += values[p, k]
            else:
                dst[p, index[p, k]] = values[p, k]


@pnjit
def _scatter(values, index, dst, accumulate, workers):
    """dst[p] = 0, then dst[p, index[p, k]] (+)= values[p, k] for every k in order: with
    accumulate=False a later k overwrites an earlier one at the same place."""
    if workers > 1:
        for part in prange(workers):
            _scatter_rows(values, index, dst, _share(dst.shape[0], part, workers),
                          _share(dst.shape[0], part + 1, workers), accumulate)
    else:
        _scatter_rows(values, index, dst, 0, dst.shape[0], accumulate)


@njit
def _gather_rows(src, index, dst, first, last):
    for p in range(first, last):
        for k in range(dst.shape[1]):
            dst[p, k] = src[p, index[p, k]]


@pnjit
def _gather(src, index, dst, workers):
    """dst[p, k] = src[p, index[p, k]]."""
    if workers > 1:
        for part in prange(workers):
            _gather_rows(src, index, dst, _share(dst.shape[0], part, workers), _share(dst.shape[0], part + 1, workers))
    else:
        _gather_rows(src, index, dst, 0, dst.shape[0])


@njit
def _padded_extent(start, kernel, image_size, pad):
    """How many places of a window starting at `start` lie inside the input or its padding:
    the kernel, except for a ceil-mode window overhanging the right padding. Average pooling
    divides by this (count_include_pad=True: padding counts as zeros, overhang not at all)."""
    return min(start + kernel, image_size + pad) - start


@njit
def _avg_window(oh, ow, image_h, image_w, kh, kw, sh, sw, ph, pw):
    """Output (oh, ow)'s window clipped to the image, (h_lo, h_hi, w_lo, w_hi), and the area
    its average divides by (see _padded_extent)."""
    top, left = oh * sh - ph, ow * sw - pw
    area = _padded_extent(top, kh, image_h, ph) * _padded_extent(left, kw, image_w, pw)
    return max(top, 0), min(top + kh, image_h), max(left, 0), min(left + kw, image_w), area


@njit
def _avgpool_forward_rows(x, first, last, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, out):
    for p in range(first, last):
        for oh in range(out_h):
            for ow in range(out_w):
                h_lo, h_hi, w_lo, w_hi, area = _avg_window(oh, ow, image_h, image_w, kh, kw, sh, sw, ph, pw)
                total = 0.0
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        total += x[p, ih * image_w + iw]
                out[p, oh * out_w + ow] = total / area


@pnjit
def _avgpool_forward(x, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, out, workers):
    """Window sums over the real pixels divided by the window's padded area, as torch's
    count_include_pad=True: kh*kw in floor mode, less for a ceil-mode window at the edge."""
    if workers > 1:
        for part in prange(workers):
            _avgpool_forward_rows(x, _share(x.shape[0], part, workers), _share(x.shape[0], part + 1, workers),
                                  image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, out)
    else:
        _avgpool_forward_rows(x, 0, x.shape[0], image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, out)


@njit
def _avgpool_backward_rows(gout, first, last, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, gx):
    _fill_rows(gx, first, last, 0)
    for p in range(first, last):
        for oh in range(out_h):
            for ow in range(out_w):
                h_lo, h_hi, w_lo, w_hi, area = _avg_window(oh, ow, image_h, image_w, kh, kw, sh, sw, ph, pw)
                share = gout[p, oh * out_w + ow] / area
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        gx[p, ih * image_w + iw] += share


@pnjit
def _avgpool_backward(gout, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, gx, workers):
    if workers > 1:
        for part in prange(workers):
            _avgpool_backward_rows(gout, _share(gx.shape[0], part, workers), _share(gx.shape[0], part + 1, workers),
                                   image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, gx)
    else:
        _avgpool_backward_rows(gout, 0, gx.shape[0], image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, gx)


@njit
def _tiles_average_rows(x, first, last, out):
    for r in range(first, last):
        for ow in range(out.shape[1]):
            out[r, ow] = (x[r, 0, 2 * ow] + x[r, 0, 2 * ow + 1] + x[r, 1, 2 * ow] + x[r, 1, 2 * ow + 1]) / 4


@pnjit
def _tiles_average(x, out, workers):
    """Average pooling over 2x2 tiles, with the views of _tiles_argmax."""
    if workers > 1:
        for part in prange(workers):
            _tiles_average_rows(x, _share(x.shape[0], part, workers), _share(x.shape[0], part + 1, workers), out)
    else:
        _tiles_average_rows(x, 0, x.shape[0], out)


@njit
def _tiles_spread_rows(gout, first, last, gx):
    for r in range(first, last):
        for ow in range(gout.shape[1]):
            share = gout[r, ow] / 4
            gx[r, 0, 2 * ow] = share
            gx[r, 0, 2 * ow + 1] = share
            gx[r, 1, 2 * ow] = share
            gx[r, 1, 2 * ow + 1] = share


@pnjit
def _tiles_spread(gout, gx, workers):
    """_tiles_average's backward: the tiles cover every pixel once, so each is written, none
    accumulated, and no zeroing pass is needed."""
    if workers > 1:
        for part in prange(workers):
            _tiles_spread_rows(gout, _share(gx.shape[0], part, workers), _share(gx.shape[0], part + 1, workers), gx)
    else:
        _tiles_spread_rows(gout, 0, gx.shape[0], gx)


@njit
def _spread_evenly_rows(gout, size, first, last, gx):
    for p in range(first, last):
        share = gout[p] / size
        for i in range(gx.shape[1]):
            gx[p, i] = share


@pnjit
def _spread_evenly(gout, size, gx, workers):
    """gx[p, :] = gout[p] / size: global average pooling's backward. A Numba loop because
    numpy's broadcast divide into a (N, C, H, W) output is several times slower on large
    gradients (docs/CPU-BACKEND.md, "Measurements behind the kernels' choices")."""
    if workers > 1:
        for part in prange(workers):
            _spread_evenly_rows(gout, size, _share(gx.shape[0], part, workers),
                                _share(gx.shape[0], part + 1, workers), gx)
    else:
        _spread_evenly_rows(gout, size, 0, gx.shape[0], gx)


@njit
def _bilinear_source(o, scale, size):
    """Output index o's two source indices and the weight of the second, with torch's
    align_corners=False rule: source = (o + 0.5) / scale - 0.5, clamped at 0 and at the edge."""
    position = max((o + 0.5) / scale - 0.5, 0.0)
    i0 = int(position)
    return i0, min(i0 + 1, size - 1), position - i0


@pnjit
def _bilinear_forward(x, h, w, scale_h, scale_w, out_h, out_w, out):
    for p in prange(x.shape[0]):
        for oh in range(out_h):
            h0, h1, wy = _bilinear_source(oh, scale_h, h)
            for ow in range(out_w):
                w0, w1, wx = _bilinear_source(ow, scale_w, w)
                top = (1.0 - wx) * x[p, h0 * w + w0] + wx * x[p, h0 * w + w1]
                bottom = (1.0 - wx) * x[p, h1 * w + w0] + wx * x[p, h1 * w + w1]
                out[p, oh * out_w + ow] = (1.0 - wy) * top + wy * bottom


@pnjit
def _bilinear_backward(gout, h, w, scale_h, scale_w, out_h, out_w, gx):
    """The adjoint of _bilinear_forward: each output gradient spread back with its four weights."""
    for p in prange(gx.shape[0]):
        gx[p, :] = 0
        for oh in range(out_h):
            h0, h1, wy = _bilinear_source(oh, scale_h, h)
            for ow in range(out_w):
                w0, w1, wx = _bilinear_source(ow, scale_w, w)
                g = gout[p, oh * out_w + ow]
                gx[p, h0 * w + w0] += (1.0 - wy) * (1.0 - wx) * g
                gx[p, h0 * w + w1] += (1.0 - wy) * wx * g
                gx[p, h1 * w + w0] += wy * (1.0 - wx) * g
                gx[p, h1 * w + w1] += wy * wx * g


# A window pool compares and indexes every element rather than only streaming it, so it pays
# to split sooner than an elementwise loop: LeNet's first pool (64x6x28x28, 301K elements)
# takes 0.108 ms on one worker and 0.058 ms on two (python -m bench.profile lenet5_relu).
WINDOW_POOL_MIN_ELEMENTS = PARALLEL_MIN_ELEMENTS // 8


def _workers(parallel: bool) -> int:
    """The drivers' `workers` argument. Asked per call, not inside the jitted code: a
    jitted numba.get_num_threads() keeps the function out of the disk cache."""
    return numba.get_num_threads() if parallel else 1


def _planes(a):
    """(N, C, H, W) viewed, without copying, as (N*C, H*W)."""
    return a.reshape((a.shape[0] * a.shape[1], a.shape[2] * a.shape[3]), copy=False)


class _WindowPool(Kernel):
    """Window geometry of maxpool / avgpool / maxunpool: `image` is the pooled-over side
    (input 0 of the pools, input 1 of maxunpool), `grid` the side with one value per window
    (the pools' output, maxunpool's input 0), sized by the shape rule of docs/OPS.md (floor or
    ceil mode): the kernels need only loop over it, clipping each window to the image."""
    image_input = 0

    def __init__(self, spec):
        super().__init__(spec)
        a = spec.attrs
        self.kernel, self.stride, self.pad = a["kernel"], a["stride"], a["pad"]
        _, _, self.image_h, self.image_w = spec.in_shapes[self.image_input]
        self.grid_shape = tuple(spec.out_shape if self.image_input == 0 else spec.in_shapes[0])
        self.out_h, self.out_w = self.grid_shape[2:]
        self.parallel = int(np.prod(spec.in_shapes[self.image_input], dtype=np.int64)) >= WINDOW_POOL_MIN_ELEMENTS
        # 2x2 windows at stride 2 covering the image exactly (VGG, LeNet, DenseNet transitions)
        self.tiles_2x2 = (tuple(self.kernel) == tuple(self.stride) == (2, 2) and tuple(self.pad) == (0, 0)
                          and (self.image_h, self.image_w) == (2 * self.out_h, 2 * self.out_w))

    def geometry(self):
        return (self.image_h, self.image_w, *self.kernel, *self.stride, *self.pad, self.out_h, self.out_w)

    def tile_view(self, image):
        """An image-side tensor as (N*C*out_h, 2, W): the two image rows of each row of 2x2 tiles."""
        return image.reshape((-1, 2, self.image_w), copy=False)

    def tile_rows(self, grid):
        """A grid-side tensor as (N*C*out_h, out_w), matching tile_view."""
        return grid.reshape((-1, self.out_w), copy=False)

    def find_argmax(self, src, argmax, maxima):
        if self.tiles_2x2:
            _tiles_argmax(self.tile_view(src), self.out_h, self.tile_rows(argmax), self.tile_rows(maxima),
                          _workers(self.parallel))
        else:
            _window_argmax(_planes(src), *self.geometry(), _planes(argmax), _planes(maxima),
                           _workers(self.parallel))


@register("cpu", "maxpool")
class MaxPool(_WindowPool):
    backward_reads_inputs = False     # backward scatters through the argmax saved in the workspace
    backward_reads_out = False

    def workspace(self):
        # each output's argmax within its plane, written by forward and read by backward
        return {"argmax": (self.grid_shape, "int32")}

    def forward(self, ctx, xs, params, out, ws):
        self.find_argmax(xs[0], ws["argmax"], out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _scatter(_planes(gout), _planes(ws["argmax"]), _planes(gxs[0]), True, _workers(self.parallel))


@register("cpu", "avgpool")
class AvgPool(_WindowPool):
    backward_reads_inputs = False     # the gradient spreads gout evenly: no values needed
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        if self.tiles_2x2:
            _tiles_average(self.tile_view(xs[0]), self.tile_rows(out), _workers(self.parallel))
        else:
            _avgpool_forward(_planes(xs[0]), *self.geometry(), _planes(out), _workers(self.parallel))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        if self.tiles_2x2:
            _tiles_spread(self.tile_rows(gout), self.tile_view(gxs[0]), _workers(self.parallel))
        else:
            _avgpool_backward(_planes(gout), *self.geometry(), _planes(gxs[0]), _workers(self.parallel))


@register("cpu", "maxunpool")
class MaxUnpool(_WindowPool):
    """Input 0: the values to place (one per window); input 1: the tensor the max-pool pooled,
    whose window maxima say where. Where windows overlap and share an argmax, the later
    window's value is written (as torch's max_unpool2d) while the backward, like torch's,
    gives every window the gradient at its argmax."""
    image_input = 1

    scratch_workspace = ("maxima",)      # the argmax is kept for backward

    def workspace(self):
        # the window maxima: a by-product of finding the argmax, unused
        return {"argmax": (self.grid_shape, "int32"), "maxima": (self.grid_shape, "float32")}

    def forward(self, ctx, xs, params, out, ws):
        self.find_argmax(xs[1], ws["argmax"], ws["maxima"])
        _scatter(_planes(xs[0]), _planes(ws["argmax"]), _planes(out), False, _workers(self.parallel))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _gather(_planes(gout), _planes(ws["argmax"]), _planes(gxs[0]), _workers(self.parallel))
        if gxs[1] is not None:     # the positions are piecewise constant in src
            gxs[1].fill(0)


@register("cpu", "global_avgpool")
class GlobalAvgPool(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(int(np.prod(spec.in_shapes[0], dtype=np.int64)))

    def forward(self, ctx, xs, params, out, ws):
        # numpy's pairwise-summing mean beat a Numba loop, which sums float32 serially
        x = xs[0]
        np.mean(x.reshape(x.shape[0], x.shape[1], -1), axis=2, out=out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx = gxs[0]
        if gx is not None:
            _spread_evenly(gout.reshape(-1), gx.shape[2] * gx.shape[3], _planes(gx), _workers(self.parallel))


@register("cpu", "unpool")
class Unpool(Kernel):
    """Bed of nails: x[i, j] lands at [i*sh, j*sw], zeros elsewhere."""
    def forward(self, ctx, xs, params, out, ws):
        sh, sw = self.spec.attrs["scale"]
        out.fill(0)
        out[:, :, ::sh, ::sw] = xs[0]

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            sh, sw = self.spec.attrs["scale"]
            gxs[0][...] = gout[:, :, ::sh, ::sw]


@register("cpu", "upsample")
class Upsample(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        self.scale = spec.attrs["scale"]
        self.scale_h, self.scale_w = map(float, self.scale)
        self.bilinear = spec.attrs["mode"] == "bilinear"

    def _blocks(self, a, h, w):
        """The upsampled (N, C, h*sh, w*sw) array viewed as (N, C, h, sh, w, sw): each input
        pixel's sh x sw block of nearest-neighbour copies."""
        sh, sw = self.scale
        return a.reshape((a.shape[0], a.shape[1], h, sh, w, sw), copy=False)

    def forward(self, ctx, xs, params, out, ws):
        x = xs[0]
        _, _, h, w = x.shape
        if self.bilinear:
            _bilinear_forward(_planes(x), h, w, self.scale_h, self.scale_w, out.shape[2], out.shape[3],
                              _planes(out))
        else:
            self._blocks(out, h, w)[...] = x[:, :, :, None, :, None]

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx = gxs[0]
        if gx is None:
            return
        _, _, h, w = gx.shape
        if self.bilinear:
            _bilinear_backward(_planes(gout), h, w, self.scale_h, self.scale_w, gout.shape[2], gout.shape[3],
                               _planes(gx))
        else:
            np.sum(self._blocks(gout, h, w), axis=(3, 5), out=gx)
