"""CPU kernels of the norm family: batchnorm, lrn, dropout."""
import math

import numpy as np

from dslc.runtime.jit import njit, parallel_elementwise, pnjit, prange
from dslc.runtime.kernel_api import FusesRelu, Kernel, register


def _channel_view(a):
    """(N, C, ...) -> (N, C, S) view, S = product of the trailing dims (1 for (N, C))."""
    return a.reshape(a.shape[0], a.shape[1], -1)


# --- batchnorm -------------------------------------------------------------------------------
# Every loop runs parallel over channels: each iteration reduces and writes only its own
# channel, so there are no races. Sums are accumulated in float64, "vertically": each sample's
# row of a channel is added element-wise into that channel's row of float64 partial sums,
# which vectorises (a scalar running sum cannot be reordered by the compiler, and ran at one
# add per ~4 cycles); the S partial sums are added up once per channel at the end.

@njit
def _moments(x, c, partial, partial_squares):
    """(mean, biased variance) of channel c over n, s, in one pass; partial, partial_squares:
    (S,) float64 scratch. The values are centred on the channel's first value before they are
    summed, so E[d^2] - E[d]^2 does not cancel catastrophically when the mean is large against
    the spread (the centre is within the data's range; float64 sums keep what is left exact
    to far below float32's precision)."""
    centre = x[0, c, 0]
    partial[:] = 0
    partial_squares[:] = 0
    for n in range(x.shape[0]):
        for s in range(x.shape[2]):
            d = np.float64(x[n, c, s] - centre)
            partial[s] += d
            partial_squares[s] += d * d
    count = x.shape[0] * x.shape[2]
    mean_d = partial.sum() / count
    return centre + mean_d, max(partial_squares.sum() / count - mean_d * mean_d, 0.0)


@njit
def _gradient_sums(g, out, x, c, centre, relu, partial, partial_products):
    """(sum of g, sum of g * (x - centre)) over n, s, in one pass. With `relu` (a fused
    activation), g[n, c, s] counts only where out[n, c, s] > 0: the gradient through the relu,
    never stored."""
    partial[:] = 0
    partial_products[:] = 0
    for n in range(x.shape[0]):
        for s in range(x.shape[2]):
            v = g[n, c, s]
            if relu and not out[n, c, s] > 0:
                v = np.float32(0)
            partial[s] += v
            partial_products[s] += v * (x[n, c, s] - centre)
    return partial.sum(), partial_products.sum()


@pnjit
def _batchnorm_forward(x, weight, bias, running_mean, running_var, out, mean, invstd,
                       use_batch_stats, eps, momentum, relu, partial_sums):
    """out = x normalised per channel, then relu'd if `relu` (a fused activation)."""
    n_batch, n_chan, size = x.shape
    count = n_batch * size
    for c in prange(n_chan):
        if use_batch_stats:
            m, var = _moments(x, c, partial_sums[c, 0], partial_sums[c, 1])
            mean[c] = m
            invstd[c] = 1.0 / math.sqrt(var + eps)
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * m
            running_var[c] = (1 - momentum) * running_var[c] + momentum * var * count / (count - 1)
        else:
            mean[c] = running_mean[c]
            invstd[c] = 1.0 / math.sqrt(running_var[c] + eps)
        # (x - mean) * scale + bias, not x * scale + (bias - mean * scale): with a mean large
        # against the spread the second form cancels in float32.
        centre = mean[c]
        scale = weight[c] * invstd[c]
        shift = bias[c]
        for n in range(n_batch):
            for s in range(size):
                v = (x[n, c, s] - centre) * scale + shift
                if relu and v < 0:
                    v = 0
                out[n, c, s] = v
    return


@pnjit
def _batchnorm_backward(x, out, gout, weight, mean, invstd, gx, gweight, gbias, used_batch_stats, want_gx,
                        relu, partial_sums):
    """With a fused relu (`relu`), out is the activated output and the gradient at the
    normalised value is gout where out > 0, else 0; out is not read otherwise."""
    n_batch, n_chan, size = x.shape
    count = n_batch * size
    for c in prange(n_chan):
        m = mean[c]
        istd = invstd[c]
        sum_g, sum_g_centered = _gradient_sums(gout, out, x, c, m, relu, partial_sums[c, 0], partial_sums[c, 1])
        sum_g_xhat = sum_g_centered * istd
        gweight[c] = sum_g_xhat
        gbias[c] = sum_g
        # float32 factors, so that the element loops below stay in float32 (twice the lanes)
        k = np.float32(weight[c] * istd)
        if want_gx and used_batch_stats:
            # The batch mean and variance depend on x too:
            # gx = w * istd * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - m) * istd.
            mean_g = np.float32(sum_g / count)
            xhat_factor = np.float32(sum_g_xhat / count * istd)
            m32 = np.float32(m)
            for n in range(n_batch):
                for s in range(size):
                    g = gout[n, c, s]
                    if relu and not out[n, c, s] > 0:
                        g = 0
                    gx[n, c, s] = k * (g - mean_g - (x[n, c, s] - m32) * xhat_factor)
        elif want_gx:
            for n in range(n_batch):
                for s in range(size):
                    g = gout[n, c, s]
                    if relu and not out[n, c, s] > 0:
                        g = 0
                    gx[n, c, s] = k * g
    return


# (N, C) inputs (and (N, C, 1, 1)) get their own loops: the per-channel ones above would read
# each channel at a stride of C. These run over rows, vectorised across channels, serially
# (such inputs are small), with float64 per-channel sums.

@njit
def _batchnorm_forward_rows(x, weight, bias, running_mean, running_var, out, mean, invstd,
                            use_batch_stats, eps, momentum):
    n_batch, n_chan = x.shape
    if use_batch_stats:
        total = np.zeros(n_chan)
        for n in range(n_batch):
            for c in range(n_chan):
                total[c] += x[n, c]
        batch_mean = total / n_batch
        squares = np.zeros(n_chan)
        for n in range(n_batch):
            for c in range(n_chan):
                d = x[n, c] - batch_mean[c]
                squares[c] += d * d
        for c in range(n_chan):
            var = squares[c] / n_batch
            mean[c] = batch_mean[c]
            invstd[c] = 1.0 / math.sqrt(var + eps)
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * batch_mean[c]
            running_var[c] = (1 - momentum) * running_var[c] + momentum * squares[c] / (n_batch - 1)
    else:
        for c in range(n_chan):
            mean[c] = running_mean[c]
            invstd[c] = 1.0 / math.sqrt(running_var[c] + eps)
    scale = weight * invstd
    for n in range(n_batch):
        for c in range(n_chan):
            out[n, c] = (x[n, c] - mean[c]) * scale[c] + bias[c]   # as in _batchnorm_forward
    return


@njit
def _batchnorm_backward_rows(x, gout, weight, mean, invstd, gx, gweight, gbias, used_batch_stats, want_gx):
    n_batch, n_chan = x.shape
    sum_g = np.zeros(n_chan)
    sum_g_centered = np.zeros(n_chan)
    for n in range(n_batch):
        for c in range(n_chan):
            g = gout[n, c]
            sum_g[c] += g
            sum_g_centered[c] += g * (x[n, c] - mean[c])
    for c in range(n_chan):
        gweight[c] = sum_g_centered[c] * invstd[c]
        gbias[c] = sum_g[c]
    if want_gx:
        k = weight * invstd
        if used_batch_stats:
            # as in _batchnorm_backward
            mean_g = sum_g / n_batch
            mean_g_xhat = sum_g_centered * invstd / n_batch
            for n in range(n_batch):
                for c in range(n_chan):
                    xhat = (x[n, c] - mean[c]) * invstd[c]
                    gx[n, c] = k[c] * (gout[n, c] - mean_g[c] - xhat * mean_g_xhat[c])
        else:
            for n in range(n_batch):
                for c in range(n_chan):
                    gx[n, c] = k[c] * gout[n, c]
    return


@register("cpu", "batchnorm")
class BatchNorm(FusesRelu, Kernel):
    """Train mode normalises with batch statistics and updates the running ones in place.

    A following relu can be fused (`fuse_activation`, (N, C, S) inputs with S > 1): forward
    writes the activated output, and backward masks the gradient by it on the fly, so the
    relu costs neither a pass of its own nor a buffer for the pre-activation."""
    backward_reads_out = False        # backward recomputes xhat from x with the saved mean and 1/std
    scratch_workspace = ("grad_weight", "grad_bias", "partial_sums")     # mean and invstd are kept

    def workspace(self):
        channels = (self.spec.in_shapes[0][1],)
        return {
            "mean": (channels, "float32"),       # the mean and 1/std the forward normalised with
            "invstd": (channels, "float32"),
            # Where the weight/bias gradients go when those params are frozen: the backward
            # computes them anyway, as the input gradient needs both sums.
            "grad_weight": (channels, "float32"),
            "grad_bias": (channels, "float32"),
            # per-channel float64 partial sums of the (N, C, S) loops: two rows of S per channel
            "partial_sums": (self._partial_sums_shape, "float64"),
        }

    def __init__(self, spec):
        super().__init__(spec)
        n_batch, n_chan, *spatial = spec.in_shapes[0]
        per_sample = int(np.prod(spatial, dtype=np.int64))
        # Arrays are viewed as (N, C, S), or as (N, C) when S is 1, for the row loops.
        self._layout = (n_batch, n_chan) if per_sample == 1 else (n_batch, n_chan, per_sample)
        self._values_per_channel = n_batch * per_sample
        self._partial_sums_shape = (0, 0, 0) if per_sample == 1 else (n_chan, 2, per_sample)

    def can_fuse_relu(self) -> bool:
        """Not for (N, C) inputs, whose row loops have no mask."""
        return len(self._layout) == 3

    def forward(self, ctx, xs, params, out, ws):
        if ctx.training and self._values_per_channel == 1:
            raise ValueError(f"{self.spec.name}: batchnorm needs more than 1 value per channel "
                             f"when training, got input shape {xs[0].shape}")
        attrs = self.spec.attrs
        args = (xs[0].reshape(self._layout), params["weight"], params["bias"], params["running_mean"],
                params["running_var"], out.reshape(self._layout), ws["mean"], ws["invstd"],
                ctx.training, float(attrs.get("eps", 1e-5)), float(attrs.get("momentum", 0.1)))
        if len(self._layout) == 2:
            _batchnorm_forward_rows(*args)
        else:
            _batchnorm_forward(*args, self.relu, ws["partial_sums"])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx = gxs[0]
        if gx is None and not gparams:
            return
        # Numba needs an array in the gx slot even when no input gradient is wanted; the
        # want_gx flag keeps the stand-in (gout itself) unwritten.
        x, gout = xs[0].reshape(self._layout), gout.reshape(self._layout)
        args = (params["weight"], ws["mean"], ws["invstd"], (gx if gx is not None else gout).reshape(self._layout),
                gparams.get("weight", ws["grad_weight"]), gparams.get("bias", ws["grad_bias"]),
                ctx.training, gx is not None)
        if len(self._layout) == 2:
            _batchnorm_backward_rows(x, gout, *args)
        else:
            _batchnorm_backward(x, out.reshape(self._layout), gout, *args, self.relu, ws["partial_sums"])


# --- lrn -------------------------------------------------------------------------------------
# out[c] = x[c] * scale[c]^-beta, scale[c] = k + alpha/size * sum of x[c']^2 over the channel
# window c' in [c - size//2, c + (size-1)//2] (torch's zero padding, divided by size always).
# The power goes through numpy's ufunc: Numba (no SVML) would call the scalar libm pow per element.

@pnjit
def _lrn_scale(x, scale, size, alpha, k):
    n_batch, n_chan, n_pixels = x.shape
    before, after = size // 2, (size - 1) // 2
    for nc in prange(n_batch * n_chan):
        n, c = nc // n_chan, nc % n_chan
        for s in range(n_pixels):
            scale[n, c, s] = 0
        for cc in range(max(0, c - before), min(n_chan, c + after + 1)):
            for s in range(n_pixels):
                v = x[n, cc, s]
                scale[n, c, s] += v * v
        for s in range(n_pixels):
            scale[n, c, s] = k + alpha / size * scale[n, c, s]
    return


@pnjit
def _lrn_backward(x, gout, scale, scale_pow, gx, ratio, size, alpha, beta):
    # gx[c'] = g[c'] scale[c']^-beta
    #          - 2 alpha beta / size * x[c'] * sum over the c whose window holds c' of g[c] x[c] scale[c]^(-beta-1)
    n_batch, n_chan, n_pixels = x.shape
    before, after = size // 2, (size - 1) // 2
    for nc in prange(n_batch * n_chan):
        n, c = nc // n_chan, nc % n_chan
        for s in range(n_pixels):
            ratio[n, c, s] = gout[n, c, s] * x[n, c, s] * scale_pow[n, c, s] / scale[n, c, s]
    coef = 2 * alpha * beta / size
    for nc in prange(n_batch * n_chan):
        n, c = nc // n_chan, nc % n_chan
        for s in range(n_pixels):
            gx[n, c, s] = gout[n, c, s] * scale_pow[n, c, s]
        # c lies in the window of every cc in [c - after, c + before].
        for cc in range(max(0, c - after), min(n_chan, c + before + 1)):
            for s in range(n_pixels):
                gx[n, c, s] -= coef * x[n, c, s] * ratio[n, cc, s]
    return


@register("cpu", "lrn")
class LocalResponseNorm(Kernel):
    def _attrs(self):
        a = self.spec.attrs
        return int(a.get("size", 5)), float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("k", 1.0))

    def workspace(self):
        shape = self.spec.in_shapes[0]
        return {"scale": (shape, "float32"),      # saved by forward for backward
                "scale_pow": (shape, "float32"),  # scale^-beta, likewise
                "ratio": (shape, "float32")}      # backward's per-channel terms, read by neighbours

    def forward(self, ctx, xs, params, out, ws):
        size, alpha, beta, k = self._attrs()
        _lrn_scale(_channel_view(xs[0]), _channel_view(ws["scale"]), size, alpha, k)
        np.power(ws["scale"], -beta, out=ws["scale_pow"])
        np.multiply(xs[0], ws["scale_pow"], out=out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        size, alpha, beta, _ = self._attrs()
        _lrn_backward(_channel_view(xs[0]), _channel_view(gout), _channel_view(ws["scale"]),
                      _channel_view(ws["scale_pow"]), _channel_view(gxs[0]), _channel_view(ws["ratio"]),
                      size, alpha, beta)


# --- dropout ---------------------------------------------------------------------------------

@njit
def _keep_or_drop(x, mask, out, p, keep_scale, i):
    mask[i] = keep_scale if mask[i] >= p else 0
    out[i] = x[i] * mask[i]


@pnjit
def _dropout_forward(x, mask, out, p, keep_scale, parallel):
    # On entry mask holds uniform draws in [0, 1); it leaves holding each element's factor.
    # Parallel only above runtime/jit.py's size: on a busy machine a parallel region over a
    # dense layer's few thousand activations waited ~1 ms for the other worker.
    if parallel:
        for i in prange(x.size):
            _keep_or_drop(x, mask, out, p, keep_scale, i)
    else:
        for i in range(x.size):
            _keep_or_drop(x, mask, out, p, keep_scale, i)
    return


@pnjit
def _scale_by_mask(g, mask, gx, parallel):
    if parallel:
        for i in prange(g.size):
            gx[i] = g[i] * mask[i]
    else:
        for i in range(g.size):
            gx[i] = g[i] * mask[i]
    return


@register("cpu", "dropout")
class Dropout(Kernel):
    """Inverted dropout: kept entries are scaled by 1/(1-p) in training; identity in eval."""
    backward_reads_inputs = False     # backward needs only the mask
    backward_reads_out = False

    def workspace(self):
        # Each element's factor (0 or 1/(1-p)), drawn in forward and reused by backward.
        return {"mask": (self.spec.in_shapes[0], "float32")}

    def forward(self, ctx, xs, params, out, ws):
        x, flat_out = xs[0].reshape(-1), out.reshape(-1)
        if not ctx.training:
            flat_out[...] = x
            return
        p = float(self.spec.attrs["p"])
        mask = ws["mask"].reshape(-1)
        ctx.rng.random(dtype=mask.dtype, out=mask)
        _dropout_forward(x, mask, flat_out, p, 1.0 / (1.0 - p) if p < 1 else 0.0, parallel_elementwise(x.size))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        g, gx = gout.reshape(-1), gxs[0].reshape(-1)
        if ctx.training:
            _scale_by_mask(g, ws["mask"].reshape(-1), gx, parallel_elementwise(g.size))
        else:
            gx[...] = g
