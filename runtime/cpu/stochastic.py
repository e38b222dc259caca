"""CPU kernels of the stochastic family: drop_path, dropconnect_dense (docs/OPS.md).

The draws come from the Context's generator (`ctx.rng`, the run's one seeded stream that
checkpoints save), uniform in float32 and kept where u >= p, as dropout does: a resumed run
drops what the uninterrupted run would have, and the CUDA kernels draw the same numbers on the
host. The arithmetic is numpy's (broadcast products and BLAS matrix products): nothing here
needs a loop of its own, so nothing is compiled.
"""
import numpy as np

from dslc.runtime.kernel_api import Kernel, register


def draw_factors(ctx, shape, p):
    """Factors 1/(1-p) (kept) or 0 (dropped), float32, drawn from ctx.rng as uniform u >= p.
    p = 1 drops everything (torchvision's StochasticDepth does not divide by a zero survival)."""
    u = ctx.rng.random(shape, dtype=np.float32)
    keep = np.float32(1.0 / (1.0 - p)) if p < 1 else np.float32(0)
    return np.where(u >= np.float32(p), keep, np.float32(0)).astype(np.float32)


@register("cpu", "drop_path")
class DropPath(Kernel):
    """out[n] = x[n] * factor[n], one factor per sample (0 or 1/(1-p)) in training; identity in eval."""
    backward_reads_inputs = False     # backward needs only the factors
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.batch = spec.in_shapes[0][0]
        self.per_sample = (self.batch,) + (1,) * (len(spec.in_shapes[0]) - 1)

    def workspace(self):
        return {"factor": ((self.batch,), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        if not ctx.training:
            out[...] = xs[0]
            return
        ws["factor"][...] = draw_factors(ctx, (self.batch,), float(self.spec.attrs["p"]))
        np.multiply(xs[0], ws["factor"].reshape(self.per_sample), out=out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        if ctx.training:
            np.multiply(gout, ws["factor"].reshape(self.per_sample), out=gxs[0])
        else:
            gxs[0][...] = gout


@register("cpu", "dropconnect_dense")
class DropConnectDense(Kernel):
    """out = x @ (weight * mask).T + bias with one mask of factors (0 or 1/(1-p)) per training
    step; out = x @ weight.T + bias in eval. x is viewed as (rows, features) as dense does."""
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.units, self.features = spec.param_shapes["weight"]

    def workspace(self):
        # the mask and the masked weight, drawn and built in forward, reused by backward
        return {"mask": ((self.units, self.features), "float32"),
                "weight": ((self.units, self.features), "float32")}

    def _weight(self, ctx, params, ws):
        return ws["weight"] if ctx.training else params["weight"]

    def forward(self, ctx, xs, params, out, ws):
        if ctx.training:
            ws["mask"][...] = draw_factors(ctx, (self.units, self.features), float(self.spec.attrs["p"]))
            np.multiply(params["weight"], ws["mask"], out=ws["weight"])
        rows = out.reshape(-1, self.units)
        np.matmul(xs[0].reshape(rows.shape[0], self.features), self._weight(ctx, params, ws).T, out=rows)
        if self.spec.attrs["bias"]:
            rows += params["bias"]

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        g = gout.reshape(-1, self.units)
        x = xs[0].reshape(g.shape[0], self.features)
        if gxs[0] is not None:
            np.matmul(g, self._weight(ctx, params, ws), out=gxs[0].reshape(g.shape[0], self.features))
        if gparams.get("weight") is not None:
            np.matmul(g.T, x, out=gparams["weight"])
            if ctx.training:
                gparams["weight"] *= ws["mask"]
        if gparams.get("bias") is not None:
            np.sum(g, axis=0, out=gparams["bias"])
