"""Winograd F(m x m, 3x3), m = 2 or 4, for the conv family's 3x3 stride-1 layers (CPU).

A 3x3 convolution computes each m x m block of outputs from an a x a tile of inputs, a = m + 2,
with 9 m^2 multiplications per (input, output) channel pair; Winograd's minimal filtering
algorithm does it with a^2 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2015):

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise over the a x a "frequency" grid)

with the constant matrices B^T (a x a), G (a x 3) and A^T (m x a) of ALGORITHMS below: 16 products
for 4 outputs (2.25x less than direct) with m = 2, 36 for 16 (4x less) with m = 4.

Summed over input channels, the elementwise products become a^2 independent GEMMs, one per grid
point xi: M[xi] (F, tiles) = U[xi] (F, C) @ V[xi] (C, tiles), U = G g G^T per channel pair (the
weight transform), V = B^T d B per input tile (the input transform). The GEMMs have the layer's
channels as M and K and tiles x samples as N, which keeps them well shaped on the small grids of
deep layers, where im2col's are not (see conv.py).

Which m (WinogradPlan, F4_MIN_GRID): F(4x4) does 44% less GEMM work than F(2x2) and moves 44% less
transformed data, but it has a quarter as many tiles, and on a 4x4 grid (one tile per sample)
its GEMMs get too thin, so it takes grids of 8 and more. Its transforms have larger constants
(up to 8 in A^T, 5 in B^T), which costs float32 accuracy: ~3e-5 absolute on outputs of size ~5
with 512 input channels (float64 reference), against ~2e-6 for F(2x2) and ~1.5e-6 for torch's
direct convolution; the kernel tests hold both to torch at 1e-4.

The input gradient of a stride-1 3x3 conv is itself one: the output gradient convolved with the
weights flipped in both spatial axes and with input/output channels swapped, padded by 2 - pad,
so `winograd_conv` serves both, each transforming the weights its way first (`flipped`, see
_transform_weights). With F(2x2) the input-gradient pass transforms nothing: flipping g in
both axes permutes the rows of G g (G's interpolation points 0, 1, -1 and infinity: the flip
swaps 0 and infinity), so the flipped kernel's U is the forward's U with its a x a grid
permuted, and each of its GEMMs reads a plane of the forward's U transposed (`planes`, see
_flip_planes), saving a serial transform per step on the large layers.
F(4x4)'s points +-2 would map to +-1/2, so it transforms. The weight gradient is the adjoint
of the same algorithm
(winograd_weight_grad): dU[xi] = sum over tiles of dM[xi] V[xi]^T with dM = A dY A^T, then
dW = G^T dU G.

Compile time: every parallel region is a function of its own for Numba to compile, seconds
each on a cold cache, so the weight transforms run serially before (winograd_conv) or after
(winograd_weight_grad) the one parallel region of each entry point: split between two workers
they would save little of a step and cost more than that in every cold start (docs/CPU-BACKEND.md,
"Measurements behind the kernels' choices").

Every transform is one primitive applied twice, a small constant matrix times a stack of rows
(_left_multiply, _right_multiply, both through _combine_rows), where each row holds one value per
tile (or per channel, for
the weight transforms): the loops over a row are long, contiguous and branch-free, so LLVM
vectorises them whatever m is, and the tiles of a whole chunk of samples go through at once.
Buffers are flat (1-d) with explicit offsets, like BLAS's view of them.
"""
import numpy as np
from numba import uint64 as _u

from dslc.runtime.cpu.arrays import add_into, fill, part_bounds, row_sum
from dslc.runtime.cpu.blas import gemm
from dslc.runtime.cpu.conv_geometry import window_offsets
from dslc.runtime.jit import njit, pnjit, prange

# m -> (B^T, G, A^T), float64; Lavin & Gray's matrices (interpolation points 0, +-1 for m = 2;
# 0, +-1, +-2 for m = 4).
ALGORITHMS = {
    2: (np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}
# Fewest GEMM columns (tiles x samples) a chunk aims for, as in conv.py's MIN_GEMM_COLUMNS.
MIN_TILE_COLUMNS = 256
# Smallest output grid side that takes F(4x4) (see the module docstring).
F4_MIN_GRID = 8
# Smallest channels * rows / (channels + rows) of a layer that takes Winograd (winograd_pays).
WINOGRAD_MIN_HARMONIC = 32


def winograd_pays(channels: int, rows: int, positions: int) -> bool:
    """Whether a 3x3 stride-1 layer with `channels` inputs and `rows` outputs per group, and
    `positions` outputs per feature in a step (batch x grid), runs faster by Winograd than on
    conv.py's other paths. Its transforms cost in proportion to channels + rows per tile, its
    GEMMs (which it makes 2.25x or 4x smaller) to channels * rows, so it pays where
    channels * rows / (channels + rows) is large; and the transform of the weights, which costs
    the same whatever the batch, must be spread over enough positions: at least the larger of
    channels and rows. Measured per layer (ms, Winograd vs the other path, positions in
    brackets), ResNet-18's inference at batch 1, 4 and 16: 512->512 at 4x4 9.4 vs 2.5 (16), 11.8
    vs 3.9 (64), 18.7 vs 14.2 (256); 256->256 at 8x8 5.5 vs 2.8 (64), 7.5 vs 4.8 (256), 11.5 vs
    18.0 (1,024); 128->128 at 16x16 1.8 vs 1.8 (256), 2.7 vs 3.5 (1,024); 64->64 at 32x32 1.3 vs
    1.7 (1,024). Training, whose input gradient reuses the transformed weights, tips earlier:
    ResNet-18 at batch 16, 512->512 at 4x4 41 vs 31 (256), but ResNet-50 at 224 and batch 16,
    512->512 at 7x7 81 vs 124 (784). Twice the larger count would have suited inference
    better (the 256-position case at 256 channels) and lost that ResNet-50 layer.
    Measured on one core (thread time), forward + backward, batch 64 unless said (ms, Winograd
    vs the best other path): 64->64 at 32x32 165 vs 192; 96->128 at 32x32 (batch 32) 171 vs
    274; 128->192 at 32x32 (batch 32) 285 vs 548; 128->128 at 16x16 105 vs 193; 32->32 at 16x16
    15.0 vs 12.7; 48->12 at 32x32 61 vs 27; 512->512 at 4x4 (F(2x2)) 127 vs 206. With F(2x2)
    alone, wide grids needed twice the threshold; F(4x4) (grids of 8 and more) removed that."""
    return channels * rows / (channels + rows) >= WINOGRAD_MIN_HARMONIC and positions >= max(channels, rows)


# ---- the primitive: a small constant matrix times a stack of rows ----------------------------

@njit
def _combine_rows(mat, row, src, first, step, dst, out, columns):
    """dst row at `out` = sum over r of mat[row, r] * src row at first + r*step (`columns`
    values each), in one pass over the row: the nonzero coefficients (at most 6: a <= 6) are
    picked first, then one loop per count of them reads every source row once and writes the
    destination once, where a pass per coefficient read and wrote it each time (the input
    transform of ResNet-18's 64 -> 64 layer took 1.5x as long so). The sum runs in the order of
    r, as that did. Unsigned indices (_u): with signed ones Numba wraps negative indices, a
    check in the inner loop that kept LLVM from vectorising it."""
    count = 0
    c0 = c1 = c2 = c3 = c4 = c5 = mat[row, 0]
    a0 = a1 = a2 = a3 = a4 = a5 = _u(0)
    for r in range(mat.shape[1]):
        coef = mat[row, r]
        if coef != 0:
            at = _u(first + r * step)
            if count == 0:
                c0, a0 = coef, at
            elif count == 1:
                c1, a1 = coef, at
            elif count == 2:
                c2, a2 = coef, at
            elif count == 3:
                c3, a3 = coef, at
            elif count == 4:
                c4, a4 = coef, at
            else:
                c5, a5 = coef, at
            count += 1
    o = _u(out)
    if count == 0:
        for col in range(columns):
            dst[o + _u(col)] = 0
    elif count == 1:
        for col in range(columns):
            dst[o + _u(col)] = c0 * src[a0 + _u(col)]
    elif count == 2:
        for col in range(columns):
            dst[o + _u(col)] = c0 * src[a0 + _u(col)] + c1 * src[a1 + _u(col)]
    elif count == 3:
        for col in range(columns):
            dst[o + _u(col)] = c0 * src[a0 + _u(col)] + c1 * src[a1 + _u(col)] + c2 * src[a2 + _u(col)]
    elif count == 4:
        for col in range(columns):
            dst[o + _u(col)] = (c0 * src[a0 + _u(col)] + c1 * src[a1 + _u(col)] + c2 * src[a2 + _u(col)]
                                + c3 * src[a3 + _u(col)])
    elif count == 5:
        for col in range(columns):
            dst[o + _u(col)] = (c0 * src[a0 + _u(col)] + c1 * src[a1 + _u(col)] + c2 * src[a2 + _u(col)]
                                + c3 * src[a3 + _u(col)] + c4 * src[a4 + _u(col)])
    else:
        for col in range(columns):
            dst[o + _u(col)] = (c0 * src[a0 + _u(col)] + c1 * src[a1 + _u(col)] + c2 * src[a2 + _u(col)]
                                + c3 * src[a3 + _u(col)] + c4 * src[a4 + _u(col)] + c5 * src[a5 + _u(col)])


@njit
def _left_multiply(mat, src, src_at, src_stride, dst, dst_at, dst_stride, inner, columns):
    """dst row (a*inner + j) = sum over r of mat[a, r] * src row (r*inner + j), for a < mat rows
    and j < inner: mat times a (mat cols x inner) grid of rows. Row k of src starts at
    src_at + k*src_stride (likewise dst); each row is `columns` values."""
    for a in range(mat.shape[0]):
        for j in range(inner):
            _combine_rows(mat, a, src, src_at + j * src_stride, inner * src_stride,
                          dst, dst_at + (a * inner + j) * dst_stride, columns)


@njit
def _right_multiply(mat, src, src_at, src_stride, dst, dst_at, dst_stride, outer, columns):
    """dst row (a*rows + b) = sum over j of mat[b, j] * src row (a*cols + j), for a < outer and
    b < rows, (rows, cols) = mat's shape: an (outer x cols) grid of rows times mat^T. Rows as
    in _left_multiply."""
    rows, cols = mat.shape
    for a in range(outer):
        for b in range(rows):
            _combine_rows(mat, b, src, src_at + a * cols * src_stride, src_stride,
                          dst, dst_at + (a * rows + b) * dst_stride, columns)


# ---- weights ---------------------------------------------------------------------------------

@njit
def _transform_weights(weight, g_matrix, flipped, u, taps, lo, hi):
    """u = G g G^T for every channel pair, g = weight[f, c] (3x3, flattened to 9; weight (F, C, 9)),
    for output features f in [lo, hi), or with `flipped` input channels c in [lo, hi). Not
    flipped: u is (a^2, F, C), flat. Flipped: (a^2, C, F), from g flipped in both axes: the
    weights of the input-gradient convolution. taps: (9 + 3a) * max(F, C) scratch.

    One row per channel, transformed for a whole row of g at once: for each output feature f
    (each input channel c when flipped) the 9 taps of every c (every f) are gathered into 9
    rows, then G g G^T is two _left/_right products over those rows."""
    n_out, n_in = weight.shape[0], weight.shape[1]
    alpha = g_matrix.shape[0]
    outer, n = (n_in, n_out) if flipped else (n_out, n_in)     # one pass per `outer`, rows of n
    half = 9 * n                                                # rows: 9 of g, then 3a of G g
    for o in range(lo, hi):
        for k in range(9):
            for i in range(n):
                taps[_u(k * n + i)] = weight[i, o, 8 - k] if flipped else weight[o, i, k]
        _left_multiply(g_matrix, taps, 0, n, taps, half, n, 3, n)
        _right_multiply(g_matrix, taps, half, n, u, o * n, outer * n, alpha, n)


@njit
def _weight_gradient_rows(du, gt_matrix, gweight, rows, lo, hi):
    """gweight[f, c] (3x3, flattened to 9) = G^T dU G for f in [lo, hi), dU = du[:, f, c] (a x a;
    du flat (a^2, F, C)): the adjoint of _transform_weights, one row of channels per feature.
    rows: scratch as for _transform_weights."""
    n_out, n_in = gweight.shape[0], gweight.shape[1]
    alpha = gt_matrix.shape[1]
    half = 9 * n_in                                             # rows: 9 of dW, then 3a of G^T dU
    for f in range(lo, hi):
        _left_multiply(gt_matrix, du, f * n_in, n_out * n_in, rows, half, n_in, alpha, n_in)
        _right_multiply(gt_matrix, rows, half, n_in, rows, 0, n_in, 3, n_in)
        for k in range(9):
            for c in range(n_in):
                gweight[f, c, k] = rows[_u(k * n_in + c)]


# ---- tiles -----------------------------------------------------------------------------------

@njit
def _gather(image, table, scratch, first, width):
    """Row k of scratch (rows of `width`), from column `first` on, = image[table[k, t]] for every
    tile t, 0 where table[k, t] is -1. The tiles innermost, so the gather vectorises."""
    for k in range(table.shape[0]):
        row = k * width + first
        for t in range(table.shape[1]):
            at = table[k, t]
            value = image[_u(max(at, 0))]
            scratch[_u(row + t)] = value if at >= 0 else 0


@njit
def _input_transform(chunk, sources, bt, v, width, scratch, lo, hi):
    """v[xi, c, s*T + t] = (B^T d B)[xi] for channels c in [lo, hi) and the a x a input window d
    of tile t of sample s:
    sources[k, t] is the flat index of the k-th input (row-major) of tile t's window in an
    image, -1 in the padding (zero). chunk (count, C, H*W); v (a^2, C, width) flat; scratch:
    2 a^2 rows of width, flat.

    The windows of the whole chunk are gathered first, one table lookup per value (faster than
    strided reads from a zero-padded copy, the rows of tiles being short), then
    transformed all at once: B^T d into the second half of scratch, then (B^T d) B into v."""
    count, n_chan = chunk.shape[0], chunk.shape[1]
    window, per_sample = sources.shape
    alpha = bt.shape[0]
    columns = count * per_sample
    plane = n_chan * width
    for c in range(lo, hi):
        for s in range(count):
            _gather(chunk[s, c], sources, scratch, s * per_sample, width)
        _left_multiply(bt, scratch, 0, width, scratch, window * width, width, alpha, columns)
        _right_multiply(bt, scratch, window * width, width, v, c * width, plane, alpha, columns)


@njit
def _output_transform(m, at_matrix, n_out, width, count, targets, scale, shift, relu, out, scratch, lo, hi):
    """out[s, f] at targets[a*m + b, t] = (A^T M A)[a, b] * scale[f] + shift[f] for features f in
    [lo, hi), then relu where
    `relu` (conv.py's epilogue, done as the outputs are scattered), for every tile t of the
    chunk's `count` samples s, from m (a^2, F, width) flat, whose columns are the chunk's tiles
    (sample by sample); targets: the flat output index of each of a tile's m^2 outputs, -1
    past the grid's edge (dropped). scratch: (m*a + m^2) rows of >= columns, flat."""
    tile, alpha = at_matrix.shape
    outputs, per_sample = targets.shape
    columns = count * per_sample
    plane = n_out * width
    y = tile * alpha * width                    # A^T M first, then the outputs, in scratch
    for f in range(lo, hi):
        _left_multiply(at_matrix, m, f * width, plane, scratch, 0, width, alpha, columns)
        _right_multiply(at_matrix, scratch, 0, width, scratch, y, width, tile, columns)
        factor, offset = scale[f], shift[f]
        for s in range(count):
            target = out[s, f]
            for k in range(outputs):
                row = y + k * width + s * per_sample
                for t in range(per_sample):
                    at = targets[k, t]
                    if at >= 0:
                        value = scratch[_u(row + t)] * factor + offset
                        target[_u(at)] = 0 if relu and value < 0 else value


@njit
def _output_gradient_transform(gout, a_matrix, n_out, width, count, targets, dm, scratch):
    """dm[xi, f, s*T + t] = (A dY A^T)[xi], dY the m x m block of gout[s, f] that tile t wrote
    (0 past the grid's edge): the adjoint of _output_transform, targets as there. a_matrix =
    A (a x m); dm (a^2, F, width) flat; scratch: (m^2 + a*m) rows of >= columns, flat."""
    alpha, tile = a_matrix.shape
    per_sample = targets.shape[1]
    columns = count * per_sample
    plane = n_out * width
    q = tile * tile * width                     # dY first, then A dY, in scratch
    for f in range(n_out):
        for s in range(count):
            _gather(gout[s, f], targets, scratch, s * per_sample, width)
        _left_multiply(a_matrix, scratch, 0, width, scratch, q, width, tile, columns)
        _right_multiply(a_matrix, scratch, q, width, dm, f * width, plane, alpha, columns)


@njit
def _chunking(n_batch, sources, chunk, v):
    """(tiles per sample, buffer columns per chunk, workers, chunks) of a winograd_conv /
    winograd_weight_grad call."""
    per_sample = sources.shape[1]
    return per_sample, chunk * per_sample, v.shape[0], (n_batch + chunk - 1) // chunk


@pnjit
def winograd_conv(x, sources, targets, bt, at_matrix, weight, g_matrix, flipped, planes, u, weight_scratch,
                  scale, shift, relu, out, chunk, v, m, windows, outputs):
    """out (N, F, Ho*Wo) = the 3x3 stride-1 convolution of x (N, C, H*W) with `weight`
    (F, C, 9), or with `flipped` the input gradient of the layer whose weight that is (see
    _transform_weights), then the epilogue: * scale, + shift (F each; ones and zeros for none:
    arrays either way, so that the forward and the input-gradient pass share one compiled
    function), relu where `relu`; sources, targets: where the tiles'
    inputs and outputs lie (_TileGrid, which holds the padding and the edges); bt, at_matrix,
    g_matrix: B^T, A^T and G in x's dtype; u: the transformed weights, flat, which the weight
    transform writes first (weight_scratch: its flat scratch). Where `planes` is not empty (the
    flipped pass of F(2x2), see _flip_planes), u already holds the forward pass's transformed
    weights, and grid point xi's GEMM reads plane planes[xi] of it, transposed.

    The batch is cut into chunks of `chunk` samples, taken by the workers in turn as in
    conv.py; v, m: (workers, tiles_size) flat per-worker buffers for a chunk's transformed inputs
    (a^2, C, chunk*tiles) and GEMM results (a^2, F, chunk*tiles); windows and outputs:
    (workers, ...) flat scratch of the input and output transforms (WinogradPlan sizes them)."""
    n_batch, n_in, n_out = x.shape[0], x.shape[1], out.shape[1]
    tile, alpha = at_matrix.shape
    per_sample, width, workers, n_chunks = _chunking(n_batch, sources, chunk, v)
    reuse = planes.shape[0] > 0
    if not reuse:
        _transform_weights(weight, g_matrix, flipped, u, weight_scratch, 0,
                           weight.shape[1] if flipped else weight.shape[0])
    for worker in prange(workers):
        for chunk_index in range(worker, n_chunks, workers):
            first = chunk_index * chunk
            count = min(chunk, n_batch - first)
            _input_transform(x[first:first + count], sources, bt, v[worker], width, windows[worker], 0, n_in)
            columns = count * per_sample
            for xi in range(alpha * alpha):
                if reuse:       # the forward's plane, (n_in, n_out), read transposed
                    gemm(True, False, n_out, columns, n_in, u, planes[xi] * n_out * n_in, n_out,
                         v[worker], xi * n_in * width, width, 0.0, m[worker], xi * n_out * width, width)
                else:
                    gemm(False, False, n_out, columns, n_in, u, xi * n_out * n_in, n_in,
                         v[worker], xi * n_in * width, width, 0.0, m[worker], xi * n_out * width, width)
            _output_transform(m[worker], at_matrix, n_out, width, count, targets, scale, shift, relu,
                              out[first:first + count], outputs[worker], 0, n_out)


@pnjit
def winograd_conv_split(x, sources, targets, bt, at_matrix, weight, g_matrix, flipped, planes, u, weight_scratch,
                        scale, shift, relu, out, v, m, windows, outputs, workers):
    """winograd_conv for a batch smaller than the workers (latency, batch 1): the workers share
    each sample, as in conv.py's _conv_forward_split, instead of taking whole chunks. The
    weight transform is shared by output features (by input channels when flipped), the input
    transform by channels, the a^2 GEMMs by grid point and the output transform by features;
    a parallel region each, ordered by their ends. weight_scratch: (workers, ...) flat, one
    transform scratch per worker; v, m, windows, outputs as for winograd_conv at one sample a
    chunk, all `workers` reading and writing the first worker's v and m (windows, outputs and
    weight_scratch have a row per worker)."""
    n_batch, n_in, n_out = x.shape[0], x.shape[1], out.shape[1]
    tile, alpha = at_matrix.shape
    per_sample, width, _, _ = _chunking(n_batch, sources, 1, v)
    reuse = planes.shape[0] > 0
    if not reuse:
        outer = weight.shape[1] if flipped else weight.shape[0]
        for worker in prange(workers):
            lo, hi = part_bounds(outer, workers, worker)
            _transform_weights(weight, g_matrix, flipped, u, weight_scratch[worker], lo, hi)
    tiles, products = v[0], m[0]
    for n in range(n_batch):
        sample = x[n:n + 1]
        for worker in prange(workers):
            lo, hi = part_bounds(n_in, workers, worker)
            _input_transform(sample, sources, bt, tiles, width, windows[worker], lo, hi)
        for worker in prange(workers):
            for xi in range(worker, alpha * alpha, workers):
                if reuse:       # as in winograd_conv
                    gemm(True, False, n_out, per_sample, n_in, u, planes[xi] * n_out * n_in, n_out,
                         tiles, xi * n_in * width, width, 0.0, products, xi * n_out * width, width)
                else:
                    gemm(False, False, n_out, per_sample, n_in, u, xi * n_out * n_in, n_in,
                         tiles, xi * n_in * width, width, 0.0, products, xi * n_out * width, width)
        for worker in prange(workers):
            lo, hi = part_bounds(n_out, workers, worker)
            _output_transform(products, at_matrix, n_out, width, 1, targets, scale, shift, relu,
                              out[n:n + 1], outputs[worker], lo, hi)


@pnjit
def winograd_weight_grad(x, sources, targets, bt, a_matrix, gt_matrix, gout, chunk, v, dm, windows,
                         du_partial, weight_scratch, gweight, gbias_partial, gbias):
    """gweight (F, C, 9) and gbias (F, or None) of a 3x3 stride-1 convolution of x (N, C, H*W)
    whose output gradient is gout (N, F, Ho*Wo); sources and targets as for winograd_conv;
    a_matrix = A (a x m), gt_matrix = G^T.

    Per chunk: V of the inputs, dM of the output gradient, and dU[xi] += dM[xi] @ V[xi]^T, a^2
    GEMMs with the tiles as depth. Each worker sums its chunks in du_partial[worker] (flat
    (a^2, F, C)) and gbias_partial[worker] (F); the sums over workers are added and transformed
    back (_weight_gradient_rows) at the end. weight_scratch: the transform's scratch (flat)."""
    n_batch, n_in, n_out = x.shape[0], x.shape[1], gout.shape[1]
    alpha = a_matrix.shape[0]
    per_sample, width, workers, n_chunks = _chunking(n_batch, sources, chunk, v)
    for worker in prange(workers):
        if gbias is not None:
            fill(gbias_partial[worker], 0)
        for chunk_index in range(worker, n_chunks, workers):
            first = chunk_index * chunk
            count = min(chunk, n_batch - first)
            columns = count * per_sample
            if gbias is not None:
                for s in range(count):
                    for f in range(n_out):
                        gbias_partial[worker, f] += row_sum(gout[first + s, f])
            _input_transform(x[first:first + count], sources, bt, v[worker], width, windows[worker], 0, n_in)
            _output_gradient_transform(gout[first:first + count], a_matrix, n_out, width, count, targets,
                                       dm[worker], windows[worker])
            beta = 0.0 if chunk_index == worker else 1.0        # a worker's first chunk starts its sum
            for xi in range(alpha * alpha):
                gemm(False, True, n_out, n_in, columns, dm[worker], xi * n_out * width, width,
                     v[worker], xi * n_in * width, width, beta, du_partial[worker], xi * n_out * n_in, n_in)
    busy_workers = min(workers, n_chunks)
    total = du_partial[0]
    for other in range(1, busy_workers):
        add_into(total, du_partial[other])
    _weight_gradient_rows(total, gt_matrix, gweight, weight_scratch, 0, n_out)
    if gbias is not None:   # loops, not array expressions: see runtime/cpu/arrays.py
        fill(gbias, 0)
        for worker in range(busy_workers):
            add_into(gbias, gbias_partial[worker])


class WinogradPlan:
    """One layer's Winograd geometry: the tile size m, the constant matrices, and for each of its
    two convolutions (forward; input gradient) the tiles' input windows and the chunking."""

    def __init__(self, n_batch, n_in, n_out, image_h, image_w, ph, pw, out_h, out_w, workers):
        self.tile = 4 if min(out_h, out_w) >= F4_MIN_GRID else 2
        self.alpha = self.tile + 2
        bt, g, at = ALGORITHMS[self.tile]
        # per dtype (float32 in training, float64 in the finite-difference tests): B^T, G, G^T, A^T, A
        self.matrices = {np.dtype(d): tuple(np.ascontiguousarray(a, dtype=d) for a in (bt, g, g.T, at, at.T))
                         for d in (np.float32, np.float64)}
        # the input gradient's planes of the forward's U, where flipping permutes them (F(2x2))
        self.flip_planes = _flip_planes(g)
        self.forward = _TileGrid(self.tile, n_batch, image_h, image_w, ph, pw, out_h, out_w, workers)
        # the input gradient: gout (out_h x out_w) convolved into gx (image_h x image_w), padded by 2 - pad
        self.input_grad = _TileGrid(self.tile, n_batch, out_h, out_w, 2 - ph, 2 - pw, image_h, image_w, workers)
        grids = (self.forward, self.input_grad)
        channels = max(n_in, n_out)
        alpha = self.alpha
        self.u_size = alpha * alpha * n_in * n_out
        # a chunk's transformed tiles, inputs (v) or GEMM results (m): the input-gradient pass
        # swaps the channel counts, so both are sized for the larger
        self.tiles_size = max(alpha * alpha * channels * grid.width for grid in grids)
        self.windows_size = max(2 * alpha * alpha * grid.width for grid in grids)
        self.outputs_size = max((self.tile * alpha + self.tile * self.tile) * grid.width for grid in grids)
        self.weight_scratch_size = (9 + 3 * alpha) * channels


def _flip_planes(g_matrix):
    """(a^2,) int64, or None: the plane of U = G g G^T that holds each grid point of the flipped
    kernel's G g' G^T (g' = g flipped in both axes), where flipping g permutes the rows of G g:
    row r of G J (J the 3x3 reversal) is row p[r] of G, so G g' G^T = (G J) g (G J)^T has
    [r, s] = U[p[r], p[s]]. None where some row of G J is no row of G (F(4x4))."""
    flipped_rows = g_matrix[:, ::-1]
    alpha = g_matrix.shape[0]
    p = []
    for row in flipped_rows:
        same = [i for i in range(alpha) if np.array_equal(g_matrix[i], row)]
        if not same:
            return None
        p.append(same[0])
    return np.array([p[r] * alpha + p[s] for r in range(alpha) for s in range(alpha)], np.int64)


class _TileGrid:
    """The tiles of one convolution: where each tile's inputs and outputs lie, and the chunking."""

    def __init__(self, tile, n_batch, image_h, image_w, ph, pw, out_h, out_w, workers):
        alpha = tile + 2
        tiles_h, tiles_w = -(-out_h // tile), -(-out_w // tile)     # the last ones may overhang
        self.per_sample = tiles_h * tiles_w
        per_worker = -(-n_batch // workers)
        self.chunk = max(1, min(per_worker, -(-MIN_TILE_COLUMNS // self.per_sample)))
        self.width = self.chunk * self.per_sample
        self.sources = _flat_indices(tiles_h, tiles_w, tile, alpha, -ph, -pw, image_h, image_w)
        self.targets = _flat_indices(tiles_h, tiles_w, tile, tile, 0, 0, out_h, out_w)


def _flat_indices(tiles_h, tiles_w, tile, size, row0, col0, height, width):
    """(size^2, tiles) int64: [size*i + j, ty*tiles_w + tx] = the flat index of position
    (tile*ty + row0 + i, tile*tx + col0 + j) in a height x width grid, -1 outside it. With
    size = a and the padding as offset: each tile's input window; with size = m: its outputs.
    Both are the windows of a size x size kernel sliding with stride `tile`."""
    return window_offsets((height, width, size, size, tile, tile, -row0, -col0, 1, 1, tiles_h, tiles_w))
