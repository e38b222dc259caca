"""Winograd F(2x2, 3x3) for the conv family's 3x3 stride-1 layers (CPU).

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 tile of inputs with 36
multiplications per (input, output) channel pair; Winograd's minimal filtering algorithm does it
with 16 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015):

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise over the 4x4 "frequency" grid)

    B^T = [1  0 -1  0]     G = [1    0    0 ]     A^T = [1  1  1  0]
          [0  1  1  0]         [1/2  1/2  1/2]          [0  1 -1 -1]
          [0 -1  1  0]         [1/2 -1/2  1/2]
          [0  1  0 -1]         [0    0    1 ]

Summed over input channels, the elementwise products become 16 independent GEMMs, one per
grid point xi: M[xi] (F, tiles) = U[xi] (F, C) @ V[xi] (C, tiles), U = G g G^T per channel pair
(the weight transform), V = B^T d B per input tile (the input transform). That is 2.25x fewer
multiply-adds than direct or im2col convolution; the transforms are a few additions per value.
The GEMMs have the layer's channels as M and K and tiles x samples as N, which keeps them well
shaped even on the 4x4 and 2x2 grids of deep layers, where im2col's are not (see conv.py).

The input gradient of a stride-1 3x3 conv is itself one: the output gradient convolved with the
weights flipped in both spatial axes and with input/output channels swapped, padded by 2 - pad.
So `winograd_conv` serves both; `weight_transform(..., for_input_gradient=True)` builds the
flipped, transposed U. The weight gradient is the adjoint of the same algorithm
(winograd_weight_grad): dU[xi] = sum over tiles of dM[xi] V[xi]^T with dM = A dY A^T, then
dW = G^T dU G.

Precision: the transforms only add and halve, and the float32 results match direct convolution
to a few ulps of the largest term (the kernel tests hold them to torch at 1e-4).
"""
import numpy as np

from runtime.cpu.blas import gemm
from runtime.jit import njit, pnjit, prange

TILE = 2            # outputs per tile side
# Fewest GEMM columns (tiles x samples) a chunk aims for, as in conv.py's MIN_GEMM_COLUMNS.
MIN_TILE_COLUMNS = 256


def tiles(size: int) -> int:
    """Tiles along one output side (the last one may overhang an odd size)."""
    return -(-size // TILE)


@njit
def weight_transform(weight, u, for_input_gradient):
    """u[xi] = G g G^T for every channel pair, g = weight[f, c] (3x3, flattened to 9).

    weight (F, C, 9); u (16, F, C), or, for_input_gradient, (16, C, F) from g flipped in both
    axes: the weights of the input-gradient convolution."""
    n_out, n_in = weight.shape[0], weight.shape[1]
    g = np.empty((3, 3), np.float64)
    gg = np.empty((4, 3), np.float64)
    for f in range(n_out):
        for c in range(n_in):
            for i in range(3):
                for j in range(3):
                    if for_input_gradient:
                        g[i, j] = weight[f, c, (2 - i) * 3 + (2 - j)]
                    else:
                        g[i, j] = weight[f, c, i * 3 + j]
            for j in range(3):          # G g
                gg[0, j] = g[0, j]
                gg[1, j] = 0.5 * (g[0, j] + g[1, j] + g[2, j])
                gg[2, j] = 0.5 * (g[0, j] - g[1, j] + g[2, j])
                gg[3, j] = g[2, j]
            for i in range(4):          # (G g) G^T
                a, b, d = gg[i, 0], gg[i, 1], gg[i, 2]
                row = (a, 0.5 * (a + b + d), 0.5 * (a - b + d), d)
                for j in range(4):
                    if for_input_gradient:
                        u[i * 4 + j, c, f] = row[j]
                    else:
                        u[i * 4 + j, f, c] = row[j]


@njit
def _input_transform(chunk, sources, v, width, d):
    """v[xi, c, s*T + t] = (B^T d B)[xi] for the 4x4 input window d of tile t of sample s:
    sources[t, k] is the flat index of the window's k-th input (row-major) in an image, -1 in
    the padding (zero). chunk (count, C, H*W); v (16, C, width) flattened; d: (16, >= count*T)
    scratch.

    The windows of the whole chunk are gathered first, then transformed all at once by
    contiguous, branch-free loops over the tiles (vectorised even where an image holds one or
    two tiles): B^T d combines rows (k = 4r + j over r), then (B^T d) B combines columns."""
    count, n_chan = chunk.shape[0], chunk.shape[1]
    per_sample = sources.shape[0]
    columns = count * per_sample
    plane = n_chan * width
    for c in range(n_chan):
        for s in range(count):
            image = chunk[s, c]
            for t in range(per_sample):
                col = s * per_sample + t
                for k in range(16):
                    at = sources[t, k]
                    value = image[max(at, 0)]
                    d[k, col] = value if at >= 0 else np.float32(0)
        for j in range(4):
            for col in range(columns):
                d0, d1, d2, d3 = d[j, col], d[4 + j, col], d[8 + j, col], d[12 + j, col]
                d[j, col] = d0 - d2
                d[4 + j, col] = d1 + d2
                d[8 + j, col] = d2 - d1
                d[12 + j, col] = d1 - d3
        for i in range(4):
            at = 4 * i * plane + c * width
            for col in range(columns):
                a0, a1, a2, a3 = d[4 * i, col], d[4 * i + 1, col], d[4 * i + 2, col], d[4 * i + 3, col]
                v[at + col] = a0 - a2
                v[at + plane + col] = a1 + a2
                v[at + 2 * plane + col] = a2 - a1
                v[at + 3 * plane + col] = a1 - a3


@njit
def _output_transform(m, n_out, width, columns, per_sample, tiles_w, out_h, out_w, bias, out, scratch):
    """out[s, f, 2*ty + a, 2*tx + b] = (A^T M A)[a, b] + bias[f] for every tile of the chunk's
    samples s, from m (16, F, width) flattened, whose first `columns` columns are the chunk's
    tiles (sample by sample, row-major within one); outputs past an odd edge are dropped.
    scratch: (12, >= columns).

    The transform itself runs over all the chunk's tiles at once, contiguous and branch-free
    (vectorised even where a row holds one or two tiles): A^T M into eight rows, M A into the
    four outputs of each tile, which are then put in place."""
    plane = n_out * width
    p = scratch[:8]
    y = scratch[8:12]
    for f in range(n_out):
        shift = bias[f]
        at = f * width
        for j in range(4):
            for t in range(columns):
                m0 = m[at + j * plane + t]
                m1 = m[at + (4 + j) * plane + t]
                m2 = m[at + (8 + j) * plane + t]
                m3 = m[at + (12 + j) * plane + t]
                p[j, t] = m0 + m1 + m2
                p[4 + j, t] = m1 - m2 - m3
        for t in range(columns):
            y[0, t] = p[0, t] + p[1, t] + p[2, t] + shift
            y[1, t] = p[1, t] - p[2, t] - p[3, t] + shift
            y[2, t] = p[4, t] + p[5, t] + p[6, t] + shift
            y[3, t] = p[5, t] - p[6, t] - p[7, t] + shift
        even = out_h % 2 == 0 and out_w % 2 == 0
        for t in range(columns):
            sample, tile = t // per_sample, t % per_sample
            oh, ow = 2 * (tile // tiles_w), 2 * (tile % tiles_w)
            at_out = oh * out_w + ow
            target = out[sample, f]
            if even:
                target[at_out] = y[0, t]
                target[at_out + 1] = y[1, t]
                target[at_out + out_w] = y[2, t]
                target[at_out + out_w + 1] = y[3, t]
            else:
                target[at_out] = y[0, t]
                if ow + 1 < out_w:
                    target[at_out + 1] = y[1, t]
                if oh + 1 < out_h:
                    target[at_out + out_w] = y[2, t]
                    if ow + 1 < out_w:
                        target[at_out + out_w + 1] = y[3, t]


@njit
def _chunking(n_batch, sources, out_w, chunk, v):
    """(tiles per sample, tiles per output row, buffer columns per chunk, workers, chunks) of a
    winograd_conv / winograd_weight_grad call."""
    per_sample = sources.shape[0]
    return per_sample, (out_w + 1) // 2, chunk * per_sample, v.shape[0], (n_batch + chunk - 1) // chunk


@pnjit
def winograd_conv(x, sources, u, bias, out, out_h, out_w, chunk, v, m, windows, outputs):
    """out (N, F, out_h*out_w) = the 3x3 stride-1 convolution of x (N, C, H*W) with the
    transformed weights u (16, F, C), plus bias (F; zeros for none: an array either way, so
    that the forward and the input-gradient pass share one compiled function); sources: the
    tiles' input windows (WinogradPlan.sources, which holds the padding).

    The batch is cut into chunks of `chunk` samples, taken by the workers in turn as in
    conv.py; v, m: (workers, ...) flat per-worker buffers for a chunk's transformed inputs
    (16, C, chunk*tiles) and GEMM results (16, F, chunk*tiles); windows (workers, 16, >= chunk*tiles)
    and outputs (workers, 12, >= chunk*tiles): the transforms' scratch."""
    n_batch, n_in, n_out = x.shape[0], x.shape[1], out.shape[1]
    per_sample, tiles_w, width, workers, n_chunks = _chunking(n_batch, sources, out_w, chunk, v)
    for worker in prange(workers):
        for chunk_index in range(worker, n_chunks, workers):
            first = chunk_index * chunk
            count = min(chunk, n_batch - first)
            _input_transform(x[first:first + count], sources, v[worker], width, windows[worker])
            columns = count * per_sample
            for xi in range(16):
                gemm(False, False, n_out, columns, n_in, u, xi * n_out * n_in, n_in,
                     v[worker], xi * n_in * width, width, 0.0, m[worker], xi * n_out * width, width)
            _output_transform(m[worker], n_out, width, columns, per_sample, tiles_w, out_h, out_w,
                              bias, out[first:first + count], outputs[worker])


@njit
def _output_gradient_transform(gout, n_out, width, columns, per_sample, tiles_w, out_h, out_w, dm, scratch):
    """dm[xi, f, s*T + t] = (A dY A^T)[xi], dY the 2x2 block of gout[s, f] that tile t wrote
    (0 past an odd edge): the adjoint of _output_transform. dm (16, F, width) flattened;
    scratch: (4, >= columns)."""
    plane = n_out * width
    y = scratch[:4]
    even = out_h % 2 == 0 and out_w % 2 == 0
    for f in range(n_out):
        for t in range(columns):
            sample, tile = t // per_sample, t % per_sample
            oh, ow = 2 * (tile // tiles_w), 2 * (tile % tiles_w)
            at = oh * out_w + ow
            source = gout[sample, f]
            if even:
                y[0, t], y[1, t] = source[at], source[at + 1]
                y[2, t], y[3, t] = source[at + out_w], source[at + out_w + 1]
            else:
                y[0, t] = source[at]
                y[1, t] = source[at + 1] if ow + 1 < out_w else 0
                y[2, t] = source[at + out_w] if oh + 1 < out_h else 0
                y[3, t] = source[at + out_w + 1] if oh + 1 < out_h and ow + 1 < out_w else 0
        at = f * width
        for t in range(columns):
            y00, y01, y10, y11 = y[0, t], y[1, t], y[2, t], y[3, t]
            # A dY: the rows (q[i] = (q_i0, q_i1)), then (A dY) A^T: the columns
            for i in range(4):
                if i == 0:
                    a, b = y00, y01
                elif i == 1:
                    a, b = y00 + y10, y01 + y11
                elif i == 2:
                    a, b = y00 - y10, y01 - y11
                else:
                    a, b = -y10, -y11
                dm[at + 4 * i * plane + t] = a
                dm[at + (4 * i + 1) * plane + t] = a + b
                dm[at + (4 * i + 2) * plane + t] = a - b
                dm[at + (4 * i + 3) * plane + t] = -b


@njit
def _weight_gradient_transform(du, gweight):
    """gweight[f, c] (3x3, flattened to 9) = G^T dU G, dU = du[:, f, c] (4x4): the adjoint of
    weight_transform."""
    n_out, n_in = gweight.shape[0], gweight.shape[1]
    h = np.empty((3, 4), np.float64)
    for f in range(n_out):
        for c in range(n_in):
            for j in range(4):          # G^T dU
                d0, d1, d2, d3 = du[j, f, c], du[4 + j, f, c], du[8 + j, f, c], du[12 + j, f, c]
                h[0, j] = d0 + 0.5 * (d1 + d2)
                h[1, j] = 0.5 * (d1 - d2)
                h[2, j] = 0.5 * (d1 + d2) + d3
            for k in range(3):          # (G^T dU) G
                d0, d1, d2, d3 = h[k, 0], h[k, 1], h[k, 2], h[k, 3]
                gweight[f, c, k * 3] = d0 + 0.5 * (d1 + d2)
                gweight[f, c, k * 3 + 1] = 0.5 * (d1 - d2)
                gweight[f, c, k * 3 + 2] = 0.5 * (d1 + d2) + d3


@pnjit
def winograd_weight_grad(x, sources, gout, out_h, out_w, chunk, v, dm, windows, du_partial, gweight,
                         gbias, gbias_partial):
    """gweight (F, C, 9) and gbias (F, or None) of a 3x3 stride-1 convolution of x (N, C, H*W)
    whose output gradient is gout (N, F, out_h*out_w); sources as for winograd_conv.

    Per chunk: V of the inputs, dM of the output gradient, and dU[xi] += dM[xi] @ V[xi]^T, 16
    GEMMs with the tiles as depth. Each worker sums its chunks in du_partial[worker] (16, F, C)
    and gbias_partial[worker] (F); the sums over workers are transformed back at the end."""
    n_batch, n_in, n_out = x.shape[0], x.shape[1], gout.shape[1]
    per_sample, tiles_w, width, workers, n_chunks = _chunking(n_batch, sources, out_w, chunk, v)
    for worker in prange(workers):
        if gbias is not None:
            gbias_partial[worker] = 0
        for chunk_index in range(worker, n_chunks, workers):
            first = chunk_index * chunk
            count = min(chunk, n_batch - first)
            columns = count * per_sample
            if gbias is not None:
                for s in range(count):
                    for f in range(n_out):
                        gbias_partial[worker, f] += np.sum(gout[first + s, f])
            _input_transform(x[first:first + count], sources, v[worker], width, windows[worker])
            _output_gradient_transform(gout[first:first + count], n_out, width, columns, per_sample, tiles_w,
                                       out_h, out_w, dm[worker], windows[worker])
            beta = 0.0 if chunk_index == worker else 1.0        # a worker's first chunk starts its sum
            for xi in range(16):
                gemm(False, True, n_out, n_in, columns, dm[worker], xi * n_out * width, width,
                     v[worker], xi * n_in * width, width, beta, du_partial[worker], xi * n_out * n_in, n_in)
    busy_workers = min(workers, n_chunks)
    total = du_partial[0]       # (a name, not du_partial[0] += ...: see runtime/cpu/arrays.py)
    for worker in range(1, busy_workers):
        total += du_partial[worker]
    _weight_gradient_transform(total, gweight)
    if gbias is not None:
        gbias[:] = 0
        for worker in range(busy_workers):
            gbias += gbias_partial[worker]


class WinogradPlan:
    """One winograd_conv call site (a layer's forward, or its input-gradient pass): the tiles'
    input windows, the chunking and the buffer sizes."""

    def __init__(self, n_batch, n_in, n_out, image_h, image_w, ph, pw, out_h, out_w, workers):
        tiles_h, tiles_w = tiles(out_h), tiles(out_w)
        self.per_sample = tiles_h * tiles_w
        per_worker = -(-n_batch // workers)
        self.chunk = max(1, min(per_worker, -(-MIN_TILE_COLUMNS // self.per_sample)))
        self.width = self.chunk * self.per_sample
        self.v_size = 16 * n_in * self.width
        self.m_size = 16 * n_out * self.width
        # sources[t, 4*i + j]: input (2*ty - ph + i, 2*tx - pw + j) of tile t = ty*tiles_w + tx
        ty, tx, i, j = np.meshgrid(np.arange(tiles_h), np.arange(tiles_w), np.arange(4), np.arange(4),
                                   indexing="ij")
        rows, cols = 2 * ty - ph + i, 2 * tx - pw + j
        inside = (rows >= 0) & (rows < image_h) & (cols >= 0) & (cols < image_w)
        self.sources = np.where(inside, rows * image_w + cols, -1).reshape(self.per_sample, 16).astype(np.int64)
