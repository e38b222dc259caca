"""CPU kernels of the conv family: `conv` and `deconv` (transposed convolution).

Both are im2col + BLAS GEMM, one sample at a time into one reused column buffer: PERF-NOTES
measured that order fastest on this machine (whole-batch columns cost memory traffic, and
allocating per call cost ~1.6x). `np.dot` inside `@njit` calls BLAS, which owns the cores;
the im2col / col2im loops around it stay serial so Numba's and BLAS's thread pools never compete.

Layouts. Every array is viewed (never copied) with the groups made explicit and the spatial
dims flattened, so each per-(sample, group) operand of a GEMM is a C-contiguous matrix:
    conv:   x (N, G, C/G, H*W)   weight (G, F/G, C/G*kh*kw)   out (N, G, F/G, Ho*Wo)
    deconv: x (N, G, C/G, H*W)   weight (G, C/G, F/G*kh*kw)   out (N, G, F/G, Ho*Wo)
A column matrix has one row per (channel, kernel row, kernel col) and one column per
position of the grid the kernel slides over.

A 1x1 kernel with stride 1 and no padding makes the column matrix equal to the image itself,
so those "pointwise" layers GEMM straight from the input and need no column buffer.

Optional operands (bias, and each gradient of the backward pass) are passed as None when not
wanted; Numba compiles the `is None` branches away, so a frozen layer skips the weight
gradient and a first layer skips the input gradient (a col2im and a GEMM per sample).
"""
import numpy as np

from runtime.jit import njit
from runtime.kernel_api import Kernel, register


@njit
def _valid_grid_range(offset, stride, image_size, grid_size):
    """[lo, hi) of grid positions g with 0 <= g*stride + offset < image_size."""
    lo = max(0, -(offset // stride))              # ceil(-offset / stride)
    hi = min(grid_size, -((offset - image_size) // stride))   # ceil((image_size - offset) / stride)
    return lo, max(lo, hi)


@njit
def _im2col(image, image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, cols):
    """cols[(c*kh + i)*kw + j, oh*grid_w + ow] = image[c, ih, iw] (0 in the padding),
    ih = oh*sh - ph + i*dh, iw = ow*sw - pw + j*dw. image is (C, image_h*image_w)."""
    for c in range(image.shape[0]):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                col_offset = j * dw - pw
                ow_lo, ow_hi = _valid_grid_range(col_offset, sw, image_w, grid_w)
                for oh in range(grid_h):
                    ih = oh * sh - ph + i * dh
                    base = oh * grid_w
                    if ih < 0 or ih >= image_h:
                        cols[row, base:base + grid_w] = 0
                        continue
                    cols[row, base:base + ow_lo] = 0
                    cols[row, base + ow_hi:base + grid_w] = 0
                    src = ih * image_w + col_offset
                    for ow in range(ow_lo, ow_hi):
                        cols[row, base + ow] = image[c, src + ow * sw]


@njit
def _col2im(cols, image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, image):
    """The adjoint of _im2col: image = 0, then image[c, ih, iw] += every column entry that
    _im2col would have read from there."""
    image[:] = 0
    for c in range(image.shape[0]):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                col_offset = j * dw - pw
                ow_lo, ow_hi = _valid_grid_range(col_offset, sw, image_w, grid_w)
                for oh in range(grid_h):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= image_h:
                        continue
                    base = oh * grid_w
                    dst = ih * image_w + col_offset
                    for ow in range(ow_lo, ow_hi):
                        image[c, dst + ow * sw] += cols[row, base + ow]


@njit
def _add_bias(bias, out):
    """out (F, P) += bias (F) along rows: one (sample, group) block, right after its GEMM
    wrote it, while it is still in cache."""
    for f in range(out.shape[0]):
        out[f, :] += bias[f]


@njit
def _accumulate_bias_grad(gout, gbias):
    """gbias (F) += gout (F, P) summed along rows."""
    for f in range(gout.shape[0]):
        gbias[f] += np.sum(gout[f])


@njit
def _conv_forward(x, weight, bias, out, geometry, pointwise, cols):
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    for n in range(x.shape[0]):
        for g in range(x.shape[1]):
            if pointwise:
                np.dot(weight[g], x[n, g], out[n, g])
            else:
                _im2col(x[n, g], image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, cols)
                np.dot(weight[g], cols, out[n, g])
            if bias is not None:
                _add_bias(bias[g], out[n, g])


@njit
def _conv_backward(x, weight, gout, gx, gweight, gbias, geometry, pointwise, cols, gweight_sample):
    """gweight[g] = sum_n gout[n, g] @ im2col(x[n, g])^T; gx[n, g] = col2im(weight[g]^T @ gout[n, g])."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    if gweight is not None:
        gweight[:] = 0
    if gbias is not None:
        gbias[:] = 0
    for n in range(x.shape[0]):
        for g in range(x.shape[1]):
            if gbias is not None:
                _accumulate_bias_grad(gout[n, g], gbias[g])
            if gweight is not None:
                if pointwise:
                    np.dot(gout[n, g], x[n, g].T, gweight_sample)
                else:
                    _im2col(x[n, g], image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, cols)
                    np.dot(gout[n, g], cols.T, gweight_sample)
                gweight[g] += gweight_sample
            if gx is not None:
                if pointwise:
                    np.dot(weight[g].T, gout[n, g], gx[n, g])
                else:
                    np.dot(weight[g].T, gout[n, g], cols)
                    _col2im(cols, image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, gx[n, g])


@njit
def _deconv_forward(x, weight, bias, out, geometry, pointwise, cols):
    """out[n, g] = col2im(weight[g]^T @ x[n, g]): a conv's input-gradient pass, where the
    output is the image and the input is the grid the kernel slides over."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    for n in range(x.shape[0]):
        for g in range(x.shape[1]):
            if pointwise:
                np.dot(weight[g].T, x[n, g], out[n, g])
            else:
                np.dot(weight[g].T, x[n, g], cols)
                _col2im(cols, image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, out[n, g])
            if bias is not None:
                _add_bias(bias[g], out[n, g])


@njit
def _deconv_backward(x, weight, gout, gx, gweight, gbias, geometry, pointwise, cols, gweight_sample):
    """With C = im2col(gout[n, g]): gx[n, g] = weight[g] @ C, gweight[g] = sum_n x[n, g] @ C^T."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    if gweight is not None:
        gweight[:] = 0
    if gbias is not None:
        gbias[:] = 0
    for n in range(x.shape[0]):
        for g in range(x.shape[1]):
            if gbias is not None:
                _accumulate_bias_grad(gout[n, g], gbias[g])
            if gweight is None and gx is None:
                continue            # only the bias gradient is wanted: no column matrix
            if pointwise:
                gout_cols = gout[n, g]
            else:
                _im2col(gout[n, g], image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, cols)
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
        self.cols_shape = (0, 0) if self.pointwise else (window_channels * kh * kw, grid_h * grid_w)
        self.x_shape = (n, groups, in_channels // groups, in_h * in_w)
        self.out_shape = (n, groups, out_channels // groups, out_h * out_w)
        weight_rows = (in_channels if self.transposed else out_channels) // groups
        self.weight_shape = (groups, weight_rows, window_channels * kh * kw)
        self.bias_shape = (groups, out_channels // groups)

    def workspace(self):
        # cols: one sample's column matrix (empty for pointwise layers, which GEMM from the
        # image itself); gweight_sample: one sample's weight gradient, before it is summed.
        return {"cols": (self.cols_shape, "float32"),
                "gweight_sample": (self.weight_shape[1:], "float32")}

    def _operands(self, xs, params, out):
        bias = params["bias"] if self.has_bias else None
        return (_view(xs[0], self.x_shape), _view(params["weight"], self.weight_shape),
                _view(bias, self.bias_shape), _view(out, self.out_shape))

    def _grads(self, gout, gxs, gparams):
        return (_view(gout, self.out_shape), _view(gxs[0], self.x_shape),
                _view(gparams.get("weight"), self.weight_shape),
                _view(gparams.get("bias"), self.bias_shape))


@register("cpu", "conv")
class Conv(_ConvBase):
    def forward(self, ctx, xs, params, out, ws):
        x, weight, bias, out = self._operands(xs, params, out)
        _conv_forward(x, weight, bias, out, self.geometry, self.pointwise, ws["cols"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        x, weight, _, _ = self._operands(xs, params, out)
        gout, gx, gweight, gbias = self._grads(gout, gxs, gparams)
        _conv_backward(x, weight, gout, gx, gweight, gbias, self.geometry, self.pointwise,
                       ws["cols"], ws["gweight_sample"])


@register("cpu", "deconv")
class Deconv(_ConvBase):
    transposed = True

    def forward(self, ctx, xs, params, out, ws):
        x, weight, bias, out = self._operands(xs, params, out)
        _deconv_forward(x, weight, bias, out, self.geometry, self.pointwise, ws["cols"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        x, weight, _, _ = self._operands(xs, params, out)
        gout, gx, gweight, gbias = self._grads(gout, gxs, gparams)
        _deconv_backward(x, weight, gout, gx, gweight, gbias, self.geometry, self.pointwise,
                         ws["cols"], ws["gweight_sample"])
