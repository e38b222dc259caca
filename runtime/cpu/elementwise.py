"""CPU kernels of the elementwise family: exp, log, sqrt, square, abs, scale, shift, clamp, relu6,
mul, sub, div, mean, reduce_sum, reduce_mean.

Most of the work is numpy ufuncs writing into the plan's buffers (`out=`): their SIMD loops are
as fast as a Numba loop for streaming arithmetic and much faster for exp, log and sqrt (this
Numba has no SVML; see runtime/cpu/activation.py). Broadcasting is numpy's, which is torch's,
and the gradient of a broadcast input is the output gradient summed over the axes it was
stretched along (`np.sum(..., keepdims=True)` into the input's gradient). Only clamp's masked
backward is a Numba loop: numpy would need a temporary boolean mask per step.
"""
import numpy as np

from dslc.runtime.jit import parallel_elementwise, pnjit, prange
from dslc.runtime.kernel_api import Kernel, register

# --- unary -----------------------------------------------------------------------------------

class _Unary(Kernel):
    """One input, the output of its shape; subclasses write `_forward(x, out)` and
    `_backward(x, out, gout, gx)` on flat arrays."""
    backward_reads_inputs = True
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        self._forward(xs[0].reshape(-1), out.reshape(-1))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            self._backward(xs[0].reshape(-1), out.reshape(-1), gout.reshape(-1), gxs[0].reshape(-1))


@register("cpu", "exp")
class Exp(_Unary):
    backward_reads_inputs = False      # d exp(x) = exp(x): the output
    backward_reads_out = True
    forward_in_place = True

    def _forward(self, x, out):
        np.exp(x, out=out)

    def _backward(self, x, out, gout, gx):
        np.multiply(gout, out, out=gx)


@register("cpu", "log")
class Log(_Unary):
    def _forward(self, x, out):
        np.log(x, out=out)

    def _backward(self, x, out, gout, gx):
        np.divide(gout, x, out=gx)


@register("cpu", "sqrt")
class Sqrt(_Unary):
    backward_reads_inputs = False      # d sqrt(x) = 1 / (2 sqrt(x)): the output
    backward_reads_out = True
    forward_in_place = True

    def _forward(self, x, out):
        np.sqrt(x, out=out)

    def _backward(self, x, out, gout, gx):
        np.divide(gout, out, out=gx)
        gx *= np.float32(0.5)


@register("cpu", "square")
class Square(_Unary):
    def _forward(self, x, out):
        np.square(x, out=out)

    def _backward(self, x, out, gout, gx):
        np.multiply(x, gout, out=gx)
        gx *= np.float32(2)


@register("cpu", "abs")
class Abs(_Unary):
    def _forward(self, x, out):
        np.abs(x, out=out)

    def _backward(self, x, out, gout, gx):
        np.sign(x, out=gx)          # 0 at 0, as torch
        gx *= gout


@register("cpu", "scale")
class Scale(_Unary):
    backward_reads_inputs = False
    forward_in_place = True

    def __init__(self, spec):
        super().__init__(spec)
        self.factor = np.float32(spec.attrs["factor"])

    def _forward(self, x, out):
        np.multiply(x, self.factor, out=out)

    def _backward(self, x, out, gout, gx):
        np.multiply(gout, self.factor, out=gx)


@register("cpu", "shift")
class Shift(_Unary):
    backward_reads_inputs = False
    forward_in_place = True

    def __init__(self, spec):
        super().__init__(spec)
        self.offset = np.float32(spec.attrs["offset"])

    def _forward(self, x, out):
        np.add(x, self.offset, out=out)

    def _backward(self, x, out, gout, gx):
        np.copyto(gx, gout)


@pnjit
def _clamp_backward(x, gout, gx, low, high, inclusive, parallel):
    """gx = gout where x lies within the bounds (closed or open), else 0; NaN x passes none."""
    if parallel:
        for i in prange(x.size):
            v = x[i]
            inside = (low <= v <= high) if inclusive else (low < v < high)
            gx[i] = gout[i] if inside else 0
    else:
        for i in range(x.size):
            v = x[i]
            inside = (low <= v <= high) if inclusive else (low < v < high)
            gx[i] = gout[i] if inside else 0
    return


class _Clip(_Unary):
    """clamp and relu6: np.clip forward (NaN stays NaN, as torch), a masked gradient."""
    inclusive = True

    def __init__(self, spec):
        super().__init__(spec)
        self.low, self.high = self._bounds(spec.attrs)
        self.parallel = parallel_elementwise(int(np.prod(spec.out_shape, dtype=np.int64)))

    def _forward(self, x, out):
        np.clip(x, self.low, self.high, out=out)

    def _backward(self, x, out, gout, gx):
        _clamp_backward(x, gout, gx, self.low, self.high, self.inclusive, self.parallel)


@register("cpu", "clamp")
class Clamp(_Clip):
    inclusive = True       # torch.clamp passes the gradient at the bounds too

    @staticmethod
    def _bounds(attrs):
        low, high = attrs.get("min"), attrs.get("max")
        return (np.float32(-np.inf if low is None else low), np.float32(np.inf if high is None else high))


@register("cpu", "relu6")
class Relu6(_Clip):
    inclusive = False      # torch's relu6 (hardtanh) passes none at 0 and 6, like relu at 0

    @staticmethod
    def _bounds(attrs):
        return np.float32(0), np.float32(6)


# --- binary, with broadcasting ---------------------------------------------------------------

def reduced_axes(in_shape, out_shape) -> tuple:
    """The axes along which an input of `in_shape` was broadcast to `out_shape`."""
    return tuple(d for d, (i, o) in enumerate(zip(in_shape, out_shape)) if i != o)


class _Binary(Kernel):
    """a (op) b with numpy broadcasting; `_grad(side, a, b, gout, into)` writes the full-size
    gradient of side 0 (a) or 1 (b), which is then summed over that side's broadcast axes."""
    scratch_workspace = ("full",)

    def __init__(self, spec):
        super().__init__(spec)
        self.axes = [reduced_axes(s, spec.out_shape) for s in spec.in_shapes]

    def workspace(self):
        if any(self.axes):
            return {"full": (tuple(self.spec.out_shape), "float32")}
        return {}

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        a, b = xs
        for side, gx in enumerate(gxs):
            if gx is None:
                continue
            if not self.axes[side]:
                self._grad(side, a, b, gout, gx)
                continue
            full = ws["full"]
            self._grad(side, a, b, gout, full)
            np.sum(full, axis=self.axes[side], keepdims=True, out=gx)


@register("cpu", "mul")
class Mul(_Binary):
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        np.multiply(xs[0], xs[1], out=out)

    def _grad(self, side, a, b, gout, into):
        np.multiply(gout, b if side == 0 else a, out=into)


@register("cpu", "sub")
class Sub(_Binary):
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        np.subtract(xs[0], xs[1], out=out)

    def _grad(self, side, a, b, gout, into):
        if side == 0:
            np.copyto(into, gout)
        else:
            np.negative(gout, out=into)


@register("cpu", "div")
class Div(_Binary):
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        np.divide(xs[0], xs[1], out=out)

    def _grad(self, side, a, b, gout, into):
        if side == 0:
            np.divide(gout, b, out=into)
        else:
            # d(a / b)/db = -a / b^2, in torch's order: -gout * a / (b * b)
            np.multiply(b, b, out=into)
            np.divide(a, into, out=into)
            np.multiply(into, gout, out=into)
            np.negative(into, out=into)


# --- the mean of tensors ---------------------------------------------------------------------

@register("cpu", "mean")
class Mean(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        np.add(xs[0], xs[1], out=out)
        for x in xs[2:]:
            np.add(out, x, out=out)
        np.divide(out, np.float32(len(xs)), out=out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for gx in gxs:
            if gx is not None:
                np.divide(gout, np.float32(len(xs)), out=gx)


# --- reductions over axes --------------------------------------------------------------------

class _Reduce(Kernel):
    """Sum or mean over `axes` (the compiler made them positive and sorted); the output is
    handled in its keepdims shape, a view of the buffer either way."""
    backward_reads_inputs = False
    backward_reads_out = False
    mean = False

    def __init__(self, spec):
        super().__init__(spec)
        self.axes = tuple(spec.attrs["axes"])
        shape = spec.in_shapes[0]
        self.kept = tuple(1 if d in self.axes else s for d, s in enumerate(shape))
        self.count = np.float32(int(np.prod([shape[d] for d in self.axes], dtype=np.int64)))

    def forward(self, ctx, xs, params, out, ws):
        kept = out.reshape(self.kept)
        np.sum(xs[0], axis=self.axes, keepdims=True, out=kept)
        if self.mean:
            np.divide(kept, self.count, out=kept)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx = gxs[0]
        if gx is None:
            return
        if self.mean:
            np.divide(gout.reshape(self.kept), self.count, out=gx)
        else:
            np.copyto(gx, gout.reshape(self.kept))


@register("cpu", "reduce_sum")
class ReduceSum(_Reduce):
    mean = False


@register("cpu", "reduce_mean")
class ReduceMean(_Reduce):
    mean = True
