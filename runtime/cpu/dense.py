"""CPU kernel of the dense (fully connected) op: out = flatten(x) @ weight.T + bias.

Rows are what the output makes them: (N, units) flattens everything after N, and a
sequence output (N, T, units) applies the layer to every step, so x is seen as
(out.size / units, features) in both cases.

All three products go to numpy's BLAS with `out=`, so nothing is allocated per step; the
transposed operands are strided views, which BLAS takes as a transpose flag, not a copy.
"""
import numpy as np

from runtime.kernel_api import Kernel, register


@register("cpu", "dense")
class Dense(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        units = out.shape[-1]
        x = xs[0].reshape(out.size // units, -1)
        out = out.reshape(-1, units)
        np.matmul(x, params["weight"].T, out=out)
        if self.spec.attrs.get("bias", True):
            out += params["bias"]

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        units = out.shape[-1]
        x = xs[0].reshape(out.size // units, -1)
        gout = gout.reshape(-1, units)
        if gxs[0] is not None:
            np.matmul(gout, params["weight"], out=gxs[0].reshape(x.shape))
        if "weight" in gparams:
            np.matmul(gout.T, x, out=gparams["weight"])
        if "bias" in gparams:
            np.sum(gout, axis=0, out=gparams["bias"])
