"""CUDA kernels of the elementwise family: exp, log, sqrt, square, abs, scale, shift, clamp, relu6,
mul, sub, div, mean, reduce_sum, reduce_mean.

The unary ops share one forward and one backward kernel that switch on an op code (the same
for every thread of a launch, so the branch never diverges), as the activations do.

Broadcasting and reductions walk index arithmetic on flat arrays: the shapes travel as tuples
(the same for a whole launch), an input's stride is 0 along an axis it is broadcast on, and a
gradient (or reduction) thread owns one element of the smaller array and sums every output
position that maps to it, so no atomics are needed.
"""
import math

import numpy as np
from numba import cuda, float32

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register

EXP, LOG, SQRT, SQUARE, ABS, SCALE, SHIFT, CLAMP, RELU6 = range(9)
MUL, SUB, DIV = range(3)


# --- unary -----------------------------------------------------------------------------------

@cuda.jit
def _unary_forward(code, p, q, x, out):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        if code == EXP:
            y = math.exp(v)
        elif code == LOG:
            y = math.log(v)
        elif code == SQRT:
            y = math.sqrt(v)
        elif code == SQUARE:
            y = v * v
        elif code == ABS:
            y = abs(v)
        elif code == SCALE:
            y = v * p
        elif code == SHIFT:
            y = v + p
        else:
            # CLAMP and RELU6, bounds [p, q]; NaN fails both tests and stays NaN, as torch
            y = v
            if v < p:
                y = p
            if v > q:
                y = q
        out[i] = y


@cuda.jit
def _unary_backward(code, p, q, x, out, gout, gx):
    i = cuda.grid(1)
    if i < gx.size:
        g = gout[i]
        if code == EXP:
            d = g * out[i]
        elif code == LOG:
            d = g / x[i]
        elif code == SQRT:
            d = g / out[i] * float32(0.5)
        elif code == SQUARE:
            d = x[i] * g * float32(2)
        elif code == ABS:
            v = x[i]
            d = g if v > 0 else (-g if v < 0 else float32(0))
        elif code == SCALE:
            d = g * p
        elif code == SHIFT:
            d = g
        elif code == CLAMP:
            v = x[i]
            d = g if p <= v <= q else float32(0)
        else:
            v = x[i]
            d = g if p < v < q else float32(0)
        gx[i] = d


class _Unary(Kernel):
    """Subclasses set the op code and, where they have them, the two float parameters."""
    code = EXP
    backward_reads_inputs = True
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.p, self.q = (np.float32(v) for v in self._params(spec.attrs))

    @staticmethod
    def _params(attrs):
        return 0.0, 0.0

    def forward(self, ctx, xs, params, out, ws):
        x = xs[0].ravel()
        _unary_forward[blocks_1d(x.size), THREADS_1D](self.code, self.p, self.q, x, out.ravel())

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            gx = gxs[0].ravel()
            _unary_backward[blocks_1d(gx.size), THREADS_1D](
                self.code, self.p, self.q, xs[0].ravel(), out.ravel(), gout.ravel(), gx)


@register("cuda", "exp")
class Exp(_Unary):
    code = EXP
    backward_reads_inputs = False
    backward_reads_out = True


@register("cuda", "log")
class Log(_Unary):
    code = LOG


@register("cuda", "sqrt")
class Sqrt(_Unary):
    code = SQRT
    backward_reads_inputs = False
    backward_reads_out = True


@register("cuda", "square")
class Square(_Unary):
    code = SQUARE


@register("cuda", "abs")
class Abs(_Unary):
    code = ABS


@register("cuda", "scale")
class Scale(_Unary):
    code = SCALE
    backward_reads_inputs = False

    @staticmethod
    def _params(attrs):
        return attrs["factor"], 0.0


@register("cuda", "shift")
class Shift(_Unary):
    code = SHIFT
    backward_reads_inputs = False

    @staticmethod
    def _params(attrs):
        return attrs["offset"], 0.0


@register("cuda", "clamp")
class Clamp(_Unary):
    code = CLAMP

    @staticmethod
    def _params(attrs):
        low, high = attrs.get("min"), attrs.get("max")
        return (-np.inf if low is None else low), (np.inf if high is None else high)


@register("cuda", "relu6")
class Relu6(_Unary):
    code = RELU6

    @staticmethod
    def _params(attrs):
        return 0.0, 6.0


# --- binary, with broadcasting ---------------------------------------------------------------

def _strides(in_shape, out_shape):
    """Element strides of a C-contiguous `in_shape` array seen as `out_shape`: 0 where broadcast."""
    strides, step = [], 1
    for i, o in zip(reversed(in_shape), reversed(out_shape)):
        strides.append(0 if i != o else step)
        step *= i
    return tuple(reversed(strides))


@cuda.jit
def _binary_forward(code, a, b, out, shape, a_st, b_st):
    i = cuda.grid(1)
    if i < out.size:
        rest, ia, ib = i, 0, 0
        for d in range(len(shape) - 1, -1, -1):
            c = rest % shape[d]
            rest //= shape[d]
            ia += c * a_st[d]
            ib += c * b_st[d]
        if code == MUL:
            out[i] = a[ia] * b[ib]
        elif code == SUB:
            out[i] = a[ia] - b[ib]
        else:
            out[i] = a[ia] / b[ib]


@cuda.jit
def _binary_backward(code, side, a, b, gout, g, shape, g_shape, a_st, b_st, count):
    """g[j]: the gradient of input `side` at its element j, summed over the `count` output
    positions that read it (the product of the sizes of its broadcast axes)."""
    j = cuda.grid(1)
    if j < g.size:
        acc = float32(0)
        for t in range(count):
            rest_j, rest_t, o, o_step, ia, ib = j, t, 0, 1, 0, 0
            for d in range(len(shape) - 1, -1, -1):
                if g_shape[d] == shape[d]:
                    c = rest_j % shape[d]
                    rest_j //= shape[d]
                else:
                    c = rest_t % shape[d]
                    rest_t //= shape[d]
                o += c * o_step
                o_step *= shape[d]
                ia += c * a_st[d]
                ib += c * b_st[d]
            gv = gout[o]
            if code == MUL:
                acc += gv * (b[ib] if side == 0 else a[ia])
            elif code == SUB:
                acc += gv if side == 0 else -gv
            elif side == 0:
                acc += gv / b[ib]
            else:
                acc += -gv * a[ia] / (b[ib] * b[ib])
        g[j] = acc


class _Binary(Kernel):
    code = MUL

    def __init__(self, spec):
        super().__init__(spec)
        self.shape = tuple(int(d) for d in spec.out_shape)
        self.in_shapes = [tuple(int(d) for d in s) for s in spec.in_shapes]
        self.a_st, self.b_st = (_strides(s, self.shape) for s in self.in_shapes)
        self.size = int(np.prod(self.shape, dtype=np.int64))

    def forward(self, ctx, xs, params, out, ws):
        _binary_forward[blocks_1d(self.size), THREADS_1D](
            self.code, xs[0].ravel(), xs[1].ravel(), out.ravel(), self.shape, self.a_st, self.b_st)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for side, gx in enumerate(gxs):
            if gx is None:
                continue
            g_shape = self.in_shapes[side]
            count = self.size // int(np.prod(g_shape, dtype=np.int64))
            _binary_backward[blocks_1d(gx.size), THREADS_1D](
                self.code, side, xs[0].ravel(), xs[1].ravel(), gout.ravel(), gx.ravel(),
                self.shape, g_shape, self.a_st, self.b_st, count)


@register("cuda", "mul")
class Mul(_Binary):
    code = MUL
    backward_reads_out = False


@register("cuda", "sub")
class Sub(_Binary):
    code = SUB
    backward_reads_inputs = False
    backward_reads_out = False


@register("cuda", "div")
class Div(_Binary):
    code = DIV
    backward_reads_out = False


# --- the mean of tensors ---------------------------------------------------------------------

@cuda.jit
def _add_into(out, x, first):
    """out += x, or out = x where `first`."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] if first else out[i] + x[i]


@cuda.jit
def _divide(x, k, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] / k


@register("cuda", "mean")
class Mean(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        flat = out.ravel()
        grid = blocks_1d(flat.size)
        for k, x in enumerate(xs):
            _add_into[grid, THREADS_1D](flat, x.ravel(), k == 0)
        _divide[grid, THREADS_1D](flat, np.float32(len(xs)), flat)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for gx in gxs:
            if gx is not None:
                flat = gx.ravel()
                _divide[blocks_1d(flat.size), THREADS_1D](gout.ravel(), np.float32(len(xs)), flat)


# --- reductions over axes --------------------------------------------------------------------

@cuda.jit
def _reduce_forward(x, out, shape, kept, count, divisor):
    """out[j] (in the keepdims shape `kept`) = the sum of x over the reduced axes, / divisor."""
    j = cuda.grid(1)
    if j < out.size:
        acc = float32(0)
        for t in range(count):
            rest_j, rest_t, o, o_step = j, t, 0, 1
            for d in range(len(shape) - 1, -1, -1):
                if kept[d] == shape[d]:
                    c = rest_j % shape[d]
                    rest_j //= shape[d]
                else:
                    c = rest_t % shape[d]
                    rest_t //= shape[d]
                o += c * o_step
                o_step *= shape[d]
            acc += x[o]
        out[j] = acc / divisor


@cuda.jit
def _reduce_backward(gout, gx, shape, kept, divisor):
    """gx[i] = gout at i's position with the reduced axes dropped, / divisor."""
    i = cuda.grid(1)
    if i < gx.size:
        rest, o, o_step = i, 0, 1
        for d in range(len(shape) - 1, -1, -1):
            c = rest % shape[d]
            rest //= shape[d]
            if kept[d] == shape[d]:
                o += c * o_step
                o_step *= shape[d]
        gx[i] = gout[o] / divisor


class _Reduce(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False
    mean = False

    def __init__(self, spec):
        super().__init__(spec)
        axes = tuple(spec.attrs["axes"])
        self.shape = tuple(int(d) for d in spec.in_shapes[0])
        self.kept = tuple(1 if d in axes else s for d, s in enumerate(self.shape))
        self.count = int(np.prod([self.shape[d] for d in axes], dtype=np.int64))
        self.divisor = np.float32(self.count if self.mean else 1)

    def forward(self, ctx, xs, params, out, ws):
        flat = out.ravel()
        _reduce_forward[blocks_1d(flat.size), THREADS_1D](
            xs[0].ravel(), flat, self.shape, self.kept, self.count, self.divisor)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            gx = gxs[0].ravel()
            _reduce_backward[blocks_1d(gx.size), THREADS_1D](gout.ravel(), gx, self.shape, self.kept, self.divisor)


@register("cuda", "reduce_sum")
class ReduceSum(_Reduce):
    mean = False


@register("cuda", "reduce_mean")
class ReduceMean(_Reduce):
    mean = True
