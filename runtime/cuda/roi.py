"""CUDA kernels of the roi family: roi_pool, roi_align (docs/OPS.md); the arithmetic of the CPU
kernels (runtime/cpu/roi.py), which is torchvision.ops'.

The forwards run one thread per output element (box, channel, bin). The backwards run one
thread per output element too and add into the feature maps' gradient with atomics, since
bins of one box, and boxes, overlap; the gradient is zeroed first. The boxes (R x 5 numbers)
are copied to the host to check their batch indices before the launch, as the CPU kernel checks
them: an index outside the batch would read another sample's memory.
"""
import math

from numba import cuda

from dslc.runtime.cpu.roi import check_boxes
from dslc.runtime.cuda.devicekernels import fill
from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register


@cuda.jit(device=True)
def _c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


@cuda.jit(device=True)
def _pool_bin(rois, r, scale, ph, pw, oh, ow, height, width):
    """(h0, h1, w0, w1) of bin (ph, pw) of box r, clipped to the map."""
    sw = int(_c_round(rois[r, 1] * scale))
    sh = int(_c_round(rois[r, 2] * scale))
    ew = int(_c_round(rois[r, 3] * scale))
    eh = int(_c_round(rois[r, 4] * scale))
    bin_h = max(eh - sh + 1, 1) / oh
    bin_w = max(ew - sw + 1, 1) / ow
    h0 = min(max(int(math.floor(ph * bin_h)) + sh, 0), height)
    h1 = min(max(int(math.ceil((ph + 1) * bin_h)) + sh, 0), height)
    w0 = min(max(int(math.floor(pw * bin_w)) + sw, 0), width)
    w1 = min(max(int(math.ceil((pw + 1) * bin_w)) + sw, 0), width)
    return h0, h1, w0, w1


@cuda.jit
def _roi_pool_forward(x, rois, scale, out, argmax):
    i = cuda.grid(1)
    n_rois, channels, oh, ow = out.shape
    if i >= out.size:
        return
    pw = i % ow
    ph = (i // ow) % oh
    c = (i // (ow * oh)) % channels
    r = i // (ow * oh * channels)
    height, width = x.shape[2], x.shape[3]
    b = int(rois[r, 0])
    h0, h1, w0, w1 = _pool_bin(rois, r, scale, ph, pw, oh, ow, height, width)
    if h1 <= h0 or w1 <= w0:
        out[r, c, ph, pw] = 0
        argmax[r, c, ph, pw] = -1
        return
    best = x[b, c, h0, w0]
    at = h0 * width + w0
    for h in range(h0, h1):
        for w in range(w0, w1):
            v = x[b, c, h, w]
            if v > best:
                best = v
                at = h * width + w
    out[r, c, ph, pw] = best
    argmax[r, c, ph, pw] = at


@cuda.jit
def _roi_pool_backward(gout, rois, argmax, gx):
    i = cuda.grid(1)
    n_rois, channels, oh, ow = gout.shape
    if i >= gout.size:
        return
    pw = i % ow
    ph = (i // ow) % oh
    c = (i // (ow * oh)) % channels
    r = i // (ow * oh * channels)
    at = argmax[r, c, ph, pw]
    if at >= 0:
        width = gx.shape[3]
        cuda.atomic.add(gx, (int(rois[r, 0]), c, at // width, at % width), gout[r, c, ph, pw])


@cuda.jit(device=True)
def _box_geometry(rois, r, scale, aligned, oh, ow, sampling):
    offset = 0.5 if aligned else 0.0
    sx = rois[r, 1] * scale - offset
    sy = rois[r, 2] * scale - offset
    box_w = rois[r, 3] * scale - offset - sx
    box_h = rois[r, 4] * scale - offset - sy
    if not aligned:
        box_w = max(box_w, 1.0)
        box_h = max(box_h, 1.0)
    bin_h = box_h / oh
    bin_w = box_w / ow
    gy = sampling if sampling > 0 else int(math.ceil(box_h / oh))
    gx = sampling if sampling > 0 else int(math.ceil(box_w / ow))
    return sy, sx, bin_h, bin_w, gy, gx


@cuda.jit(device=True)
def _taps(y, x, height, width):
    """torchvision's bilinear taps: (valid, y_low, x_low, y_high, x_high, w1, w2, w3, w4)."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return False, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_low = height - 1
        y_high = y_low
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = width - 1
        x_high = x_low
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    return True, y_low, x_low, y_high, x_high, hy * hx, hy * lx, ly * hx, ly * lx


@cuda.jit
def _roi_align_forward(x, rois, scale, sampling, aligned, out):
    i = cuda.grid(1)
    n_rois, channels, oh, ow = out.shape
    if i >= out.size:
        return
    pw = i % ow
    ph = (i // ow) % oh
    c = (i // (ow * oh)) % channels
    r = i // (ow * oh * channels)
    height, width = x.shape[2], x.shape[3]
    b = int(rois[r, 0])
    sy, sx, bin_h, bin_w, gy, gxn = _box_geometry(rois, r, scale, aligned, oh, ow, sampling)
    count = max(gy * gxn, 1)
    acc = 0.0
    for iy in range(gy):
        y = sy + ph * bin_h + (iy + 0.5) * bin_h / gy
        for ix in range(gxn):
            xx = sx + pw * bin_w + (ix + 0.5) * bin_w / gxn
            ok, yl, xl, yh, xh, w1, w2, w3, w4 = _taps(y, xx, height, width)
            if ok:
                acc += w1 * x[b, c, yl, xl] + w2 * x[b, c, yl, xh] + w3 * x[b, c, yh, xl] + w4 * x[b, c, yh, xh]
    out[r, c, ph, pw] = acc / count


@cuda.jit
def _roi_align_backward(gout, rois, scale, sampling, aligned, gx):
    i = cuda.grid(1)
    n_rois, channels, oh, ow = gout.shape
    if i >= gout.size:
        return
    pw = i % ow
    ph = (i // ow) % oh
    c = (i // (ow * oh)) % channels
    r = i // (ow * oh * channels)
    height, width = gx.shape[2], gx.shape[3]
    b = int(rois[r, 0])
    sy, sx, bin_h, bin_w, gy, gxn = _box_geometry(rois, r, scale, aligned, oh, ow, sampling)
    g = gout[r, c, ph, pw] / max(gy * gxn, 1)
    for iy in range(gy):
        y = sy + ph * bin_h + (iy + 0.5) * bin_h / gy
        for ix in range(gxn):
            xx = sx + pw * bin_w + (ix + 0.5) * bin_w / gxn
            ok, yl, xl, yh, xh, w1, w2, w3, w4 = _taps(y, xx, height, width)
            if ok:
                cuda.atomic.add(gx, (b, c, yl, xl), g * w1)
                cuda.atomic.add(gx, (b, c, yl, xh), g * w2)
                cuda.atomic.add(gx, (b, c, yh, xl), g * w3)
                cuda.atomic.add(gx, (b, c, yh, xh), g * w4)


class _Roi(Kernel):
    backward_reads_out = False
    backward_reads_inputs = True      # the boxes

    def __init__(self, spec):
        super().__init__(spec)
        self.scale = float(spec.attrs["scale"])
        self.batch = spec.in_shapes[0][0]
        self.size = 1
        for d in spec.out_shape:
            self.size *= int(d)

    def _check(self, rois):
        check_boxes(self.spec.op, rois.copy_to_host(), self.batch)


@register("cuda", "roi_pool")
class RoiPool(_Roi):
    def workspace(self):
        return {"argmax": (tuple(self.spec.out_shape), "int64")}

    def forward(self, ctx, xs, params, out, ws):
        self._check(xs[1])
        if self.size:
            _roi_pool_forward[blocks_1d(self.size), THREADS_1D](xs[0], xs[1], self.scale, out, ws["argmax"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        fill(gxs[0], 0.0)
        if self.size:
            _roi_pool_backward[blocks_1d(self.size), THREADS_1D](gout, xs[1], ws["argmax"], gxs[0])


@register("cuda", "roi_align")
class RoiAlign(_Roi):
    def __init__(self, spec):
        super().__init__(spec)
        self.sampling = int(spec.attrs["sampling_ratio"])
        self.aligned = bool(spec.attrs["aligned"])

    def forward(self, ctx, xs, params, out, ws):
        self._check(xs[1])
        if self.size:
            _roi_align_forward[blocks_1d(self.size), THREADS_1D](xs[0], xs[1], self.scale, self.sampling,
                                                                 self.aligned, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        fill(gxs[0], 0.0)
        if self.size:
            _roi_align_backward[blocks_1d(self.size), THREADS_1D](gout, xs[1], self.scale, self.sampling,
                                                                  self.aligned, gxs[0])
