"""CPU kernels of the random family: sample, gaussian_like.

The noise comes from the Context's generator (`ctx.rng`, the run's one seeded stream, which
dropout draws from too and checkpoints save), drawn in the workspace's dtype, so a resumed run
draws exactly what the uninterrupted run would have.
"""
import math

from dslc.runtime.jit import parallel_elementwise, pnjit, prange
from dslc.runtime.kernel_api import Kernel, register


@pnjit
def _sample_forward(mu, logvar, eps, out, parallel):
    if parallel:
        for i in prange(mu.size):
            out[i] = mu[i] + math.exp(0.5 * logvar[i]) * eps[i]
    else:
        for i in range(mu.size):
            out[i] = mu[i] + math.exp(0.5 * logvar[i]) * eps[i]
    return


@pnjit
def _sample_backward_logvar(logvar, eps, g, glogvar, parallel):
    # dz/dlogvar = 0.5 * exp(0.5 * logvar) * eps
    if parallel:
        for i in prange(g.size):
            glogvar[i] = g[i] * eps[i] * 0.5 * math.exp(0.5 * logvar[i])
    else:
        for i in range(g.size):
            glogvar[i] = g[i] * eps[i] * 0.5 * math.exp(0.5 * logvar[i])
    return


@register("cpu", "sample")
class Sample(Kernel):
    """z = mu + exp(0.5 * logvar) * eps in training (eps saved for backward); z = mu in eval."""
    backward_reads_inputs = (1,)     # logvar; mu's gradient is gout itself
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(int(math.prod(spec.in_shapes[0])))

    def workspace(self):
        return {"eps": (self.spec.in_shapes[0], "float32")}

    def forward(self, ctx, xs, params, out, ws):
        mu, flat_out = xs[0].reshape(-1), out.reshape(-1)
        if not ctx.training:
            flat_out[...] = mu
            return
        eps = ws["eps"].reshape(-1)
        ctx.rng.standard_normal(dtype=eps.dtype, out=eps)
        _sample_forward(mu, xs[1].reshape(-1), eps, flat_out, self.parallel)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        g = gout.reshape(-1)
        if gxs[0] is not None:
            gxs[0].reshape(-1)[...] = g
        if gxs[1] is not None:
            glogvar = gxs[1].reshape(-1)
            if ctx.training:
                _sample_backward_logvar(xs[1].reshape(-1), ws["eps"].reshape(-1), g, glogvar, self.parallel)
            else:
                glogvar[...] = 0


@register("cpu", "gaussian_like")
class GaussianLike(Kernel):
    """Standard normal noise of the input's shape, in training and eval; no gradient."""
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        ctx.rng.standard_normal(dtype=out.dtype, out=out.reshape(-1))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs and gxs[0] is not None:
            gxs[0][...] = 0
