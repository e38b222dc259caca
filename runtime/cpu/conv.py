"""CPU kernels of the conv family: `conv` and `deconv` (transposed convolution).

conv has four lowerings, chosen per layer when the kernel is built (Conv.__init__, from the
measured cost functions unrolled_pays, winograd_pays and shifted_pays; docs/CPU-BACKEND.md):
  * unrolled weights where the input grid is no bigger than the kernel window: the conv as one
    dense GEMM per pass (conv_unrolled.py);
  * Winograd F(4x4, 3x3) or F(2x2, 3x3) for 3x3 stride-1 layers with many channels
    (conv_winograd.py);
  * shifted windows for other stride-1 layers on wide enough grids: one strided GEMM per
    kernel tap over a padded image (conv_shifted.py);
  * im2col + GEMM for the rest (strided, 1x1, small grids with big weights), described here.

Layouts: every array is viewed (never copied) with the groups made explicit and the spatial
dims flattened, so each per-(sample, group) operand of a GEMM is a C-contiguous matrix:
    conv:   x (N, G, C/G, H*W)   weight (G, F/G, C/G*kh*kw)   out (N, G, F/G, Ho*Wo)
    deconv: x (N, G, C/G, H*W)   weight (G, C/G, F/G*kh*kw)   out (N, G, F/G, Ho*Wo)
A column matrix has one row per (channel, kernel row, kernel col) and one column per
position of the grid the kernel slides over.

Who owns the cores (conv, every lowering). The batch is cut into chunks of consecutive
samples, and one Numba thread per core ("worker") takes every workers-th chunk: it builds the
chunk's column matrix and runs the chunk's GEMMs on single-threaded BLAS (runtime/jit.py: the
plan holds BLAS to one thread; layers below PARALLEL_MIN_FLOPS keep to one worker). Both cores
therefore do im2col/col2im as well as GEMM, instead of one core copying while the other waits
(serial im2col was a large share of the forward). A chunk
holds enough samples that its GEMM has at least MIN_GEMM_COLUMNS columns: at 4x4 and 2x2
grids one sample's GEMM is too thin for BLAS to run near its peak. Each worker owns its
buffers, and the weight gradient is summed per worker, then across workers, so no two threads
ever write the same element. GEMMs go through runtime/cpu/blas.py, which takes leading
dimensions, so one (rows, chunk columns) buffer per worker also serves a short last chunk.

A batch with fewer samples than threads (latency, batch 1) would leave cores idle that way:
there the forward pass shares each sample instead (_conv_forward_split,
conv_shifted.shifted_forward_split, conv_winograd.winograd_conv_split), the columns or padded
image by input channels, the GEMMs and epilogue by output features, with a parallel region
per phase. The backward passes keep whole samples per worker.

A 1x1 kernel with stride 1 and no padding makes a sample's column matrix equal to its
image, so such "pointwise" layers GEMM straight from the input when a chunk is one sample.

Optional operands (bias, and each gradient of the backward pass) are passed as None when not
wanted; Numba compiles the `is None` branches away, so a frozen layer skips the weight
gradient and a first layer skips the input gradient (a col2im and a GEMM per chunk). One
exception: im2col's input gradient is an array and a flag (_conv_backward), because nearly
every network has an im2col first layer and im2col layers after it, and a None would compile
that big function twice.

deconv keeps one sample at a time with BLAS owning the cores: no model the project measures
uses it on a hot path.
"""
import numba
import numpy as np
from numba import uint64 as _u

from dslc.runtime.cpu.activation import relu_backward, relu_grad
from dslc.runtime.cpu.arrays import (
    accumulate_row_sums,
    add_into,
    copy_into,
    copy_rows,
    epilogue_rows,
    fill,
    part_bounds,
    row_sum,
    scale_shift,
)
from dslc.runtime.cpu.blas import gemm
from dslc.runtime.cpu.conv_geometry import window_offsets
from dslc.runtime.cpu.conv_shifted import shifted_backward, shifted_forward, shifted_forward_split, shifted_pays
from dslc.runtime.cpu.conv_unrolled import tap_map, unrolled_backward, unrolled_forward, unrolled_pays
from dslc.runtime.cpu.conv_winograd import (
    WinogradPlan,
    winograd_conv,
    winograd_conv_split,
    winograd_pays,
    winograd_weight_grad,
)
from dslc.runtime.jit import njit, parallel_elementwise, parallel_gemm, pnjit, prange
from dslc.runtime.kernel_api import FusesRelu, Kernel, register

# Fewest GEMM columns (grid positions x samples) a conv chunk aims for: below ~256 columns
# single-threaded OpenBLAS sgemm falls well short of its peak on these shapes.
MIN_GEMM_COLUMNS = 256


@njit
def _valid_grid_range(offset, stride, image_size, grid_size):
    """[lo, hi) of grid positions g with 0 <= g*stride + offset < image_size."""
    lo = max(0, -(offset // stride))              # ceil(-offset / stride)
    hi = min(grid_size, -((offset - image_size) // stride))   # ceil((image_size - offset) / stride)
    return lo, max(lo, hi)


@njit
def _im2col(image, geometry, cols, first_col):
    """cols[(c*kh + i)*kw + j, first_col + oh*grid_w + ow] = image[c, ih, iw] (0 in the padding),
    ih = oh*sh - ph + i*dh, iw = ow*sw - pw + j*dw. image is (C, image_h*image_w).

    Plain loops over unsigned offsets: slice assignments per grid row (a view each) and signed
    indices (a wraparound check each) slow it down at stride 2 and on small grids."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    for c in range(image.shape[0]):
        channel = image[c]
        for i in range(kh):
            oh_lo, oh_hi = _valid_grid_range(i * dh - ph, sh, image_h, grid_h)
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                col_offset = j * dw - pw
                ow_lo, ow_hi = _valid_grid_range(col_offset, sw, image_w, grid_w)
                for oh in range(grid_h):
                    base = first_col + oh * grid_w
                    if oh < oh_lo or oh >= oh_hi:
                        for ow in range(grid_w):
                            row[_u(base + ow)] = 0
                        continue
                    src = (oh * sh - ph + i * dh) * image_w + col_offset
                    for ow in range(ow_lo):
                        row[_u(base + ow)] = 0
                    for ow in range(ow_lo, ow_hi):
                        row[_u(base + ow)] = channel[_u(src + ow * sw)]
                    for ow in range(ow_hi, grid_w):
                        row[_u(base + ow)] = 0


@njit
def _col2im(cols, geometry, first_col, image):
    """The adjoint of _im2col: image = 0, then image[c, ih, iw] += every column entry that
    _im2col would have read from there."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    image[:] = 0
    for c in range(image.shape[0]):
        channel = image[c]
        for i in range(kh):
            oh_lo, oh_hi = _valid_grid_range(i * dh - ph, sh, image_h, grid_h)
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                col_offset = j * dw - pw
                ow_lo, ow_hi = _valid_grid_range(col_offset, sw, image_w, grid_w)
                for oh in range(oh_lo, oh_hi):
                    base = first_col + oh * grid_w
                    dst = (oh * sh - ph + i * dh) * image_w + col_offset
                    for ow in range(ow_lo, ow_hi):
                        channel[_u(dst + ow * sw)] += row[_u(base + ow)]


def gather_pays(grid_w: int) -> bool:
    """Whether im2col/col2im should go through a table of offsets (_im2col_gather) rather than
    the loops over grid rows (_im2col): on short grid rows the loops' per-row work dominates,
    while on wide rows the loops, which copy whole contiguous runs, win (docs/CPU-BACKEND.md,
    "Measurements behind the kernels' choices")."""
    return grid_w <= 8


@njit
def _im2col_gather(image, offsets, cols, first_col):
    """_im2col by a table of offsets (conv_geometry.window_offsets): cols[c*taps + k, first_col + p] =
    image[c, offsets[k, p]], 0 where that is -1. Branch-free, so the loop over p vectorises
    (a masked gather)."""
    taps, positions = offsets.shape
    for c in range(image.shape[0]):
        channel = image[c]
        for k in range(taps):
            row = cols[c * taps + k]
            for p in range(positions):
                offset = offsets[k, p]
                value = channel[_u(max(offset, 0))]
                row[_u(first_col + p)] = value if offset >= 0 else 0


@njit
def _col2im_scatter(cols, offsets, first_col, image):
    """_col2im by a table of offsets: the adjoint of _im2col_gather."""
    taps, positions = offsets.shape
    for c in range(image.shape[0]):
        channel = image[c]
        fill(channel, 0)
        for k in range(taps):
            row = cols[c * taps + k]
            for p in range(positions):
                offset = offsets[k, p]
                if offset >= 0:
                    channel[_u(offset)] += row[_u(first_col + p)]


@njit
def _to_columns(image, geometry, offsets, cols, first_col):
    """im2col of one (sample, group): by the offsets table where there is one (gather_pays),
    else by the loops."""
    if offsets.shape[0] > 0:
        _im2col_gather(image, offsets, cols, first_col)
    else:
        _im2col(image, geometry, cols, first_col)


@njit
def _from_columns(cols, geometry, offsets, first_col, image):
    """col2im of one (sample, group), as _to_columns chooses."""
    if offsets.shape[0] > 0:
        _col2im_scatter(cols, offsets, first_col, image)
    else:
        _col2im(cols, geometry, first_col, image)


def _absent(dtype):
    """The epilogue's operand for a scale or shift left out: empty, not None (Conv._epilogue_operands)."""
    return np.empty((0, 0), dtype)


@njit
def _chunk_bounds(chunk_index, chunk, n_batch):
    first = chunk_index * chunk
    return first, min(chunk, n_batch - first)


@njit
def _normalised_columns(image, affine, relu, cols, first_col):
    """cols[c, first_col + p] = (image[c, p] - affine[0, c]) * affine[1, c] + affine[2, c],
    then relu where `relu`: an eval-mode batchnorm (and relu) fused before a pointwise conv
    (Conv.fuse_input_chain), computed exactly as batchnorm's own kernel computes it, into
    the column buffer the GEMM reads while it is in cache."""
    for c in range(image.shape[0]):
        centre, scale, shift = affine[0, c], affine[1, c], affine[2, c]
        source = image[c]
        row = cols[c]
        for p in range(image.shape[1]):
            v = (source[p] - centre) * scale + shift
            if relu and v < 0:
                v = 0
            row[_u(first_col + p)] = v


@pnjit
def _conv_forward(x, weight, scale, shift, relu, out, geometry, offsets, pointwise, chunk, cols, staging,
                  in_affine, in_relu):
    """The epilogue (scale, shift, relu) as in arrays.epilogue_rows, per group. cols / staging: (workers, rows,
    chunk * positions) per-worker buffers for a chunk's
    column matrix and GEMM result (F/G, samples * positions), scattered to `out` afterwards; a
    short last chunk uses their first columns (the GEMMs take the buffers' row length as
    their leading dimension). in_affine: (3, C) centre, scale and shift of a batchnorm fused
    before a pointwise conv, then relu where in_relu (_normalised_columns), written into the
    columns; (3, 0) for none."""
    n_batch, groups, rows, positions = out.shape
    depth = weight.shape[2]
    workers = cols.shape[0]
    stride = cols.shape[2]
    n_chunks = (n_batch + chunk - 1) // chunk
    prologue = in_affine.shape[1] > 0
    for worker in prange(workers):
        chunk_cols = cols[worker]
        for chunk_index in range(worker, n_chunks, workers):
            first, count = _chunk_bounds(chunk_index, chunk, n_batch)
            width = count * positions
            for g in range(groups):
                if count == 1:
                    if pointwise and not prologue:
                        gemm(False, False, rows, positions, depth, weight[g], 0, depth,
                             x[first, g], 0, positions, 0.0, out[first, g], 0, positions)
                    else:
                        if prologue:
                            _normalised_columns(x[first, g], in_affine, in_relu, chunk_cols, 0)
                        else:
                            _to_columns(x[first, g], geometry, offsets, chunk_cols, 0)
                        gemm(False, False, rows, positions, depth, weight[g], 0, depth,
                             chunk_cols, 0, stride, 0.0, out[first, g], 0, positions)
                    epilogue_rows(scale, shift, g, relu, out[first, g], 0, rows)
                    continue
                for s in range(count):
                    if prologue:
                        _normalised_columns(x[first + s, g], in_affine, in_relu, chunk_cols, s * positions)
                    else:
                        _to_columns(x[first + s, g], geometry, offsets, chunk_cols, s * positions)
                result = staging[worker]
                gemm(False, False, rows, width, depth, weight[g], 0, depth, chunk_cols, 0, stride,
                     0.0, result, 0, stride)
                for s in range(count):
                    copy_rows(out[first + s, g], result[:, s * positions:(s + 1) * positions])
                    epilogue_rows(scale, shift, g, relu, out[first + s, g], 0, rows)


@pnjit
def _conv_forward_split(x, weight, scale, shift, relu, out, geometry, offsets, pointwise, cols, workers):
    """_conv_forward for a batch smaller than the workers (latency, batch 1): the workers share
    each sample instead of taking whole samples, the column matrix by input channels, then
    its GEMM and epilogue by output features, so no core idles. cols: as _conv_forward's at
    one sample a chunk; all `workers` share the first worker's buffer. Every worker's GEMM
    reads every worker's columns: a second parallel region per (sample, group) orders the
    two, at ~6 us."""
    n_batch, groups, rows, positions = out.shape
    channels = x.shape[2]
    depth = weight.shape[2]
    taps = depth // channels
    columns = cols[0]
    for n in range(n_batch):
        for g in range(groups):
            if not pointwise:
                for worker in prange(workers):
                    lo, hi = part_bounds(channels, workers, worker)
                    _to_columns(x[n, g, lo:hi], geometry, offsets, columns[lo * taps:hi * taps], 0)
            for worker in prange(workers):
                lo, hi = part_bounds(rows, workers, worker)
                source = x[n, g] if pointwise else columns
                gemm(False, False, hi - lo, positions, depth, weight[g], lo * depth, depth,
                     source, 0, positions, 0.0, out[n, g], lo * positions, positions)
                epilogue_rows(scale, shift, g, relu, out[n, g], lo, hi)


@pnjit
def _conv_backward(x, weight, gout, gx, want_gx, gweight, gbias, geometry, offsets, pointwise, chunk,
                   cols, staging, gweight_partial, gbias_partial):
    """gweight[g] = sum over chunks of gout_chunk @ im2col(x_chunk)^T;
    gx_chunk = col2im(weight[g]^T @ gout_chunk), where want_gx. gx is an array either way
    (unwritten without want_gx): a None there, a network's first layer, would compile a second
    copy of this function (~6 s of every cold start).

    Worker 0 sums its weight gradient straight into gweight, worker w > 0 into
    gweight_partial[w - 1] (the GEMMs accumulate); the partial sums are added last. cols and
    staging as in _conv_forward."""
    n_batch, groups, rows, positions = gout.shape
    depth = weight.shape[2]
    workers = cols.shape[0]
    stride = cols.shape[2]
    n_chunks = (n_batch + chunk - 1) // chunk
    for worker in prange(workers):
        if gbias is not None:
            for g in range(groups):
                fill(gbias_partial[worker, g], 0)
        chunk_cols = cols[worker]
        for chunk_index in range(worker, n_chunks, workers):
            first, count = _chunk_bounds(chunk_index, chunk, n_batch)
            width = count * positions
            for g in range(groups):
                if count == 1:
                    gout_chunk, gout_stride = gout[first, g], positions
                else:       # the chunk's gradients side by side, like its columns
                    gout_chunk, gout_stride = staging[worker], stride
                    for s in range(count):
                        copy_rows(gout_chunk[:, s * positions:(s + 1) * positions], gout[first + s, g])
                if gbias is not None:
                    accumulate_row_sums(gout_chunk[:, :width], gbias_partial[worker, g])
                if gweight is not None:
                    if pointwise and count == 1:
                        inputs, inputs_stride = x[first, g], positions
                    else:
                        for s in range(count):
                            _to_columns(x[first + s, g], geometry, offsets, chunk_cols, s * positions)
                        inputs, inputs_stride = chunk_cols, stride
                    total = gweight[g] if worker == 0 else gweight_partial[worker - 1, g]
                    gemm(False, True, rows, depth, width, gout_chunk, 0, gout_stride, inputs, 0, inputs_stride,
                         0.0 if chunk_index == worker else 1.0, total, 0, depth)
                if want_gx:
                    if pointwise and count == 1:
                        gemm(True, False, depth, positions, rows, weight[g], 0, depth, gout_chunk, 0, positions,
                             0.0, gx[first, g], 0, positions)
                    else:
                        gemm(True, False, depth, width, rows, weight[g], 0, depth, gout_chunk, 0, gout_stride,
                             0.0, chunk_cols, 0, stride)
                        for s in range(count):
                            _from_columns(chunk_cols, geometry, offsets, s * positions, gx[first + s, g])
    busy_workers = min(workers, n_chunks)
    for g in range(groups):     # loops, not array expressions: see runtime/cpu/arrays.py
        if gweight is not None:
            for worker in range(1, busy_workers):
                for f in range(rows):
                    add_into(gweight[g, f], gweight_partial[worker - 1, g, f])
        if gbias is not None:
            fill(gbias[g], 0)
            for worker in range(busy_workers):
                add_into(gbias[g], gbias_partial[worker, g])


# ---- sibling pointwise layers: one GEMM for several 1x1 convolutions of one input ------------
#
# An inception module's 1x1 convolutions all read the same tensor. Each alone is one GEMM per
# sample with as many rows as it has features, and thin GEMMs run BLAS far below its peak
# (docs/CPU-BACKEND.md, "Measurements behind the kernels' choices").
# The plan hands such siblings to the first of them (its `_fuse_siblings`, Conv.lead_siblings),
# which stacks their weights into one (sum of F, C) matrix: forward is one GEMM per block of a
# sample's columns into a staging buffer, whose rows are scattered to each layer's output
# through that layer's epilogue; backward stacks the output gradients (masked by each fused
# relu) into the staging buffer and runs one weight-gradient GEMM and one input-gradient GEMM
# (K = sum of F, where apart the input gradient took one GEMM per layer and an addition of
# their results). Column blocks of SIBLING_COLUMNS keep the staging buffer in L2.

SIBLING_COLUMNS = 256


@pnjit
def _siblings_forward(x, weight, scale, shift, relu, outs, rows, workers, staging):
    """outs[i][n] (F_i, P) = the epilogue of rows [rows[i], rows[i+1]) of weight (F, C) @ x[n]
    (C, P), row r's epilogue being * scale[r] + shift[r], then relu where relu[r]; staging:
    (workers, F, SIBLING_COLUMNS). The workers take blocks of a sample's columns in turn, so
    a batch of one still keeps them all busy."""
    n_batch, channels, positions = x.shape
    features = weight.shape[0]
    width = staging.shape[2]
    blocks = (positions + width - 1) // width
    for worker in prange(workers):
        result = staging[worker]
        for block in range(worker, n_batch * blocks, workers):
            n, first = block // blocks, (block % blocks) * width
            cols = min(width, positions - first)
            gemm(False, False, features, cols, channels, weight, 0, channels, x[n], first, positions,
                 0.0, result, 0, width)
            for i in range(len(outs)):
                target = outs[i][n]
                for r in range(rows[i], rows[i + 1]):
                    scale_shift(target[r - rows[i], first:first + cols], result[r, :cols], scale[r], shift[r],
                                relu[r] != 0)


@pnjit
def _siblings_backward(x, weight, outs, gouts, relu, rows, gx, gweight, gbias, workers, staging,
                       gweight_partial, gbias_partial):
    """With G_n the stacked output gradients of sample n (F, P), gouts[i][n] on rows
    [rows[i], rows[i+1]), each masked where outs[i][n] is 0 if its relu is fused (relu[r]):
    gweight (F, C) = sum over n of G_n @ x[n]^T, gbias (F) = G's row sums, gx[n] (C, P) =
    weight^T @ G_n (gx None: not wanted). Worker 0 sums into gweight, worker w > 0 into
    gweight_partial[w - 1]; gbias_partial (workers, F); staging as in _siblings_forward."""
    n_batch, channels, positions = x.shape
    features = weight.shape[0]
    width = staging.shape[2]
    for worker in prange(workers):
        fill(gbias_partial[worker], 0)
        total = gweight if worker == 0 else gweight_partial[worker - 1]
        grads = staging[worker]
        for n in range(worker, n_batch, workers):
            for first in range(0, positions, width):
                cols = min(width, positions - first)
                for i in range(len(gouts)):
                    gout, out = gouts[i][n], outs[i][n]
                    for r in range(rows[i], rows[i + 1]):
                        source = gout[r - rows[i], first:first + cols]
                        row = grads[r, :cols]
                        if relu[r] != 0:
                            activated = out[r - rows[i], first:first + cols]
                            for k in range(cols):
                                row[k] = relu_grad(activated[k], source[k])
                        else:
                            copy_into(row, source)
                        gbias_partial[worker, r] += row_sum(row)
                gemm(False, True, features, channels, cols, grads, 0, width, x[n], first, positions,
                     0.0 if n == worker and first == 0 else 1.0, total, 0, channels)
                if gx is not None:
                    gemm(True, False, channels, cols, features, weight, 0, channels, grads, 0, width,
                         0.0, gx[n], first, positions)
    fill(gbias, 0)          # loops, not array expressions: see runtime/cpu/arrays.py
    for worker in range(min(workers, n_batch)):
        if worker > 0:
            for r in range(features):
                add_into(gweight[r], gweight_partial[worker - 1, r])
        add_into(gbias, gbias_partial[worker])


@njit
def _deconv_forward(x, weight, bias, out, geometry, pointwise, cols):
    """out[n, g] = col2im(weight[g]^T @ x[n, g]): a conv's input-gradient pass, where the
    output is the image and the input is the grid the kernel slides over."""
    for n in range(x.shape[0]):
        for g in range(x.shape[1]):
            if pointwise:
                np.dot(weight[g].T, x[n, g], out[n, g])
            else:
                np.dot(weight[g].T, x[n, g], cols)
                _col2im(cols, geometry, 0, out[n, g])
            if bias is not None:
                epilogue_rows(bias[:0], bias, g, False, out[n, g], 0, out.shape[2])     # no scale


@njit
def _deconv_backward(x, weight, gout, gx, gweight, gbias, geometry, pointwise, cols, gweight_sample):
    """With C = im2col(gout[n, g]): gx[n, g] = weight[g] @ C, gweight[g] = sum_n x[n, g] @ C^T."""
    if gweight is not None:
        gweight[:] = 0
    if gbias is not None:
        gbias[:] = 0
    for n in range(x.shape[0]):
        for g in range(x.shape[1]):
            if gbias is not None:
                accumulate_row_sums(gout[n, g], gbias[g])
            if gweight is None and gx is None:
                continue            # only the bias gradient is wanted: no column matrix
            if pointwise:
                gout_cols = gout[n, g]
            else:
                _im2col(gout[n, g], geometry, cols, 0)
                gout_cols = cols
            if gweight is not None:
                np.dot(x[n, g], gout_cols.T, gweight_sample)
                gweight[g] += gweight_sample
            if gx is not None:
                np.dot(weight[g], gout_cols, gx[n, g])


def _view(a, shape):
    """`a` reshaped without copying: results written through the view must land in `a`."""
    return None if a is None else a.reshape(shape, copy=False)


class _ConvBase(Kernel):
    """Geometry and buffers shared by conv and deconv; `transposed` says which one.

    In both, the "image" is the side the kernel window reads (conv: input, deconv: output) and
    the "grid" is the side with one position per window (conv: output, deconv: input).
    """
    backward_reads_out = False        # gradients need x, the weight and gout, never the output
    transposed = False

    def __init__(self, spec):
        super().__init__(spec)
        a = spec.attrs
        n, in_channels, in_h, in_w = spec.in_shapes[0]
        out_channels = a["channels"]
        kh, kw = a["kernel"]
        sh, sw = a["stride"]
        ph, pw = a["pad"]
        dh, dw = a.get("dilation", (1, 1))    # deconv has no dilation attribute
        groups = a["groups"]
        # The output size from the shape rules of docs/OPS.md (equal to spec.out_shape).
        if self.transposed:
            oh, ow = a["output_pad"]
            out_h, out_w = (in_h - 1) * sh - 2 * ph + kh + oh, (in_w - 1) * sw - 2 * pw + kw + ow
        else:
            out_h = (in_h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            out_w = (in_w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        self.has_bias = a["bias"]
        self.pointwise = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
        if self.transposed:
            image_h, image_w, grid_h, grid_w = out_h, out_w, in_h, in_w
            window_channels = out_channels // groups
        else:
            image_h, image_w, grid_h, grid_w = in_h, in_w, out_h, out_w
            window_channels = in_channels // groups
        self.geometry = (image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w)
        self.window_depth = window_channels * kh * kw      # rows of a column matrix
        self.grid_positions = grid_h * grid_w
        self.x_shape = (n, groups, in_channels // groups, in_h * in_w)
        self.out_shape = (n, groups, out_channels // groups, out_h * out_w)
        weight_rows = (in_channels if self.transposed else out_channels) // groups
        self.weight_shape = (groups, weight_rows, self.window_depth)
        self.bias_shape = (groups, out_channels // groups)

    def _operands(self, xs, params, out):
        bias = params["bias"] if self.has_bias else None
        return (_view(xs[0], self.x_shape), _view(params["weight"], self.weight_shape),
                _view(bias, self.bias_shape), _view(out, self.out_shape))

    def _grads(self, gout, gxs, gparams):
        return (_view(gout, self.out_shape), _view(gxs[0], self.x_shape),
                _view(gparams.get("weight"), self.weight_shape),
                _view(gparams.get("bias"), self.bias_shape))


@register("cpu", "conv")
class Conv(FusesRelu, _ConvBase):
    """Every lowering ends in one epilogue per output block, done while the block is in cache
    (arrays.epilogue_rows; Winograd's as it scatters its outputs): the bias, and what the plan fused in,
    a following relu (`fuse_activation`, training or inference) and, in inference plans, a
    batchnorm before it (`fuse_batchnorm`). In eval mode a batchnorm is a per-channel affine
    map, so conv -> batchnorm -> relu becomes one conv with a scale and a shift and no pass
    over the activations of its own. Pointwise layers that read one tensor may also run as one
    call of the first of them (`sibling_key`, `lead_siblings`: "sibling pointwise layers"
    above)."""
    # Everything but the shifted path's rearranged weights is used within one call (plan.py),
    # and F(2x2) Winograd's transformed weights, which its backward reads (__init__).
    scratch_workspace = ("cols", "staging", "gweight_partial", "gbias_partial",
                         "padded", "wide", "gpadded", "gtaps_partial",
                         "winograd_u", "winograd_v", "winograd_m", "winograd_windows", "winograd_outputs",
                         "winograd_du", "winograd_weights", "unrolled", "masked_grad",
                         "sibling_weight", "sibling_staging", "sibling_gweight", "sibling_gbias")
    folded_batchnorm_eps = None     # set by fuse_batchnorm
    input_batchnorm_eps = None      # set by fuse_input_chain: a batchnorm (and relu) before the conv
    input_relu = False
    siblings = ()                   # set by lead_siblings: the other layers this one's calls compute

    def fuse_inference(self, op, attrs) -> bool:
        """The plan's hook for a following node with parameters in an inference plan: a
        batchnorm only (fuse_batchnorm)."""
        return op == "batchnorm" and self.fuse_batchnorm(attrs)

    def fuse_batchnorm(self, attrs) -> bool:
        """Take over the eval-mode batchnorm that follows (inference plans only: training
        normalises with batch statistics): forward then writes
        (conv + bias - running_mean) * weight / sqrt(running_var + eps) + bias of the batchnorm,
        whose parameters arrive among this node's as "batchnorm.<name>". A relu fused before it
        would apply first, so it is refused then."""
        if self.relu or self.folded_batchnorm_eps is not None:
            return False
        self.folded_batchnorm_eps = float(attrs.get("eps", 1e-5))
        return True

    def fuse_input_chain(self, nodes) -> bool:
        """The plan's hook for the call feeding this layer in an inference plan: an eval-mode
        batchnorm, or batchnorm -> relu (DenseNet's pre-activation before each 1x1 conv), in
        front of a pointwise conv of one group that takes whole samples. Forward then
        normalises each sample into the column buffer its GEMM reads (_normalised_columns)
        instead of reading a normalised tensor that a call of its own wrote to memory and
        this one read back; the batchnorm's parameters arrive as "input.batchnorm.<name>"."""
        ops = [op for op, _ in nodes]
        if (ops not in (["batchnorm"], ["batchnorm", "relu"]) or self.input_batchnorm_eps is not None
                or not self.pointwise or self.weight_shape[0] != 1 or self.unrolled or self.split_samples
                or self.siblings):
            return False
        self.input_batchnorm_eps = float(nodes[0][1].get("eps", 1e-5))
        self.input_relu = len(ops) == 2
        return True

    def _input_affine(self, params):
        """(3, C) float32: the fused input batchnorm's centre, scale and shift as batchnorm's
        own kernel computes them in eval mode (1/std in float64, rounded to float32, times the
        weight in float32), so the fused pass gives the separate calls' values; (3, 0) for none."""
        if self.input_batchnorm_eps is None:
            return np.empty((3, 0), np.float32)
        invstd = (1.0 / np.sqrt(params["input.batchnorm.running_var"].astype(np.float64)
                                + self.input_batchnorm_eps)).astype(np.float32)
        return np.stack([params["input.batchnorm.running_mean"], params["input.batchnorm.weight"] * invstd,
                         params["input.batchnorm.bias"]]).astype(np.float32, copy=False)

    def sibling_key(self):
        """Layers with equal keys that read one tensor may share their GEMMs (the plan's
        _fuse_siblings; "sibling pointwise layers" above): pointwise, one group, on the path
        that GEMMs each sample straight from its image."""
        if not (self.pointwise and self.weight_shape[0] == 1 and self.chunk == 1 and not self.unrolled
                and self.input_batchnorm_eps is None):
            return None
        return ("pointwise", self.x_shape)

    def lead_siblings(self, siblings) -> bool:
        """Compute the outputs (and in backward the gradients) of `siblings` too, other Conv
        kernels with this one's sibling_key; their operands arrive through bind_siblings."""
        members = [self, *siblings]
        self.siblings = list(siblings)
        self.sibling_rows = np.cumsum([0] + [k.out_shape[2] for k in members]).astype(np.int64)
        self.sibling_relu = np.concatenate([np.full(k.out_shape[2], k.relu, np.uint8) for k in members])
        n_batch, _, channels, positions = self.x_shape
        flops = 2 * n_batch * int(self.sibling_rows[-1]) * channels * positions
        threads = numba.get_num_threads() if parallel_gemm(flops) else 1
        self.sibling_workers = max(1, min(threads, n_batch))     # backward: whole samples per worker
        # forward: blocks of columns per worker (_siblings_forward), enough for batch 1
        self.sibling_forward_workers = max(1, min(threads, n_batch * -(-positions // SIBLING_COLUMNS)))
        return True

    def bind_siblings(self, operands):
        """Each sibling's (params, out, gout, gparams), as the plan bound them (gout None and
        gparams empty outside backward)."""
        self.sibling_operands = operands

    def _sibling_workspace(self):
        features, channels = int(self.sibling_rows[-1]), self.x_shape[2]
        workers = self.sibling_workers
        return {
            "sibling_weight": ((features, channels), "float32"),         # the weights stacked
            "sibling_staging": ((self.sibling_forward_workers, features, SIBLING_COLUMNS), "float32"),
            "sibling_gweight": ((features, channels), "float32"),
            "sibling_gbias": ((features,), "float32"),
            "gweight_partial": ((workers - 1, features, channels), "float32"),
            "gbias_partial": ((workers, features), "float32"),
        }

    def _sibling_members(self, params, out, gout=None, gparams=None):
        """(kernel, params, out, gout, gparams, first row, last row) of every layer of the group."""
        operands = [(params, out, gout, gparams or {})] + list(self.sibling_operands)
        kernels = [self, *self.siblings]
        return [(k, *ops, int(self.sibling_rows[i]), int(self.sibling_rows[i + 1]))
                for i, (k, ops) in enumerate(zip(kernels, operands))]

    def _stack_weights(self, members, weight):
        for _, params, _, _, _, lo, hi in members:
            weight[lo:hi] = params["weight"].reshape(hi - lo, -1)
        return weight

    def _sibling_forward(self, x, params, out, ws):
        members = self._sibling_members(params, out)
        features = int(self.sibling_rows[-1])
        scale, shift = np.ones(features, x.dtype), np.zeros(features, x.dtype)
        for kernel, params, _, _, _, lo, hi in members:
            bias = params["bias"] if kernel.has_bias else None
            member_scale, member_shift = kernel._epilogue_operands(params, bias)
            if member_scale.size:
                scale[lo:hi] = member_scale.reshape(-1)
            if member_shift.size:
                shift[lo:hi] = member_shift.reshape(-1)
        n_batch, _, channels, positions = self.x_shape
        outs = tuple(out.reshape(n_batch, hi - lo, positions) for _, _, out, _, _, lo, hi in members)
        _siblings_forward(x.reshape(n_batch, channels, positions), self._stack_weights(members, ws["sibling_weight"]),
                          scale, shift, self.sibling_relu, outs, self.sibling_rows, self.sibling_forward_workers,
                          ws["sibling_staging"])

    def _sibling_backward(self, x, params, out, gout, gx, gparams, ws):
        members = self._sibling_members(params, out, gout, gparams)
        n_batch, _, channels, positions = self.x_shape
        outs = tuple(out.reshape(n_batch, hi - lo, positions) for _, _, out, _, _, lo, hi in members)
        gouts = tuple(gout.reshape(n_batch, hi - lo, positions) for _, _, _, gout, _, lo, hi in members)
        gweight, gbias = ws["sibling_gweight"], ws["sibling_gbias"]
        _siblings_backward(x.reshape(n_batch, channels, positions), self._stack_weights(members, ws["sibling_weight"]),
                           outs, gouts, self.sibling_relu, self.sibling_rows,
                           None if gx is None else gx.reshape(n_batch, channels, positions), gweight, gbias,
                           self.sibling_workers, ws["sibling_staging"], ws["gweight_partial"], ws["gbias_partial"])
        for _, _, _, _, member_gparams, lo, hi in members:
            if "weight" in member_gparams:
                member_gparams["weight"].reshape(hi - lo, channels)[:] = gweight[lo:hi]
            if "bias" in member_gparams:
                member_gparams["bias"][:] = gbias[lo:hi]

    def _epilogue_operands(self, params, bias):
        """(scale, shift) of the epilogue, (G, F/G) each or empty (0, 0) where left out: the
        bias alone, or with a folded batchnorm conv * scale + shift, scale = weight /
        sqrt(running_var + eps) and shift = bias_bn - running_mean * scale (+ the conv's bias
        * scale). Arrays either way, never None: a None is a type of its own to Numba, and the
        training plan's call (no scale) would compile every forward lowering again for the
        inference plan's (a folded batchnorm's scale): 6-9 s of the first evaluation of the
        README's digits run on an empty cache."""
        if self.folded_batchnorm_eps is None:
            absent = _absent(params["weight"].dtype)
            return absent, absent if bias is None else bias
        scale = params["batchnorm.weight"] / np.sqrt(params["batchnorm.running_var"] + self.folded_batchnorm_eps)
        shift = params["batchnorm.bias"] - params["batchnorm.running_mean"] * scale
        if bias is not None:
            shift += bias.reshape(-1) * scale
        return scale.reshape(self.bias_shape), shift.reshape(self.bias_shape)

    def __init__(self, spec):
        super().__init__(spec)
        n_batch, groups, rows, positions = self.out_shape
        flops = 2 * n_batch * groups * rows * positions * self.window_depth
        # Small layers (LeNet-sized) stay on one worker: a wake-up would cost more than it saves.
        threads = numba.get_num_threads() if parallel_gemm(flops) else 1
        self.threads = threads
        self.workers = max(1, min(threads, n_batch))
        # A batch smaller than the threads (latency: batch 1): the forward pass shares each
        # sample between all of them (_conv_forward_split and its kin; the unrolled lowering
        # splits by features at any batch). The backward passes keep whole samples per worker.
        self.split_samples = n_batch < threads
        image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = self.geometry
        # Stride 1: shifted windows (conv_shifted.py) where they pay.
        self.shifted = ((sh, sw) == (1, 1) and not self.pointwise
                        and shifted_pays(grid_h * (image_w + 2 * pw), self.x_shape[2], rows, n_batch))
        per_worker = -(-n_batch // self.workers)
        self.chunk = max(1, min(per_worker, -(-MIN_GEMM_COLUMNS // self.grid_positions)))
        # im2col's columns by a table of offsets on short grid rows (gather_pays); an empty
        # table asks for the loops, and keeps one compiled signature for both.
        self.offsets = (window_offsets(self.geometry) if gather_pays(grid_w)
                        else np.empty((0, 0), np.int64))
        # 3x3, stride 1, one group: Winograd where it pays (conv_winograd.py), in place of the
        # path chosen above.
        channels = self.x_shape[2]
        self.winograd = (groups == 1 and (kh, kw) == (3, 3) and (sh, sw) == (1, 1) and (dh, dw) == (1, 1)
                         and max(ph, pw) <= 2 and winograd_pays(channels, rows, n_batch * positions))
        # An input grid no bigger than the kernel window: unrolled weights (conv_unrolled.py), in
        # place of any of the above.
        self.unrolled = unrolled_pays(image_h * image_w, kh * kw, groups,
                                      channels * image_h * image_w * rows * positions, n_batch)
        if self.unrolled:
            self.winograd = self.shifted = False
            self.taps = tap_map(self.geometry)
        if self.winograd:
            self._plain_epilogue = {}       # dtype -> (ones, zeros), see _winograd
            self._no_planes = np.empty(0, np.int64)
            self.winograd_plan = WinogradPlan(n_batch, channels, rows, image_h, image_w, ph, pw, grid_h, grid_w,
                                              self.workers)
            if self.winograd_plan.flip_planes is not None:
                # the input gradient reads the forward's transformed weights: they live until then
                self.scratch_workspace = tuple(n for n in Conv.scratch_workspace if n != "winograd_u")

    @property
    def lowering(self) -> str:
        """The lowering __init__ chose: unrolled, winograd, shifted or im2col."""
        return ("unrolled" if self.unrolled else "winograd" if self.winograd else "shifted" if self.shifted
                else "im2col")

    def describe(self) -> str:
        words = [f"conv {self.lowering}"]
        if self.input_batchnorm_eps is not None:
            words.insert(0, "batchnorm +relu ->" if self.input_relu else "batchnorm ->")
        if self.siblings:
            words.append(f"leading {len(self.siblings)} siblings")
        elif self.split_samples and not self.unrolled:
            words.append("samples shared")
        if self.folded_batchnorm_eps is not None:
            words.append("+batchnorm")
        if self.relu:
            words.append("+relu")
        return " ".join(words)

    def workspace(self):
        if self.siblings:
            return self._sibling_workspace()
        # the gradient at the pre-activation of a fused relu (backward)
        masked = {"masked_grad": ((int(np.prod(self.spec.out_shape)) if self.relu else 0,), "float32")}
        if self.unrolled:
            _, _, rows, positions = self.out_shape
            return {"unrolled": ((rows * positions, self.x_shape[2] * self.x_shape[3]), "float32"), **masked}  # D^T
        if self.winograd:
            return {**self._winograd_workspace(), **masked}
        return {**(self._shifted_workspace() if self.shifted else self._im2col_workspace()), **masked}

    def _winograd_workspace(self):
        rows = self.out_shape[2]
        plan, workers, threads = self.winograd_plan, self.workers, self.threads   # the transforms' scratch: per thread
        return {
            "winograd_u": ((plan.u_size,), "float32"),                     # transformed weights
            "winograd_v": ((workers, plan.tiles_size), "float32"),
            "winograd_m": ((workers, plan.tiles_size), "float32"),
            "winograd_windows": ((threads, plan.windows_size), "float32"),
            "winograd_outputs": ((threads, plan.outputs_size), "float32"),
            "winograd_weights": ((threads, plan.weight_scratch_size), "float32"),   # the weight transforms' scratch
            "winograd_du": ((workers, plan.u_size), "float32"),            # per-worker weight gradients
            "gbias_partial": ((workers, rows), "float32"),
        }

    def _im2col_workspace(self):
        groups, rows, depth = self.weight_shape
        width = self.chunk * self.grid_positions
        # A pointwise layer whose chunks are single samples GEMMs from the image: no columns,
        # unless a batchnorm fused before it normalises the sample into them.
        no_cols = self.pointwise and self.chunk == 1 and self.input_batchnorm_eps is None
        return {
            "cols": ((self.workers, 0 if no_cols else depth, width), "float32"),   # a chunk's column matrix
            "staging": ((self.workers, rows if self.chunk > 1 else 0, width), "float32"),
            "gweight_partial": ((self.workers - 1, groups, rows, depth), "float32"),
            "gbias_partial": ((self.workers, groups, rows), "float32"),
        }

    def _shifted_workspace(self):
        groups, rows, depth = self.weight_shape
        image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = self.geometry
        channels = self.x_shape[2]
        row_width = image_w + 2 * pw
        padded = (image_h + 2 * ph) * row_width + (kw - 1) * dw
        return {
            "taps": ((groups, kh * kw, rows, channels), "float32"),    # forward writes, backward reads
            "padded": ((self.workers, channels, padded), "float32"),  # one (sample, group)'s padded image
            "wide": ((self.workers, rows, grid_h * row_width), "float32"),
            "gpadded": ((self.workers, channels, padded), "float32"),
            "gtaps_partial": ((self.workers, groups, kh * kw, rows, channels), "float32"),
            "gbias_partial": ((self.workers, groups, rows), "float32"),
        }

    def forward(self, ctx, xs, params, out, ws):
        if self.siblings:
            self._sibling_forward(xs[0], params, out, ws)
            return
        x, weight, bias, out = self._operands(xs, params, out)
        scale, shift = self._epilogue_operands(params, bias)
        if self.unrolled:
            # one group: every operand as one matrix per sample (or per output feature)
            unrolled_forward(x.reshape(x.shape[0], -1), weight[0], scale.reshape(-1),
                             shift.reshape(-1), self.relu, out.reshape(out.shape[0], -1),
                             self.taps, self.threads, ws["unrolled"])
        elif self.winograd:
            self._winograd(ws, weight, False, x, scale, shift, self.relu, out)
        elif self.shifted and self.split_samples:
            shifted_forward_split(x, weight, scale, shift, self.relu, out, self.geometry, ws["taps"], ws["padded"],
                                   ws["wide"], self.threads)
        elif self.shifted:
            shifted_forward(x, weight, scale, shift, self.relu, out, self.geometry, ws["taps"], ws["padded"],
                             ws["wide"])
        elif self.split_samples:
            _conv_forward_split(x, weight, scale, shift, self.relu, out, self.geometry, self.offsets,
                                self.pointwise, ws["cols"], self.threads)
        else:
            _conv_forward(x, weight, scale, shift, self.relu, out, self.geometry, self.offsets, self.pointwise,
                          self.chunk, ws["cols"], ws["staging"], self._input_affine(params), self.input_relu)

    def _winograd(self, ws, weight, input_gradient, source, scale, shift, relu, target):
        """target = the 3x3 convolution of source by Winograd, then the epilogue: the layer's
        forward (x -> out), or its input gradient (gout -> gx, flipped weights and padding
        2 - pad, no epilogue)."""
        plan = self.winograd_plan
        bt, g, _, at, _ = plan.matrices[source.dtype]
        grid = plan.input_grad if input_gradient else plan.forward
        # one group: (N, 1, C, H*W) -> (N, C, H*W), still C-contiguous
        source = source.reshape(source.shape[0], source.shape[2], source.shape[3])
        target = target.reshape(target.shape[0], target.shape[2], target.shape[3])
        # The epilogue's operands are arrays either way (see winograd_conv): ones and zeros,
        # made once per dtype, where there is no scale or shift.
        if source.dtype not in self._plain_epilogue:
            size = max(self.out_shape[2], self.x_shape[2])      # features of either pass
            self._plain_epilogue[source.dtype] = (np.ones(size, source.dtype), np.zeros(size, source.dtype))
        ones, zeros = self._plain_epilogue[source.dtype]
        features = target.shape[1]
        scale = ones[:features] if scale.size == 0 else scale[0]
        shift = zeros[:features] if shift.size == 0 else shift[0]
        # F(2x2)'s input gradient reads the forward's transformed weights (winograd_conv)
        planes = plan.flip_planes if input_gradient and plan.flip_planes is not None else self._no_planes
        weight = weight.reshape(self.out_shape[2], -1, 9)
        if self.split_samples:
            winograd_conv_split(source, grid.sources, grid.targets, bt, at, weight, g, input_gradient, planes,
                                ws["winograd_u"], ws["winograd_weights"], scale, shift, relu, target, ws["winograd_v"],
                                ws["winograd_m"], ws["winograd_windows"], ws["winograd_outputs"], self.threads)
        else:
            winograd_conv(source, grid.sources, grid.targets, bt, at, weight, g, input_gradient, planes,
                          ws["winograd_u"], ws["winograd_weights"][0], scale, shift, relu, target, grid.chunk,
                          ws["winograd_v"], ws["winograd_m"], ws["winograd_windows"], ws["winograd_outputs"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if self.folded_batchnorm_eps is not None or self.input_batchnorm_eps is not None:
            raise RuntimeError(f"{self.spec.name}: a conv with a batchnorm folded in runs in inference plans only")
        if self.siblings:
            self._sibling_backward(xs[0], params, out, gout, gxs[0], gparams, ws)
            return
        x, weight, _, out = self._operands(xs, params, out)
        if self.relu:       # the gradient at the pre-activation: relu's own backward, from out
            masked = ws["masked_grad"]
            relu_backward(out.reshape(-1), out.reshape(-1), gout.reshape(-1), masked, 0.0,
                          parallel_elementwise(masked.size))
            gout = masked.reshape(gout.shape)
        gout, gx, gweight, gbias = self._grads(gout, gxs, gparams)
        if self.unrolled:
            n_batch = x.shape[0]
            unrolled_backward(x.reshape(n_batch, -1), weight[0], gout.reshape(n_batch, -1),
                              None if gx is None else gx.reshape(n_batch, -1),
                              None if gweight is None else gweight[0], None if gbias is None else gbias[0],
                              self.taps, self.threads, ws["unrolled"])
            return
        if self.winograd:
            if gx is not None:
                self._winograd(ws, weight, True, gout, _absent(gout.dtype), _absent(gout.dtype), False, gx)
            if gweight is not None:
                n_batch, _, rows, positions = self.out_shape
                plan = self.winograd_plan
                bt, _, gt, _, a = plan.matrices[x.dtype]
                winograd_weight_grad(x.reshape(n_batch, x.shape[2], x.shape[3]), plan.forward.sources,
                                     plan.forward.targets, bt, a, gt, gout.reshape(n_batch, rows, positions),
                                     plan.forward.chunk, ws["winograd_v"], ws["winograd_m"], ws["winograd_windows"],
                                     ws["winograd_du"], ws["winograd_weights"][0], gweight.reshape(rows, -1, 9),
                                     ws["gbias_partial"], None if gbias is None else gbias[0])
            elif gbias is not None:     # a frozen weight with a trained bias
                np.sum(gout, axis=(0, 3), out=gbias)
            return
        if self.shifted:
            shifted_backward(x, gout, gx, gweight, gbias, self.geometry, ws["taps"], ws["padded"], ws["wide"],
                              ws["gpadded"], ws["gtaps_partial"], ws["gbias_partial"])
        else:
            _conv_backward(x, weight, gout, x if gx is None else gx, gx is not None, gweight, gbias, self.geometry,
                           self.offsets, self.pointwise, self.chunk,
                           ws["cols"], ws["staging"], ws["gweight_partial"], ws["gbias_partial"])


@register("cpu", "deconv")
class Deconv(_ConvBase):
    transposed = True
    scratch_workspace = ("cols", "gweight_sample")

    def workspace(self):
        # cols: one sample's column matrix (empty for pointwise layers, which GEMM from the
        # image itself); gweight_sample: one sample's weight gradient, before it is summed.
        cols_shape = (0, 0) if self.pointwise else (self.window_depth, self.grid_positions)
        return {"cols": (cols_shape, "float32"),
                "gweight_sample": (self.weight_shape[1:], "float32")}

    def forward(self, ctx, xs, params, out, ws):
        x, weight, bias, out = self._operands(xs, params, out)
        _deconv_forward(x, weight, bias, out, self.geometry, self.pointwise, ws["cols"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        x, weight, _, _ = self._operands(xs, params, out)
        gout, gx, gweight, gbias = self._grads(gout, gxs, gparams)
        _deconv_backward(x, weight, gout, gx, gweight, gbias, self.geometry, self.pointwise,
                         ws["cols"], ws["gweight_sample"])
