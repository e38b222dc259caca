"""CUDA kernels of the activation family: relu, leaky_relu, elu, sigmoid, tanh, prelu, softmax, maxout.

The five pointwise activations share one forward and one backward kernel that switch on an op
code: the code is the same for every thread of a launch, so the branch never diverges, and a
plan compiles two kernels for all of them instead of ten.
"""
import math

import numpy as np
from numba import cuda, float32

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.cuda.reduce import block_max, block_sum, channel_view, reduction_threads
from dslc.runtime.kernel_api import Kernel, register

RELU, LEAKY_RELU, ELU, SIGMOID, TANH = range(5)


@cuda.jit
def _pointwise_forward(code, param, x, out):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        if code == RELU:
            y = float32(0) if v < 0 else v
        elif code == LEAKY_RELU:
            y = v if v > 0 else v * param
        elif code == ELU:
            y = v if v > 0 else param * math.expm1(v)
        elif code == SIGMOID:
            # exp of a non-positive number only, so it never overflows.
            e = math.exp(-abs(v))
            y = float32(1) / (float32(1) + e) if v >= 0 else e / (float32(1) + e)
        else:
            y = math.tanh(v)
        out[i] = y


@cuda.jit
def _pointwise_backward(code, param, x, out, gout, gx):
    i = cuda.grid(1)
    if i < x.size:
        g = gout[i]
        if code == RELU:
            d = g if x[i] > 0 else float32(0)
        elif code == LEAKY_RELU:
            d = g if x[i] > 0 else g * param
        elif code == ELU:
            # for x <= 0: d/dx alpha*(exp(x)-1) = alpha*exp(x) = out + alpha
            d = g if x[i] > 0 else g * (out[i] + param)
        elif code == SIGMOID:
            d = g * out[i] * (float32(1) - out[i])
        else:
            d = g * (float32(1) - out[i] * out[i])
        gx[i] = d


class _Pointwise(Kernel):
    """A pointwise activation: subclasses set the op code and their float attribute, if any."""
    code = RELU
    attr = None
    attr_default = 0.0

    def _param(self):
        return np.float32(self.spec.attrs.get(self.attr, self.attr_default) if self.attr else 0.0)

    def forward(self, ctx, xs, params, out, ws):
        x = xs[0].ravel()
        _pointwise_forward[blocks_1d(x.size), THREADS_1D](self.code, self._param(), x, out.ravel())

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            x = xs[0].ravel()
            _pointwise_backward[blocks_1d(x.size), THREADS_1D](
                self.code, self._param(), x, out.ravel(), gout.ravel(), gxs[0].ravel())


@register("cuda", "relu")
class Relu(_Pointwise):
    code = RELU


@register("cuda", "leaky_relu")
class LeakyRelu(_Pointwise):
    code = LEAKY_RELU
    attr, attr_default = "slope", 0.01


@register("cuda", "elu")
class Elu(_Pointwise):
    code = ELU
    attr, attr_default = "alpha", 1.0


@register("cuda", "sigmoid")
class Sigmoid(_Pointwise):
    code = SIGMOID


@register("cuda", "tanh")
class Tanh(_Pointwise):
    code = TANH


# --- prelu -----------------------------------------------------------------------------------

@cuda.jit
def _prelu_forward(x, weight, out):
    i = cuda.grid(1)
    if i < x.size:
        _, channels, size = x.shape
        n = i // (channels * size)
        c = (i // size) % channels
        s = i % size
        v = x[n, c, s]
        out[n, c, s] = v if v > 0 else weight[c] * v


@cuda.jit
def _prelu_backward(x, weight, gout, want_gx, gx, gweight):
    """One block per channel: the channel's input gradient and a tree reduction for gweight[c]."""
    scratch = cuda.shared.array(THREADS_1D, float32)
    channel = cuda.blockIdx.x
    batch, _, size = x.shape
    w = weight[channel]
    partial = float32(0)
    for e in range(cuda.threadIdx.x, batch * size, cuda.blockDim.x):
        n = e // size
        s = e % size
        v = x[n, channel, s]
        g = gout[n, channel, s]
        if v > 0:
            if want_gx:
                gx[n, channel, s] = g
        else:
            if want_gx:
                gx[n, channel, s] = w * g
            partial += v * g
    total = block_sum(scratch, partial)
    if cuda.threadIdx.x == 0:
        gweight[channel] = total


@register("cuda", "prelu")
class Prelu(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        shape = spec.in_shapes[0]
        self.channels = shape[1]
        self.threads = reduction_threads(shape[0] * int(np.prod(shape[2:], dtype=np.int64)))

    def workspace(self):
        # Receives the weight gradient when the plan does not want it.
        return {"unwanted_gweight": ((self.channels,), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        x = channel_view(xs[0])
        _prelu_forward[blocks_1d(x.size), THREADS_1D](x, params["weight"], channel_view(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx = gxs[0]
        if gx is None and "weight" not in gparams:
            return
        # gout stands in for an unwanted gx: same type, never written (want_gx is False).
        _prelu_backward[self.channels, self.threads](
            channel_view(xs[0]), params["weight"], channel_view(gout), gx is not None,
            channel_view(gx if gx is not None else gout), gparams.get("weight", ws["unwanted_gweight"]))


# --- softmax ---------------------------------------------------------------------------------
# One block per softmax row (a fixed (outer, inner) position of the (outer, A, inner) view):
# tree reductions for the row's max and sum of exponentials, then the block writes the row.

def _axis_view(a, axis):
    """View `a` as (outer, A, inner) around `axis`."""
    outer = int(np.prod(a.shape[:axis], dtype=np.int64))
    return a.reshape(outer, a.shape[axis], -1)


@cuda.jit
def _softmax_forward(x, out):
    scratch = cuda.shared.array(THREADS_1D, float32)
    _, length, inner = x.shape
    o = cuda.blockIdx.x // inner
    i = cuda.blockIdx.x % inner
    tid = cuda.threadIdx.x
    partial = float32(-math.inf)
    for a in range(tid, length, cuda.blockDim.x):
        partial = max(partial, x[o, a, i])
    top = block_max(scratch, partial)
    partial = float32(0)
    for a in range(tid, length, cuda.blockDim.x):
        e = math.exp(x[o, a, i] - top)
        out[o, a, i] = e
        partial += e
    scale = float32(1) / block_sum(scratch, partial)
    # Each thread rescales the very elements it wrote: no other thread touches them.
    for a in range(tid, length, cuda.blockDim.x):
        out[o, a, i] *= scale


@cuda.jit
def _softmax_backward(out, gout, gx):
    # gx = y * (g - sum_axis(g * y))
    scratch = cuda.shared.array(THREADS_1D, float32)
    _, length, inner = out.shape
    o = cuda.blockIdx.x // inner
    i = cuda.blockIdx.x % inner
    tid = cuda.threadIdx.x
    partial = float32(0)
    for a in range(tid, length, cuda.blockDim.x):
        partial += gout[o, a, i] * out[o, a, i]
    dot = block_sum(scratch, partial)
    for a in range(tid, length, cuda.blockDim.x):
        gx[o, a, i] = out[o, a, i] * (gout[o, a, i] - dot)


@register("cuda", "softmax")
class Softmax(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        shape = spec.in_shapes[0]
        self.axis = spec.attrs["axis"]
        self.rows = int(np.prod(shape, dtype=np.int64)) // shape[self.axis]
        self.threads = reduction_threads(shape[self.axis])

    def forward(self, ctx, xs, params, out, ws):
        _softmax_forward[self.rows, self.threads](_axis_view(xs[0], self.axis), _axis_view(out, self.axis))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _softmax_backward[self.rows, self.threads](
                _axis_view(out, self.axis), _axis_view(gout, self.axis), _axis_view(gxs[0], self.axis))


# --- maxout ----------------------------------------------------------------------------------
# One thread per output element; backward recomputes the argmax from x (the first piece holding
# the maximum, as the CPU kernel) and writes all k input gradients of its group, so every gx
# element has exactly one writer.

def _pieces_view(a, pieces):
    """(N, C, ...) -> (N, C/k, k, S)."""
    return a.reshape(a.shape[0], a.shape[1] // pieces, pieces, -1)


@cuda.jit
def _maxout_forward(x, out):
    i = cuda.grid(1)
    if i < out.size:
        _, groups, pieces, size = x.shape
        n = i // (groups * size)
        j = (i // size) % groups
        s = i % size
        best = x[n, j, 0, s]
        for p in range(1, pieces):
            v = x[n, j, p, s]
            if v > best or v != v:      # a NaN takes over, as on the CPU and in torch
                best = v
        out[n, j, s] = best


@cuda.jit
def _maxout_backward(x, gout, gx):
    i = cuda.grid(1)
    if i < gout.size:
        _, groups, pieces, size = x.shape
        n = i // (groups * size)
        j = (i // size) % groups
        s = i % size
        best = 0
        for p in range(1, pieces):
            v = x[n, j, p, s]
            if v > x[n, j, best, s] or v != v:
                best = p
        for p in range(pieces):
            gx[n, j, p, s] = gout[n, j, s] if p == best else float32(0)


@register("cuda", "maxout")
class Maxout(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        pieces = self.spec.attrs["pieces"]
        _maxout_forward[blocks_1d(out.size), THREADS_1D](_pieces_view(xs[0], pieces), channel_view(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            pieces = self.spec.attrs["pieces"]
            _maxout_backward[blocks_1d(gout.size), THREADS_1D](
                _pieces_view(xs[0], pieces), channel_view(gout), _pieces_view(gxs[0], pieces))
