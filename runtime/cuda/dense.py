"""CUDA kernel of the dense (fully connected) op: out = flatten(x) @ weight.T + bias.

Three GEMMs on views of the device arrays (flattening is a reshape, never a copy):
    out = x @ W.T,   gx = gout @ W,   gW = gout.T @ x
The bias gradient sums gout over the batch with the race-free per-unit block reduction.
"""
from dslc.runtime.cuda.gemm import add_channel_bias, gemm, sum_channels
from dslc.runtime.kernel_api import Kernel, register


@register("cuda", "dense")
class Dense(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        # (N, units), or (N, T, units) for a layer applied to every step of a sequence
        self.units = spec.out_shape[-1]
        self.batch = 1
        for d in spec.out_shape[:-1]:
            self.batch *= d

    def _rows(self, t):
        """t viewed as (rows, features): one row per sample, or per sample and step."""
        return t.reshape(self.batch, -1)

    def _units_as_channels(self, t):
        """(rows, units) viewed as (rows, units, 1), the layout of the bias helpers."""
        return t.reshape(self.batch, self.units, 1)

    def forward(self, ctx, xs, params, out, ws):
        gemm(self._rows(xs[0]), params["weight"], self._rows(out), trans_b=True)
        if self.spec.attrs["bias"]:
            add_channel_bias(self._units_as_channels(out), params["bias"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gout = self._rows(gout)
        if gxs[0] is not None:
            gemm(gout, params["weight"], self._rows(gxs[0]))
        if gparams.get("weight") is not None:
            gemm(gout, self._rows(xs[0]), gparams["weight"], trans_a=True)
        if gparams.get("bias") is not None:
            sum_channels(self._units_as_channels(gout), gparams["bias"])
