"""The conv family's "unrolled weights" lowering, for layers whose input grid is no bigger than
the kernel window (VGG's last 512-channel layers on CIFAR run on 2x2 grids with 3x3 kernels).

On such a grid a convolution is a dense layer. Flatten a sample's input to C*Q values (Q = H*W
input positions) and its output to F*P values (P = Ho*Wo output positions): then

    out (N, F*P) = x (N, C*Q) @ D (C*Q, F*P),    D[c*Q + q, f*P + p] = weight[f, c, i, j]

where (i, j) is the tap that connects input position q to output position p, and D is 0 where no
tap does (padding). Both layouts are the NCHW arrays themselves, viewed. D has Q*P entries per
(f, c) pair where im2col multiplies kh*kw*P, so it does no more arithmetic than im2col whenever
Q <= kh*kw (on a 2x2 grid with a 3x3 kernel, 4 against 9: im2col's other 5 taps read padding),
and it is one big GEMM per pass instead of thin ones per chunk of samples: on VGG's 2x2 layers it
beats Winograd, the best of the other lowerings there (docs/CPU-BACKEND.md, "Measurements behind the kernels' choices").

Backward, with the same D:
    gx (N, C*Q) = gout (N, F*P) @ D^T
    gD (C*Q, F*P) = x^T @ gout,   gweight[f, c, i, j] = sum of gD over the (q, p) that tap (i, j) connects

D is rebuilt from the weight in each pass (it is a scratch buffer, shared with other layers;
building it streams C*Q*F*P floats once, small next to the GEMM's 2*N times as many flops
from 16 samples on; below that, the layer takes im2col, see unrolled_pays), and in backward gD
overwrites D once the input gradient has read it.

Both cores: forward splits the output features f between the workers (each builds and
multiplies its own columns of D); backward splits the input channels c (each builds its own
rows of D, computes its columns of gx, then its rows of gD and its channels' weight
gradient). Either way no two workers write one element and no worker waits for another.
"""
import numpy as np
from numba import uint64 as _u

from dslc.runtime.cpu.arrays import fill, part_bounds, scale_shift
from dslc.runtime.cpu.blas import gemm
from dslc.runtime.jit import njit, pnjit, prange


def unrolled_pays(image_positions: int, kernel_taps: int, groups: int, unrolled_elements: int,
                  samples: int) -> bool:
    """Whether a conv layer runs by unrolled weights: one group (D is per group; no grouped layer
    we know of runs on grids this small), an input grid with no more positions than the kernel
    has taps (so D does no more arithmetic than im2col, see above), D under 64 MiB, and enough
    samples per pass to spread the build of D over, which costs the same at any batch. VGG-11's
    512->512 layer at 2x2, inference, 2 workers (ms, unrolled against im2col; 2026-12-08):
    batch 1 0.68 vs 0.27, 2 1.09 vs 0.49, 4 1.07 vs 0.52, 8 1.28 vs 0.85, 16 1.53 vs 1.42,
    64 3.24 vs 5.6."""
    return (groups == 1 and image_positions <= kernel_taps and unrolled_elements <= UNROLLED_MAX_ELEMENTS
            and samples >= UNROLLED_MIN_SAMPLES)


UNROLLED_MAX_ELEMENTS = 1 << 24
UNROLLED_MIN_SAMPLES = 16


def tap_map(geometry) -> np.ndarray:
    """(Q, P) int32: the tap index i*kw + j connecting input position q to output position p,
    or -1 where none does."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    taps = np.full((image_h * image_w, grid_h * grid_w), -1, np.int32)
    for oh in range(grid_h):
        for ow in range(grid_w):
            for i in range(kh):
                for j in range(kw):
                    ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                    if 0 <= ih < image_h and 0 <= iw < image_w:
                        taps[ih * image_w + iw, oh * grid_w + ow] = i * kw + j
    return taps


@njit
def _build(weight, taps, f_lo, f_hi, c_lo, c_hi, unrolled):
    """The block of D^T for output features [f_lo, f_hi) and input channels [c_lo, c_hi):
    unrolled[f*P + p, c*Q + q] = weight[f, c*kh*kw + taps[q, p]] (0 where taps is -1). weight is
    (F, C*kh*kw): each row of D^T reads one row of it, which stays in cache."""
    image_positions, grid_positions = taps.shape
    kernel_taps = weight.shape[1] * image_positions // unrolled.shape[1]
    for f in range(f_lo, f_hi):
        weight_row = weight[f]
        for p in range(grid_positions):
            unrolled_row = unrolled[f * grid_positions + p]
            for q in range(image_positions):
                t = taps[q, p]
                # A strided copy along c. Unsigned indices: a signed one brings Numba's
                # negative-index wraparound check into the loop, which stops it vectorising.
                if t < 0:
                    for c in range(c_lo, c_hi):
                        unrolled_row[_u(c) * _u(image_positions) + _u(q)] = 0.0
                else:
                    for c in range(c_lo, c_hi):
                        unrolled_row[_u(c) * _u(image_positions) + _u(q)] = weight_row[_u(c) * _u(kernel_taps) + _u(t)]


@njit
def _fold(unrolled_grad, taps, c_lo, c_hi, gweight):
    """gweight[:, c*kh*kw:(c+1)*kh*kw] for c in [c_lo, c_hi) = the gradient of D^T summed onto the
    taps that connect each (q, p)."""
    image_positions, grid_positions = taps.shape
    kernel_taps = gweight.shape[1] * image_positions // unrolled_grad.shape[1]
    for f in range(gweight.shape[0]):
        for k in range(c_lo * kernel_taps, c_hi * kernel_taps):
            gweight[f, k] = 0.0
        gweight_row = gweight[f]
        for p in range(grid_positions):
            grad_row = unrolled_grad[f * grid_positions + p]
            for q in range(image_positions):
                t = taps[q, p]
                if t >= 0:      # as in _build
                    for c in range(c_lo, c_hi):
                        gweight_row[_u(c) * _u(kernel_taps) + _u(t)] += grad_row[_u(c) * _u(image_positions) + _u(q)]


@pnjit
def unrolled_forward(x, weight, scale, shift, relu, out, taps, workers, unrolled):
    """out (N, F*P) = x (N, C*Q) @ D, then the epilogue per feature: * scale, + shift (each
    (F), or empty: left out), relu where `relu` (arrays.epilogue_rows); weight (F, C*kh*kw); unrolled
    (F*P, C*Q), scratch for D^T."""
    n_batch, inputs = x.shape
    features = weight.shape[0]
    grid_positions = taps.shape[1]
    columns = unrolled.shape[0]
    for worker in prange(workers):
        f_lo, f_hi = part_bounds(features, workers, worker)
        _build(weight, taps, f_lo, f_hi, 0, inputs // taps.shape[0], unrolled)
        lo, width = f_lo * grid_positions, (f_hi - f_lo) * grid_positions
        gemm(False, True, n_batch, width, inputs, x, 0, inputs, unrolled, lo * inputs, inputs,
             0.0, out, lo, columns)
        if scale.size or shift.size or relu:
            for n in range(n_batch):
                for f in range(f_lo, f_hi):
                    row = out[n, f * grid_positions:(f + 1) * grid_positions]
                    scale_shift(row, row, scale[f] if scale.size else np.float32(1),
                                shift[f] if shift.size else np.float32(0), relu)


@pnjit
def unrolled_backward(x, weight, gout, gx, gweight, gbias, taps, workers, unrolled):
    """gx = gout @ D^T, gweight folded from gD^T = gout^T @ x, gbias = gout summed per feature;
    each gradient is None when not wanted. Shapes as in unrolled_forward."""
    n_batch, inputs = x.shape
    features = weight.shape[0]
    image_positions, grid_positions = taps.shape
    channels = inputs // image_positions
    columns = unrolled.shape[0]
    for worker in prange(workers):
        c_lo, c_hi = part_bounds(channels, workers, worker)
        lo, width = c_lo * image_positions, (c_hi - c_lo) * image_positions
        if gx is not None:
            _build(weight, taps, 0, features, c_lo, c_hi, unrolled)
            gemm(False, False, n_batch, width, columns, gout, 0, columns, unrolled, lo, inputs,
                 0.0, gx, lo, inputs)
        if gweight is not None:
            gemm(True, False, columns, width, n_batch, gout, 0, columns, x, lo, inputs,
                 0.0, unrolled, lo, inputs)
            _fold(unrolled, taps, c_lo, c_hi, gweight)
    if gbias is not None:
        fill(gbias, 0)      # a loop, not an array expression: see runtime/cpu/arrays.py
        for n in range(n_batch):
            for f in range(gbias.shape[0]):
                for p in range(grid_positions):
                    gbias[f] += gout[n, f * grid_positions + p]
