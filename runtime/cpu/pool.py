"""CPU kernels of the pool family: maxpool, avgpool, global_avgpool, maxunpool, unpool, upsample.

The Numba kernels see every tensor as planes: (N*C, H*W) views, one row per (sample, channel).
They run `prange` over planes, which is race-free because a window never crosses planes.
Ops that are a single strided or broadcast numpy assignment (global_avgpool, unpool, nearest
upsample) stay in numpy, writing through `out=` so nothing is allocated per step.

Max-pool and max-unpool share one argmax kernel: the index (within its input plane) of each
window's first maximum in row-major order, like torch. Max-pool saves it in the workspace
for its backward; max-unpool recomputes it from the tensor the max-pool pooled (its input 1).
"""
import numpy as np

from runtime.jit import njit, pnjit, prange
from runtime.kernel_api import Kernel, register


@pnjit
def _window_argmax(src, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, argmax, maxima):
    """argmax[p, oh*out_w + ow] = flat index in src[p] of the window's first maximum (padding
    never wins); maxima (None when not wanted) receives the maximum itself. A NaN wins over
    any number, so NaNs propagate as in torch."""
    for p in prange(src.shape[0]):
        for oh in range(out_h):
            h_lo = max(oh * sh - ph, 0)
            h_hi = min(oh * sh - ph + kh, image_h)
            for ow in range(out_w):
                w_lo = max(ow * sw - pw, 0)
                w_hi = min(ow * sw - pw + kw, image_w)
                best = h_lo * image_w + w_lo
                best_value = src[p, best]
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        value = src[p, ih * image_w + iw]
                        if value > best_value or value != value:
                            best_value = value
                            best = ih * image_w + iw
                argmax[p, oh * out_w + ow] = best
                if maxima is not None:
                    maxima[p, oh * out_w + ow] = best_value


@pnjit
def _scatter(values, index, dst, accumulate):
    """dst[p] = 0, then dst[p, index[p, k]] (+)= values[p, k] for every k in order: with
    accumulate=False a later k overwrites an earlier one at the same place."""
    for p in prange(values.shape[0]):
        dst[p, :] = 0
        for k in range(values.shape[1]):
            if accumulate:
                dst[p, index[p, k]] += values[p, k]
            else:
                dst[p, index[p, k]] = values[p, k]


@pnjit
def _gather(src, index, dst):
    """dst[p, k] = src[p, index[p, k]]."""
    for p in prange(dst.shape[0]):
        for k in range(dst.shape[1]):
            dst[p, k] = src[p, index[p, k]]


@njit
def _padded_extent(start, kernel, image_size, pad):
    """How many places of a window starting at `start` lie inside the input or its padding:
    the kernel, except for a ceil-mode window overhanging the right padding. Average pooling
    divides by this (count_include_pad=True: padding counts as zeros, overhang not at all)."""
    return min(start + kernel, image_size + pad) - start


@pnjit
def _avgpool_forward(x, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, out):
    """Window sums over the real pixels divided by the window's padded area, as torch's
    count_include_pad=True: kh*kw in floor mode, less for a ceil-mode window at the edge."""
    for p in prange(x.shape[0]):
        for oh in range(out_h):
            h_lo = max(oh * sh - ph, 0)
            h_hi = min(oh * sh - ph + kh, image_h)
            rows = _padded_extent(oh * sh - ph, kh, image_h, ph)
            for ow in range(out_w):
                w_lo = max(ow * sw - pw, 0)
                w_hi = min(ow * sw - pw + kw, image_w)
                total = 0.0
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        total += x[p, ih * image_w + iw]
                out[p, oh * out_w + ow] = total / (rows * _padded_extent(ow * sw - pw, kw, image_w, pw))


@pnjit
def _avgpool_backward(gout, image_h, image_w, kh, kw, sh, sw, ph, pw, out_h, out_w, gx):
    for p in prange(gx.shape[0]):
        gx[p, :] = 0
        for oh in range(out_h):
            h_lo = max(oh * sh - ph, 0)
            h_hi = min(oh * sh - ph + kh, image_h)
            rows = _padded_extent(oh * sh - ph, kh, image_h, ph)
            for ow in range(out_w):
                w_lo = max(ow * sw - pw, 0)
                w_hi = min(ow * sw - pw + kw, image_w)
                share = gout[p, oh * out_w + ow] / (rows * _padded_extent(ow * sw - pw, kw, image_w, pw))
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        gx[p, ih * image_w + iw] += share


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

    def geometry(self):
        return (self.image_h, self.image_w, *self.kernel, *self.stride, *self.pad, self.out_h, self.out_w)


@register("cpu", "maxpool")
class MaxPool(_WindowPool):
    backward_reads_inputs = False     # backward scatters through the argmax saved in the workspace
    backward_reads_out = False

    def workspace(self):
        # each output's argmax, written by forward and read by backward
        return {"argmax": (self.grid_shape, "int64")}

    def forward(self, ctx, xs, params, out, ws):
        _window_argmax(_planes(xs[0]), *self.geometry(), _planes(ws["argmax"]), _planes(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _scatter(_planes(gout), _planes(ws["argmax"]), _planes(gxs[0]), True)


@register("cpu", "avgpool")
class AvgPool(_WindowPool):
    backward_reads_inputs = False     # the gradient spreads gout evenly: no values needed
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        _avgpool_forward(_planes(xs[0]), *self.geometry(), _planes(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _avgpool_backward(_planes(gout), *self.geometry(), _planes(gxs[0]))


@register("cpu", "maxunpool")
class MaxUnpool(_WindowPool):
    """Input 0: the values to place (one per window); input 1: the tensor the max-pool pooled,
    whose window maxima say where. Where windows overlap and share an argmax, the later
    window's value is written (as torch's max_unpool2d) while the backward, like torch's,
    gives every window the gradient at its argmax."""
    image_input = 1

    def workspace(self):
        return {"argmax": (self.grid_shape, "int64")}

    def forward(self, ctx, xs, params, out, ws):
        argmax = _planes(ws["argmax"])
        _window_argmax(_planes(xs[1]), *self.geometry(), argmax, None)
        _scatter(_planes(xs[0]), argmax, _planes(out), False)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _gather(_planes(gout), _planes(ws["argmax"]), _planes(gxs[0]))
        if gxs[1] is not None:     # the positions are piecewise constant in src
            gxs[1].fill(0)


@register("cpu", "global_avgpool")
class GlobalAvgPool(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        x = xs[0]
        np.mean(x.reshape(x.shape[0], x.shape[1], -1), axis=2, out=out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx = gxs[0]
        if gx is not None:
            np.divide(gout[:, :, None, None], gx.shape[2] * gx.shape[3], out=gx)


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
