"""CUDA kernels of the pool family: maxpool, avgpool, global_avgpool, maxunpool, unpool, upsample.

Every kernel runs one thread per element of the array it writes. Gradients that several output
elements send to one input element (overlapping windows, nearest/bilinear upsampling) are
gathered by the input element's thread, looping over the outputs that read it, rather than
scattered with atomics: race-free, deterministic, and every element of the gradient is written,
so no zero-fill pass is needed.

Max pooling records each window's argmax (first maximum in row-major window order, like torch)
as a flat index ih * W + iw into the workspace; max-unpooling recomputes it on its `src` input.
"""
from numba import cuda

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register


@cuda.jit(device=True)
def _windows_covering(i, kernel, stride, pad, grid_size):
    """[lo, hi) of the window positions o whose window o*stride - pad + [0, kernel) contains i."""
    lo = max(0, (i + pad - kernel + stride) // stride)
    hi = min(grid_size, (i + pad) // stride + 1)
    return lo, hi


@cuda.jit(device=True)
def _padded_extent(o, kernel, stride, pad, image_size):
    """How many places of window o lie inside the input or its padding: the kernel, except for
    a ceil-mode window overhanging the right padding. Average pooling divides by this
    (count_include_pad=True: padding counts as zeros, overhang not at all), as torch does."""
    start = o * stride - pad
    return min(start + kernel, image_size + pad) - start


@cuda.jit
def _window_argmax_kernel(x, kh, kw, sh, sw, ph, pw, argmax):
    idx = cuda.grid(1)
    if idx < argmax.size:
        grid_h = argmax.shape[2]
        grid_w = argmax.shape[3]
        ow = idx % grid_w
        oh = (idx // grid_w) % grid_h
        c = (idx // (grid_w * grid_h)) % argmax.shape[1]
        n = idx // (grid_w * grid_h * argmax.shape[1])
        best = x.dtype.type(0)      # a placeholder: the first in-bounds element replaces it
        best_at = -1
        for i in range(kh):
            ih = oh * sh - ph + i
            if 0 <= ih < x.shape[2]:
                for j in range(kw):
                    iw = ow * sw - pw + j
                    if 0 <= iw < x.shape[3] and (best_at < 0 or x[n, c, ih, iw] > best):
                        best = x[n, c, ih, iw]
                        best_at = ih * x.shape[3] + iw
        argmax[n, c, oh, ow] = best_at


@cuda.jit
def _gather_at_argmax_kernel(src, argmax, dst):
    """dst[n, c, o] = src[n, c, argmax[n, c, o]] with src viewed as (N, C, H*W)."""
    idx = cuda.grid(1)
    if idx < dst.size:
        positions = dst.shape[2]
        n = idx // (positions * dst.shape[1])
        c = (idx // positions) % dst.shape[1]
        dst[n, c, idx % positions] = src[n, c, argmax[n, c, idx % positions]]


@cuda.jit
def _place_at_argmax_kernel(src, argmax, kh, kw, sh, sw, ph, pw, accumulate, dst):
    """The reverse of the gather: dst[n, c, ih, iw] receives src[n, c, oh, ow] from every window
    whose argmax is (ih, iw), summed if `accumulate`, else the last such window in row-major
    order wins (max-unpooling, like torch's sequential CPU loop); 0 if there is none."""
    idx = cuda.grid(1)
    if idx < dst.size:
        height = dst.shape[2]
        width = dst.shape[3]
        iw = idx % width
        ih = (idx // width) % height
        c = (idx // (width * height)) % dst.shape[1]
        n = idx // (width * height * dst.shape[1])
        here = ih * width + iw
        value = dst.dtype.type(0)
        oh_lo, oh_hi = _windows_covering(ih, kh, sh, ph, src.shape[2])
        ow_lo, ow_hi = _windows_covering(iw, kw, sw, pw, src.shape[3])
        for oh in range(oh_lo, oh_hi):
            for ow in range(ow_lo, ow_hi):
                if argmax[n, c, oh, ow] == here:
                    if accumulate:
                        value += src[n, c, oh, ow]
                    else:
                        value = src[n, c, oh, ow]
        dst[n, c, ih, iw] = value


@cuda.jit
def _avgpool_kernel(x, kh, kw, sh, sw, ph, pw, out):
    """Window sums over the window's padded area (kh*kw but at a ceil-mode edge; padding
    counts as zeros: count_include_pad=True)."""
    idx = cuda.grid(1)
    if idx < out.size:
        grid_h = out.shape[2]
        grid_w = out.shape[3]
        ow = idx % grid_w
        oh = (idx // grid_w) % grid_h
        c = (idx // (grid_w * grid_h)) % out.shape[1]
        n = idx // (grid_w * grid_h * out.shape[1])
        total = x.dtype.type(0)
        for i in range(kh):
            ih = oh * sh - ph + i
            if 0 <= ih < x.shape[2]:
                for j in range(kw):
                    iw = ow * sw - pw + j
                    if 0 <= iw < x.shape[3]:
                        total += x[n, c, ih, iw]
        area = _padded_extent(oh, kh, sh, ph, x.shape[2]) * _padded_extent(ow, kw, sw, pw, x.shape[3])
        out[n, c, oh, ow] = total / x.dtype.type(area)


@cuda.jit
def _avgpool_backward_kernel(gout, kh, kw, sh, sw, ph, pw, gx):
    idx = cuda.grid(1)
    if idx < gx.size:
        height = gx.shape[2]
        width = gx.shape[3]
        iw = idx % width
        ih = (idx // width) % height
        c = (idx // (width * height)) % gx.shape[1]
        n = idx // (width * height * gx.shape[1])
        total = gx.dtype.type(0)
        oh_lo, oh_hi = _windows_covering(ih, kh, sh, ph, gout.shape[2])
        ow_lo, ow_hi = _windows_covering(iw, kw, sw, pw, gout.shape[3])
        for oh in range(oh_lo, oh_hi):
            rows = _padded_extent(oh, kh, sh, ph, height)
            for ow in range(ow_lo, ow_hi):
                total += gout[n, c, oh, ow] / gx.dtype.type(rows * _padded_extent(ow, kw, sw, pw, width))
        gx[n, c, ih, iw] = total


@cuda.jit
def _global_avgpool_kernel(x, out):
    """out[n, c] = mean of x[n, c, :] with x viewed as (N, C, H*W)."""
    idx = cuda.grid(1)
    if idx < out.size:
        n = idx // out.shape[1]
        c = idx % out.shape[1]
        total = x.dtype.type(0)
        for p in range(x.shape[2]):
            total += x[n, c, p]
        out[n, c] = total / x.dtype.type(x.shape[2])


@cuda.jit
def _global_avgpool_backward_kernel(gout, gx):
    idx = cuda.grid(1)
    if idx < gx.size:
        positions = gx.shape[2]
        n = idx // (positions * gx.shape[1])
        c = (idx // positions) % gx.shape[1]
        gx[n, c, idx % positions] = gout[n, c] / gx.dtype.type(positions)


@cuda.jit
def _unpool_kernel(x, sh, sw, out):
    """Bed of nails: out[n, c, i, j] = x[n, c, i / sh, j / sw] where both divide, else 0."""
    idx = cuda.grid(1)
    if idx < out.size:
        width = out.shape[3]
        height = out.shape[2]
        j = idx % width
        i = (idx // width) % height
        c = (idx // (width * height)) % out.shape[1]
        n = idx // (width * height * out.shape[1])
        if i % sh == 0 and j % sw == 0:
            out[n, c, i, j] = x[n, c, i // sh, j // sw]
        else:
            out[n, c, i, j] = 0


@cuda.jit
def _strided_pick_kernel(gout, sh, sw, gx):
    """gx[n, c, i, j] = gout[n, c, i*sh, j*sw]: the gradient of the bed-of-nails unpool."""
    idx = cuda.grid(1)
    if idx < gx.size:
        width = gx.shape[3]
        height = gx.shape[2]
        j = idx % width
        i = (idx // width) % height
        c = (idx // (width * height)) % gx.shape[1]
        n = idx // (width * height * gx.shape[1])
        gx[n, c, i, j] = gout[n, c, i * sh, j * sw]


@cuda.jit
def _upsample_nearest_kernel(x, sh, sw, out):
    idx = cuda.grid(1)
    if idx < out.size:
        width = out.shape[3]
        height = out.shape[2]
        j = idx % width
        i = (idx // width) % height
        c = (idx // (width * height)) % out.shape[1]
        n = idx // (width * height * out.shape[1])
        out[n, c, i, j] = x[n, c, i // sh, j // sw]


@cuda.jit
def _upsample_nearest_backward_kernel(gout, sh, sw, gx):
    """gx[n, c, i, j] = sum of gout over the sh x sw block that copied x[n, c, i, j]."""
    idx = cuda.grid(1)
    if idx < gx.size:
        width = gx.shape[3]
        height = gx.shape[2]
        j = idx % width
        i = (idx // width) % height
        c = (idx // (width * height)) % gx.shape[1]
        n = idx // (width * height * gx.shape[1])
        total = gx.dtype.type(0)
        for a in range(sh):
            for b in range(sw):
                total += gout[n, c, i * sh + a, j * sw + b]
        gx[n, c, i, j] = total


@cuda.jit(device=True)
def _linear_source(dst, scale, size):
    """Bilinear source of output index dst along one axis, align_corners=False like torch:
    the two input indices and their weights (equal indices at the upper border)."""
    real = max((dst + 0.5) / scale - 0.5, 0.0)
    lo = int(real)
    hi = lo + 1 if lo < size - 1 else lo
    frac = real - lo
    return lo, hi, 1.0 - frac, frac


@cuda.jit(device=True)
def _linear_weight(dst, src, scale, size):
    """How much input index src contributes to output index dst along one axis."""
    lo, hi, w_lo, w_hi = _linear_source(dst, scale, size)
    weight = 0.0
    if lo == src:
        weight += w_lo
    if hi == src:
        weight += w_hi
    return weight


@cuda.jit
def _upsample_bilinear_kernel(x, sh, sw, out):
    idx = cuda.grid(1)
    if idx < out.size:
        width = out.shape[3]
        height = out.shape[2]
        j = idx % width
        i = (idx // width) % height
        c = (idx // (width * height)) % out.shape[1]
        n = idx // (width * height * out.shape[1])
        i0, i1, wi0, wi1 = _linear_source(i, sh, x.shape[2])
        j0, j1, wj0, wj1 = _linear_source(j, sw, x.shape[3])
        out[n, c, i, j] = (wi0 * (wj0 * x[n, c, i0, j0] + wj1 * x[n, c, i0, j1])
                           + wi1 * (wj0 * x[n, c, i1, j0] + wj1 * x[n, c, i1, j1]))


@cuda.jit
def _upsample_bilinear_backward_kernel(gout, sh, sw, gx):
    """Gather: input row i is read only by output rows whose lower source row is i - 1 or i,
    all inside [(i - 1)*sh, (i + 2)*sh); likewise for columns."""
    idx = cuda.grid(1)
    if idx < gx.size:
        width = gx.shape[3]
        height = gx.shape[2]
        j = idx % width
        i = (idx // width) % height
        c = (idx // (width * height)) % gx.shape[1]
        n = idx // (width * height * gx.shape[1])
        total = 0.0
        for oi in range(max(0, (i - 1) * sh), min(gout.shape[2], (i + 2) * sh)):
            row_weight = _linear_weight(oi, i, sh, height)
            if row_weight != 0.0:
                for oj in range(max(0, (j - 1) * sw), min(gout.shape[3], (j + 2) * sw)):
                    total += row_weight * _linear_weight(oj, j, sw, width) * gout[n, c, oi, oj]
        gx[n, c, i, j] = total


def _launch(kernel, size, *args):
    kernel[blocks_1d(size), THREADS_1D](*args)


def _flat3(t):
    return t.reshape(t.shape[0], t.shape[1], -1)


class _WindowPool(Kernel):
    """Reads kernel / stride / pad; `window` is the argument tuple the window kernels take.
    Ceil mode needs nothing more: the grid side's array (the shape rule sized it) holds the
    extra windows, and the kernels clip every window to the image."""

    def __init__(self, spec):
        super().__init__(spec)
        a = spec.attrs
        self.window = (*a["kernel"], *a["stride"], *a["pad"])


@register("cuda", "maxpool")
class MaxPool(_WindowPool):
    def workspace(self):
        return {"argmax": (self.spec.out_shape, "int32")}

    def forward(self, ctx, xs, params, out, ws):
        _launch(_window_argmax_kernel, out.size, xs[0], *self.window, ws["argmax"])
        _launch(_gather_at_argmax_kernel, out.size, _flat3(xs[0]), _flat3(ws["argmax"]), _flat3(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _launch(_place_at_argmax_kernel, gxs[0].size, gout, ws["argmax"], *self.window, True, gxs[0])


@register("cuda", "maxunpool")
class MaxUnpool(_WindowPool):
    """xs = [y, src]: y's values go to the argmax of each window of src. src gets no gradient."""

    def workspace(self):
        return {"argmax": (self.spec.in_shapes[0], "int32")}

    def forward(self, ctx, xs, params, out, ws):
        y, src = xs
        _launch(_window_argmax_kernel, y.size, src, *self.window, ws["argmax"])
        _launch(_place_at_argmax_kernel, out.size, y, ws["argmax"], *self.window, False, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _launch(_gather_at_argmax_kernel, gxs[0].size, _flat3(gout), _flat3(ws["argmax"]), _flat3(gxs[0]))


@register("cuda", "avgpool")
class AvgPool(_WindowPool):
    def forward(self, ctx, xs, params, out, ws):
        _launch(_avgpool_kernel, out.size, xs[0], *self.window, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _launch(_avgpool_backward_kernel, gxs[0].size, gout, *self.window, gxs[0])


@register("cuda", "global_avgpool")
class GlobalAvgPool(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        _launch(_global_avgpool_kernel, out.size, _flat3(xs[0]), out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _launch(_global_avgpool_backward_kernel, gxs[0].size, gout, _flat3(gxs[0]))


class _Resample(Kernel):
    """Reads the integer scale (sh, sw) of unpool / upsample."""

    def __init__(self, spec):
        super().__init__(spec)
        self.scale = tuple(int(s) for s in spec.attrs["scale"])


@register("cuda", "unpool")
class Unpool(_Resample):
    def forward(self, ctx, xs, params, out, ws):
        _launch(_unpool_kernel, out.size, xs[0], *self.scale, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _launch(_strided_pick_kernel, gxs[0].size, gout, *self.scale, gxs[0])


@register("cuda", "upsample")
class Upsample(_Resample):
    def __init__(self, spec):
        super().__init__(spec)
        bilinear = spec.attrs["mode"] == "bilinear"
        self.forward_kernel = _upsample_bilinear_kernel if bilinear else _upsample_nearest_kernel
        self.backward_kernel = _upsample_bilinear_backward_kernel if bilinear else _upsample_nearest_backward_kernel

    def forward(self, ctx, xs, params, out, ws):
        _launch(self.forward_kernel, out.size, xs[0], *self.scale, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _launch(self.backward_kernel, gxs[0].size, gout, *self.scale, gxs[0])
