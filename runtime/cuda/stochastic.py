"""CUDA kernels of the stochastic family: drop_path, dropconnect_dense (docs/OPS.md).

The factors (0 or 1/(1-p)) are drawn on the host from the Context's generator (`ctx.rng`, the
run's seeded stream that checkpoints save) exactly as the CPU kernels draw them, and copied to
the device: both devices drop alike and a run resumes bit-exactly. drop_path draws one number
per sample and dropconnect_dense one per weight, small next to a batch of activations.
"""
import numpy as np
from numba import cuda

from dslc.runtime.cpu.stochastic import draw_factors
from dslc.runtime.cuda.dense import Dense
from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register


@cuda.jit
def _scale_rows(x, factor, per_sample, out):
    """out[i] = x[i] * factor[i // per_sample]: each sample's elements by that sample's factor."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] * factor[i // per_sample]


@cuda.jit
def _multiply(a, b, out):
    i = cuda.grid(1)
    if i < a.size:
        out[i] = a[i] * b[i]


@register("cuda", "drop_path")
class DropPath(Kernel):
    """out[n] = x[n] * factor[n], one factor per sample (0 or 1/(1-p)) in training; identity in eval."""
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.batch = spec.in_shapes[0][0]
        self.size = int(np.prod(spec.in_shapes[0], dtype=np.int64))
        self.per_sample = max(1, self.size // max(1, self.batch))

    def workspace(self):
        return {"factor": ((self.batch,), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        if not ctx.training:
            out.ravel().copy_to_device(xs[0].ravel())
            return
        ws["factor"].copy_to_device(draw_factors(ctx, (self.batch,), float(self.spec.attrs["p"])))
        _scale_rows[blocks_1d(self.size), THREADS_1D](xs[0].ravel(), ws["factor"], self.per_sample, out.ravel())

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        if not ctx.training:
            gxs[0].ravel().copy_to_device(gout.ravel())
            return
        _scale_rows[blocks_1d(self.size), THREADS_1D](gout.ravel(), ws["factor"], self.per_sample,
                                                      gxs[0].ravel())


@register("cuda", "dropconnect_dense")
class DropConnectDense(Dense):
    """dense (runtime/cuda/dense.py) with the weight times a mask of factors drawn per training step."""
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.weight_shape = tuple(spec.param_shapes["weight"])

    def workspace(self):
        return {"mask": (self.weight_shape, "float32"), "weight": (self.weight_shape, "float32")}

    def _masked(self, ctx, params, ws):
        """params with the weight the step uses: masked in training, as stored in eval."""
        return {**params, "weight": ws["weight"]} if ctx.training else params

    def forward(self, ctx, xs, params, out, ws):
        if ctx.training:
            ws["mask"].copy_to_device(draw_factors(ctx, self.weight_shape, float(self.spec.attrs["p"])))
            size = ws["mask"].size
            _multiply[blocks_1d(size), THREADS_1D](params["weight"].ravel(), ws["mask"].ravel(),
                                                   ws["weight"].ravel())
        super().forward(ctx, xs, self._masked(ctx, params, ws), out, ws)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        super().backward(ctx, xs, self._masked(ctx, params, ws), out, gout, gxs, gparams, ws)
        gw = gparams.get("weight")
        if gw is not None and ctx.training:
            # d/dW of x @ (W * mask).T is the plain dense gradient times the mask
            _multiply[blocks_1d(gw.size), THREADS_1D](gw.ravel(), ws["mask"].ravel(), gw.ravel())

