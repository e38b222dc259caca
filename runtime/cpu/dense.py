"""CPU kernel of the dense (fully connected) op: out = flatten(x) @ weight.T + bias.

Rows are what the output makes them: (N, units) flattens everything after N, and a
sequence output (N, T, units) applies the layer to every step, so x is seen as
(out.size / units, features) in both cases.

The GEMMs run inside Numba (np.dot, SciPy's single-threaded BLAS; see runtime/jit.py's
threading policy), with the bias and a fused activation applied to each block of rows right
after its GEMM wrote it. Large layers use every worker: forward splits the rows, one GEMM per
worker; backward runs its two GEMMs (input gradient and weight gradient, equal in flops) on
two workers at once. Small layers, the common case in a classifier's head, stay serial.
Transposed operands are views that BLAS takes as a transpose flag, not a copy.

Fused activation: the plan may hand a following relu to this kernel (`fuse_activation`).
Forward then writes relu(x @ weight.T + bias) and the pre-activation is never stored;
backward receives the activated output and its gradient, and masks the gradient where the
output is zero (exactly where the pre-activation was <= 0).
"""
import numba
import numpy as np

from dslc.runtime.jit import njit, parallel_gemm, pnjit, prange
from dslc.runtime.kernel_api import FusesRelu, Kernel, register


@njit
def _forward_rows(x, weight, bias, out, relu, lo, hi):
    """Rows [lo, hi) of out = act(x @ weight.T + bias)."""
    np.dot(x[lo:hi], weight.T, out[lo:hi])
    if bias is not None or relu:
        for r in range(lo, hi):
            for u in range(out.shape[1]):
                v = out[r, u]
                if bias is not None:
                    v += bias[u]
                if relu and v < 0:
                    v = 0
                out[r, u] = v


@pnjit
def _dense_forward(x, weight, bias, out, relu, parts):
    """`parts` blocks of rows, on parallel workers when more than one (the thread count is
    passed in: asking Numba for it inside a jitted function stops it from being cached)."""
    rows = x.shape[0]
    if parts > 1:
        for p in prange(parts):
            _forward_rows(x, weight, bias, out, relu, p * rows // parts, (p + 1) * rows // parts)
    else:
        _forward_rows(x, weight, bias, out, relu, 0, rows)
    return


@njit
def _pre_activation_grad(out, gout, masked, relu, gbias):
    """The gradient at the pre-activation (gout masked where a fused relu output is 0, else
    gout itself) and, when wanted, the bias gradient (its column sums)."""
    g = gout
    if relu:
        for r in range(out.shape[0]):
            for u in range(out.shape[1]):
                masked[r, u] = gout[r, u] if out[r, u] > 0 else 0
        g = masked
    if gbias is not None:
        gbias[:] = 0
        for r in range(g.shape[0]):
            for u in range(g.shape[1]):
                gbias[u] += g[r, u]
    return g


@njit
def _dense_backward(x, weight, out, gout, masked, gx, gweight, gbias, relu):
    g = _pre_activation_grad(out, gout, masked, relu, gbias)
    if gx is not None:
        np.dot(g, weight, gx)
    if gweight is not None:
        np.dot(g.T, x, gweight)


@pnjit
def _dense_backward_both(x, weight, out, gout, masked, gx, gweight, gbias, relu):
    """Both gradients wanted: the two GEMMs (equal flops) run on two workers."""
    g = _pre_activation_grad(out, gout, masked, relu, gbias)
    for task in prange(2):
        if task == 0:
            np.dot(g, weight, gx)
        else:
            np.dot(g.T, x, gweight)
    return


@register("cpu", "dense")
class Dense(FusesRelu, Kernel):
    backward_reads_out = False        # becomes True with a fused relu (the mask comes from out)
    scratch_workspace = ("masked_grad",)

    def __init__(self, spec):
        super().__init__(spec)
        self.units = spec.out_shape[-1]
        self.rows = int(np.prod(spec.out_shape, dtype=np.int64)) // self.units
        self.features = int(np.prod(spec.in_shapes[0], dtype=np.int64)) // self.rows
        flops = 2 * self.rows * self.features * self.units        # one of the three GEMMs
        threads = numba.get_num_threads()
        self.forward_parts = threads if parallel_gemm(flops) and self.rows >= 2 * threads else 1
        self.parallel_backward = parallel_gemm(2 * flops)

    def workspace(self):
        # the gradient at the pre-activation, masked by the fused relu
        return {"masked_grad": ((self.rows, self.units) if self.relu else (0, 0), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        bias = params["bias"] if self.spec.attrs.get("bias", True) else None
        _dense_forward(xs[0].reshape(self.rows, self.features), params["weight"], bias,
                       out.reshape(self.rows, self.units), self.relu, self.forward_parts)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx, gweight, gbias = gxs[0], gparams.get("weight"), gparams.get("bias")
        if gx is None and gweight is None and gbias is None:
            return
        operands = (xs[0].reshape(self.rows, self.features), params["weight"], out.reshape(self.rows, self.units),
                    gout.reshape(self.rows, self.units), ws["masked_grad"])
        if gx is not None:
            gx = gx.reshape(self.rows, self.features)
        if self.parallel_backward and gx is not None and gweight is not None:
            _dense_backward_both(*operands, gx, gweight, gbias, self.relu)
        else:
            _dense_backward(*operands, gx, gweight, gbias, self.relu)
