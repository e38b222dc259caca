"""CPU kernels of the roi family: roi_pool, roi_align (docs/OPS.md), torchvision.ops' arithmetic.

Inputs: feature maps x [N, C, H, W] and boxes [R, 5] (batch index, x1, y1, x2, y2 in image
coordinates); output [R, C, oh, ow]. roi_pool rounds the scaled box to whole cells (half away
from zero, as C's round), splits it into oh x ow bins with floor/ceil edges and takes each bin's
first maximum, remembering where (the workspace `argmax`, -1 for an empty bin, whose output is 0)
for the backward. roi_align averages sampling_ratio^2 bilinear samples per bin (adaptive: ceil(box
size / bins) per side and box); a sample more than one cell outside the map reads 0. The boxes
get no gradient. A box's batch index is checked on the host before the loops: an index outside
the batch would read another sample's memory.
"""
import math

import numpy as np

from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.jit import njit
from dslc.runtime.kernel_api import Kernel, register


def check_boxes(op, rois, batch):
    """The batch indices must name samples of this batch: a user error in the data otherwise."""
    if rois.shape[0] == 0:
        return
    index = rois[:, 0]
    bad = (index != np.floor(index)) | (index < 0) | (index >= batch)
    if bad.any():
        r = int(np.argmax(bad))
        raise RuntimeUserError(f"{op}: box {r} has batch index {index[r]:g}, outside the batch of {batch} samples",
                               "the first column of each box row is the index of its sample in the batch "
                               f"(0 to {batch - 1})")


@njit
def _round(v):
    """C's round: half away from zero (numpy rounds half to even)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


@njit
def _roi_pool_forward(x, rois, scale, out, argmax):
    n_rois, channels, oh, ow = out.shape
    height, width = x.shape[2], x.shape[3]
    for r in range(n_rois):
        b = int(rois[r, 0])
        sw = int(_round(rois[r, 1] * scale))
        sh = int(_round(rois[r, 2] * scale))
        ew = int(_round(rois[r, 3] * scale))
        eh = int(_round(rois[r, 4] * scale))
        bin_h = max(eh - sh + 1, 1) / oh
        bin_w = max(ew - sw + 1, 1) / ow
        for ph in range(oh):
            h0 = min(max(int(math.floor(ph * bin_h)) + sh, 0), height)
            h1 = min(max(int(math.ceil((ph + 1) * bin_h)) + sh, 0), height)
            for pw in range(ow):
                w0 = min(max(int(math.floor(pw * bin_w)) + sw, 0), width)
                w1 = min(max(int(math.ceil((pw + 1) * bin_w)) + sw, 0), width)
                for c in range(channels):
                    if h1 <= h0 or w1 <= w0:
                        out[r, c, ph, pw] = 0
                        argmax[r, c, ph, pw] = -1
                        continue
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


@njit
def _roi_pool_backward(gout, rois, argmax, gx):
    n_rois, channels, oh, ow = gout.shape
    width = gx.shape[3]
    gx[...] = 0
    for r in range(n_rois):
        b = int(rois[r, 0])
        for c in range(channels):
            for ph in range(oh):
                for pw in range(ow):
                    at = argmax[r, c, ph, pw]
                    if at >= 0:
                        gx[b, c, at // width, at % width] += gout[r, c, ph, pw]


@njit
def _box_geometry(rois, r, scale, aligned, oh, ow, sampling):
    """(start y, start x, bin height, bin width, samples per bin in y, in x) of box r."""
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


@njit
def _bilinear(y, x, height, width):
    """torchvision's bilinear taps: (valid, y_low, x_low, y_high, x_high, w1, w2, w3, w4)."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return False, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    return True, y_low, x_low, y_high, x_high, hy * hx, hy * lx, ly * hx, ly * lx


@njit
def _roi_align_forward(x, rois, scale, sampling, aligned, out):
    n_rois, channels, oh, ow = out.shape
    height, width = x.shape[2], x.shape[3]
    for r in range(n_rois):
        b = int(rois[r, 0])
        sy, sx, bin_h, bin_w, gy, gxn = _box_geometry(rois, r, scale, aligned, oh, ow, sampling)
        count = max(gy * gxn, 1)
        for ph in range(oh):
            for pw in range(ow):
                for c in range(channels):
                    acc = 0.0
                    for iy in range(gy):
                        y = sy + ph * bin_h + (iy + 0.5) * bin_h / gy
                        for ix in range(gxn):
                            xx = sx + pw * bin_w + (ix + 0.5) * bin_w / gxn
                            ok, yl, xl, yh, xh, w1, w2, w3, w4 = _bilinear(y, xx, height, width)
                            if ok:
                                acc += (w1 * x[b, c, yl, xl] + w2 * x[b, c, yl, xh]
                                        + w3 * x[b, c, yh, xl] + w4 * x[b, c, yh, xh])
                    out[r, c, ph, pw] = acc / count


@njit
def _roi_align_backward(gout, rois, scale, sampling, aligned, gx):
    n_rois, channels, oh, ow = gout.shape
    height, width = gx.shape[2], gx.shape[3]
    gx[...] = 0
    for r in range(n_rois):
        b = int(rois[r, 0])
        sy, sx, bin_h, bin_w, gy, gxn = _box_geometry(rois, r, scale, aligned, oh, ow, sampling)
        count = max(gy * gxn, 1)
        for ph in range(oh):
            for pw in range(ow):
                for iy in range(gy):
                    y = sy + ph * bin_h + (iy + 0.5) * bin_h / gy
                    for ix in range(gxn):
                        xx = sx + pw * bin_w + (ix + 0.5) * bin_w / gxn
                        ok, yl, xl, yh, xh, w1, w2, w3, w4 = _bilinear(y, xx, height, width)
                        if not ok:
                            continue
                        for c in range(channels):
                            g = gout[r, c, ph, pw] / count
                            gx[b, c, yl, xl] += g * w1
                            gx[b, c, yl, xh] += g * w2
                            gx[b, c, yh, xl] += g * w3
                            gx[b, c, yh, xh] += g * w4


class _Roi(Kernel):
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.scale = float(spec.attrs["scale"])
        self.batch = spec.in_shapes[0][0]


@register("cpu", "roi_pool")
class RoiPool(_Roi):
    """Each bin's maximum, and where it was (the workspace) for the backward."""
    backward_reads_inputs = True      # the boxes' batch indices

    def workspace(self):
        return {"argmax": (tuple(self.spec.out_shape), "int64")}

    def forward(self, ctx, xs, params, out, ws):
        check_boxes("roi_pool", xs[1], self.batch)
        _roi_pool_forward(xs[0], xs[1], self.scale, out, ws["argmax"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _roi_pool_backward(gout, xs[1], ws["argmax"], gxs[0])


@register("cpu", "roi_align")
class RoiAlign(_Roi):
    """Each bin's mean of bilinear samples; the backward spreads it back over the same taps."""
    backward_reads_inputs = True

    def __init__(self, spec):
        super().__init__(spec)
        self.sampling = int(spec.attrs["sampling_ratio"])
        self.aligned = bool(spec.attrs["aligned"])

    def forward(self, ctx, xs, params, out, ws):
        check_boxes("roi_align", xs[1], self.batch)
        _roi_align_forward(xs[0], xs[1], self.scale, self.sampling, self.aligned, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _roi_align_backward(gout, xs[1], self.scale, self.sampling, self.aligned, gxs[0])
