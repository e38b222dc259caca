"""CPU kernels of the activation family: relu, leaky_relu, elu, sigmoid, tanh, prelu, softmax, maxout.

Elementwise ops run as Numba loops over the flat array, serial below the size at which a
parallel region pays for itself (runtime/jit.py's threading policy) and split over the
workers above it; the kernel decides once and passes `parallel` to its loops. Each op has its
own jitted functions (rather than one function switching on the op) so that a plan compiles
only the activations it uses.

Transcendental functions (exp, expm1, tanh) go through numpy's ufuncs, not Numba: this Numba
has no SVML, so it calls the scalar libm function per element, an order of magnitude slower
than numpy's SIMD loops (docs/CPU-BACKEND.md, "Measurements behind the kernels' choices").

What the plan may rely on (see runtime/plan.py): relu, sigmoid, tanh and softmax compute their
input gradient from their output alone (relu: out > 0 exactly where x > 0), so their input
can be released after forward; relu, leaky_relu and tanh may write their output over their
input.
"""
import numpy as np

from dslc.runtime.jit import njit, parallel_elementwise, pnjit, prange
from dslc.runtime.kernel_api import Kernel, register

# --- elementwise ops -------------------------------------------------------------------------
# Uniform signatures, forward(x, out, param, parallel) and backward(x, out, gout, gx, param,
# parallel), on flat arrays, so that one Kernel class drives all of them; `param` is the op's
# float attribute (unused by relu / sigmoid / tanh). Each loop body is one scalar function,
# written once and called from the serial and the parallel loop.

@njit
def relu_grad(out, g):
    """The gradient through relu given its output: out > 0 exactly where the input was."""
    return g if out > 0 else 0


@pnjit
def relu_forward(x, out, param, parallel):
    if parallel:
        for i in prange(x.size):
            out[i] = 0 if x[i] < 0 else x[i]
    else:
        for i in range(x.size):
            out[i] = 0 if x[i] < 0 else x[i]
    return


@pnjit
def relu_backward(x, out, gout, gx, param, parallel):
    if parallel:
        for i in prange(out.size):
            gx[i] = relu_grad(out[i], gout[i])
    else:
        for i in range(out.size):
            gx[i] = relu_grad(out[i], gout[i])
    return


@njit
def _leaky(v, slope):
    return v if v > 0 else v * slope


@pnjit
def _leaky_relu_forward(x, out, slope, parallel):
    if parallel:
        for i in prange(x.size):
            out[i] = _leaky(x[i], slope)
    else:
        for i in range(x.size):
            out[i] = _leaky(x[i], slope)
    return


@njit
def _leaky_grad(v, g, slope):
    return g if v > 0 else g * slope


@pnjit
def _leaky_relu_backward(x, out, gout, gx, slope, parallel):
    # From x, not out: a negative slope would make out > 0 where x < 0.
    if parallel:
        for i in prange(x.size):
            gx[i] = _leaky_grad(x[i], gout[i], slope)
    else:
        for i in range(x.size):
            gx[i] = _leaky_grad(x[i], gout[i], slope)
    return


@njit
def _elu_pick(v, expm1_of_min, alpha):
    return v if v > 0 else alpha * expm1_of_min


@pnjit
def _elu_select(x, out, alpha, parallel):
    # On entry out holds expm1(min(x, 0)).
    if parallel:
        for i in prange(x.size):
            out[i] = _elu_pick(x[i], out[i], alpha)
    else:
        for i in range(x.size):
            out[i] = _elu_pick(x[i], out[i], alpha)
    return


def _elu_forward(x, out, alpha, parallel):
    np.minimum(x, 0, out=out)
    np.expm1(out, out=out)
    _elu_select(x, out, alpha, parallel)


@njit
def _elu_grad(v, out, g, alpha):
    # For x <= 0, d/dx alpha*(exp(x)-1) = alpha*exp(x) = out + alpha. The sign comes from x:
    # with a negative alpha, out > 0 where x < 0.
    return g if v > 0 else g * (out + alpha)


@pnjit
def _elu_backward(x, out, gout, gx, alpha, parallel):
    if parallel:
        for i in prange(x.size):
            gx[i] = _elu_grad(x[i], out[i], gout[i], alpha)
    else:
        for i in range(x.size):
            gx[i] = _elu_grad(x[i], out[i], gout[i], alpha)
    return


@pnjit
def _negative_abs(x, out, parallel):
    if parallel:
        for i in prange(x.size):
            out[i] = -abs(x[i])
    else:
        for i in range(x.size):
            out[i] = -abs(x[i])
    return


def exp_negative_abs(x, out, parallel):
    """out = exp(-|x|), which never overflows: the stable way into sigmoid and softplus."""
    _negative_abs(x, out, parallel)
    np.exp(out, out=out)


@njit
def _sigmoid_from_exp(v, e):
    s = 1 / (1 + e)
    return s if v >= 0 else e * s


@pnjit
def sigmoid_from_exp(x, e, out, parallel):
    """out = sigmoid(x) given e = exp(-|x|); out may be e itself."""
    if parallel:
        for i in prange(x.size):
            out[i] = _sigmoid_from_exp(x[i], e[i])
    else:
        for i in range(x.size):
            out[i] = _sigmoid_from_exp(x[i], e[i])
    return


def _sigmoid_forward(x, out, param, parallel):
    exp_negative_abs(x, out, parallel)
    sigmoid_from_exp(x, out, out, parallel)


@pnjit
def _sigmoid_backward(x, out, gout, gx, param, parallel):
    if parallel:
        for i in prange(out.size):
            gx[i] = gout[i] * out[i] * (1 - out[i])
    else:
        for i in range(out.size):
            gx[i] = gout[i] * out[i] * (1 - out[i])
    return


def _tanh_forward(x, out, param, parallel):
    np.tanh(x, out=out)


@pnjit
def _tanh_backward(x, out, gout, gx, param, parallel):
    if parallel:
        for i in prange(out.size):
            gx[i] = gout[i] * (1 - out[i] * out[i])
    else:
        for i in range(out.size):
            gx[i] = gout[i] * (1 - out[i] * out[i])
    return


class _Elementwise(Kernel):
    """An elementwise activation; subclasses name their forward and backward functions and float attribute."""
    forward_loop = None
    backward_loop = None
    attr = None          # name of the op's float attribute, if it has one
    attr_default = 0.0
    backward_reads_inputs = False     # the gradient comes from the output (leaky_relu, elu override)
    forward_in_place = False

    def __init__(self, spec):
        super().__init__(spec)
        self.param = float(spec.attrs.get(self.attr, self.attr_default)) if self.attr else 0.0
        self.parallel = parallel_elementwise(int(np.prod(spec.out_shape, dtype=np.int64)))

    def forward(self, ctx, xs, params, out, ws):
        self.forward_loop(xs[0].reshape(-1), out.reshape(-1), self.param, self.parallel)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            self.backward_loop(xs[0].reshape(-1), out.reshape(-1), gout.reshape(-1),
                               gxs[0].reshape(-1), self.param, self.parallel)


@register("cpu", "relu")
class Relu(_Elementwise):
    forward_loop = staticmethod(relu_forward)
    backward_loop = staticmethod(relu_backward)
    forward_in_place = True


@register("cpu", "leaky_relu")
class LeakyRelu(_Elementwise):
    forward_loop = staticmethod(_leaky_relu_forward)
    backward_loop = staticmethod(_leaky_relu_backward)
    attr, attr_default = "slope", 0.01
    backward_reads_inputs = True
    forward_in_place = True


@register("cpu", "elu")
class Elu(_Elementwise):
    forward_loop = staticmethod(_elu_forward)
    backward_loop = staticmethod(_elu_backward)
    attr, attr_default = "alpha", 1.0
    backward_reads_inputs = True


@register("cpu", "sigmoid")
class Sigmoid(_Elementwise):
    forward_loop = staticmethod(_sigmoid_forward)
    backward_loop = staticmethod(_sigmoid_backward)


@register("cpu", "tanh")
class Tanh(_Elementwise):
    forward_loop = staticmethod(_tanh_forward)
    backward_loop = staticmethod(_tanh_backward)
    forward_in_place = True


# --- prelu -----------------------------------------------------------------------------------

def _channel_view(a):
    """(N, C, ...) -> (N, C, S) view, S = product of the trailing dims (1 for (N, C))."""
    return a.reshape(a.shape[0], a.shape[1], -1)


@pnjit
def _prelu_forward(x, weight, out):
    n_batch, n_chan, size = x.shape
    for c in prange(n_chan):
        w = weight[c]
        for n in range(n_batch):
            for s in range(size):
                v = x[n, c, s]
                out[n, c, s] = v if v > 0 else w * v
    return


@pnjit
def _prelu_backward(x, weight, gout, gx, gweight, want_gx, want_gweight):
    # Parallel over channels: each iteration owns gweight[c] and the channel's slice of gx.
    n_batch, n_chan, size = x.shape
    for c in prange(n_chan):
        w = weight[c]
        acc = 0.0
        for n in range(n_batch):
            for s in range(size):
                v = x[n, c, s]
                g = gout[n, c, s]
                if v > 0:
                    if want_gx:
                        gx[n, c, s] = g
                else:
                    if want_gx:
                        gx[n, c, s] = w * g
                    acc += v * g
        if want_gweight:
            gweight[c] = acc
    return


@register("cpu", "prelu")
class Prelu(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        _prelu_forward(_channel_view(xs[0]), params["weight"], _channel_view(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx, gweight = gxs[0], gparams.get("weight")
        if gx is None and gweight is None:
            return
        # Numba needs arrays of a fixed type in every slot: stand-ins fill the unwanted ones,
        # which the flags keep unwritten.
        x = _channel_view(xs[0])
        _prelu_backward(x, params["weight"], _channel_view(gout),
                        _channel_view(gx) if gx is not None else x,
                        gweight if gweight is not None else params["weight"],
                        gx is not None, gweight is not None)


# --- softmax ---------------------------------------------------------------------------------

def _axis_view(a, axis):
    """View `a` as (outer, A, inner) around `axis`."""
    outer = int(np.prod(a.shape[:axis], dtype=np.int64))
    return a.reshape(outer, a.shape[axis], -1)


def softmax_into(x, out, row_max, row_sum):
    """Numerically stable softmax of x (outer, A, inner) over its axis 1 into out: exp(x - max) / sum.

    row_max and row_sum (outer, 1, inner) receive the maxima and the sums of exp(x - max).
    numpy's SIMD reductions and exp beat Numba's scalar loops here (about 2x, one thread).
    """
    np.max(x, axis=1, keepdims=True, out=row_max)
    np.subtract(x, row_max, out=out)
    np.exp(out, out=out)
    np.sum(out, axis=1, keepdims=True, out=row_sum)
    np.divide(out, row_sum, out=out)


@pnjit
def _softmax_backward(out, gout, gx):
    # gx = y * (g - sum_axis(g * y))
    n_outer, n_axis, n_inner = out.shape
    for o in prange(n_outer):
        for i in range(n_inner):
            dot = 0.0
            for a in range(n_axis):
                dot += gout[o, a, i] * out[o, a, i]
            for a in range(n_axis):
                gx[o, a, i] = out[o, a, i] * (gout[o, a, i] - dot)
    return


@register("cpu", "softmax")
class Softmax(Kernel):
    backward_reads_inputs = False     # gx = y * (g - sum(g * y)) needs only the output y

    def _positions(self):
        shape, axis = self.spec.in_shapes[0], self.spec.attrs["axis"]
        return (int(np.prod(shape[:axis], dtype=np.int64)), 1, int(np.prod(shape[axis + 1:], dtype=np.int64)))

    def workspace(self):
        # softmax_into's per-position maxima and sums
        return {"row_max": (self._positions(), "float32"), "row_sum": (self._positions(), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        axis = self.spec.attrs["axis"]
        softmax_into(_axis_view(xs[0], axis), _axis_view(out, axis), ws["row_max"], ws["row_sum"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            axis = self.spec.attrs["axis"]
            _softmax_backward(_axis_view(out, axis), _axis_view(gout, axis), _axis_view(gxs[0], axis))


# --- maxout ----------------------------------------------------------------------------------

def _pieces_view(a, pieces):
    """(N, C, ...) -> (N, C/k, k, S)."""
    return a.reshape(a.shape[0], a.shape[1] // pieces, pieces, -1)


@pnjit
def _maxout_forward(x, out):
    n_batch, n_groups, pieces, size = x.shape
    for ng in prange(n_batch * n_groups):
        n, j = ng // n_groups, ng % n_groups
        for s in range(size):
            out[n, j, s] = x[n, j, 0, s]
        for p in range(1, pieces):
            for s in range(size):
                # a NaN takes over, as in torch (Python's max keeps the first argument then)
                v = x[n, j, p, s]
                if v > out[n, j, s] or v != v:
                    out[n, j, s] = v
    return


@pnjit
def _maxout_backward(x, gout, gx):
    # The gradient goes to the piece forward took (recomputed from x): the first maximum, or
    # the last NaN.
    n_batch, n_groups, pieces, size = x.shape
    for ng in prange(n_batch * n_groups):
        n, j = ng // n_groups, ng % n_groups
        for s in range(size):
            best = 0
            for p in range(1, pieces):
                v = x[n, j, p, s]
                if v > x[n, j, best, s] or v != v:
                    best = p
            for p in range(pieces):
                gx[n, j, p, s] = gout[n, j, s] if p == best else 0
    return


@register("cpu", "maxout")
class Maxout(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        pieces = self.spec.attrs["pieces"]
        _maxout_forward(_pieces_view(xs[0], pieces), out.reshape(out.shape[0], out.shape[1], -1))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            pieces = self.spec.attrs["pieces"]
            _maxout_backward(_pieces_view(xs[0], pieces), gout.reshape(gout.shape[0], gout.shape[1], -1),
                             _pieces_view(gxs[0], pieces))
