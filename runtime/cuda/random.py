"""CUDA kernels of the random family: sample, gaussian_like (docs/OPS.md).

The noise is drawn on the host from the Context's generator (`ctx.rng`, the run's seeded
stream that checkpoints save) and copied to the device: the same numbers as the CPU kernels
draw, so a run resumes bit-exactly and both devices sample alike. The noise of these ops is
a latent code's size (a VAE's [N, 20]), small next to the copies of a batch of inputs.
"""
import math

import numpy as np
from numba import cuda, float32

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register


@cuda.jit
def _sample_forward(mu, logvar, eps, out):
    i = cuda.grid(1)
    if i < mu.size:
        out[i] = mu[i] + math.exp(float32(0.5) * logvar[i]) * eps[i]


@cuda.jit
def _sample_backward(logvar, eps, g, want_gmu, gmu, want_glogvar, glogvar):
    i = cuda.grid(1)
    if i < g.size:
        if want_gmu:
            gmu[i] = g[i]
        if want_glogvar:
            glogvar[i] = g[i] * eps[i] * float32(0.5) * math.exp(float32(0.5) * logvar[i])


def _draw(ctx, shape):
    return ctx.rng.standard_normal(shape, dtype=np.float32)


@register("cuda", "sample")
class Sample(Kernel):
    """z = mu + exp(0.5 * logvar) * eps in training (eps saved for backward); z = mu in eval."""
    backward_reads_inputs = (1,)
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.size = int(math.prod(spec.in_shapes[0]))

    def workspace(self):
        return {"eps": ((self.size,), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        if not ctx.training:
            out.ravel().copy_to_device(xs[0].ravel())
            return
        ws["eps"].copy_to_device(_draw(ctx, (self.size,)))
        _sample_forward[blocks_1d(self.size), THREADS_1D](xs[0].ravel(), xs[1].ravel(), ws["eps"], out.ravel())

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gmu, glogvar = gxs
        if gmu is None and glogvar is None:
            return
        g = gout.ravel()
        if not ctx.training:
            if gmu is not None:
                gmu.ravel().copy_to_device(g)
            if glogvar is not None:
                glogvar.ravel().copy_to_device(np.zeros(self.size, np.float32))
            return
        # g stands in for an unwanted gradient: same type, never written (its flag is False).
        _sample_backward[blocks_1d(self.size), THREADS_1D](
            xs[1].ravel(), ws["eps"], g, gmu is not None, gmu.ravel() if gmu is not None else g,
            glogvar is not None, glogvar.ravel() if glogvar is not None else g)


@register("cuda", "gaussian_like")
class GaussianLike(Kernel):
    """Standard normal noise of the input's shape, in training and eval; no gradient."""
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        out.ravel().copy_to_device(_draw(ctx, (out.size,)))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs and gxs[0] is not None:
            gxs[0].ravel().copy_to_device(np.zeros(gxs[0].size, np.float32))
