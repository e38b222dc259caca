"""CUDA kernels of the norm family: batchnorm, lrn, dropout (docs/OPS.md).

Reductions (batchnorm's statistics) use the shared block reductions of runtime/cuda/reduce.py.
"""
import math

import numpy as np
from numba import cuda, float32
from numba.cuda.random import init_xoroshiro128p_states, xoroshiro128p_dtype, xoroshiro128p_uniform_float32

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.cuda.reduce import block_sum, channel_view, reduction_threads
from dslc.runtime.kernel_api import Kernel, register

# --- batchnorm -------------------------------------------------------------------------------
# One block per channel for both passes. Forward computes the channel's statistics (batch
# statistics in training, running statistics in eval), saves mean and 1/std for backward,
# updates the running statistics (training) and normalises. Backward reduces sum(g) and
# sum(g * xhat) and writes the input gradient.

@cuda.jit
def _batchnorm_forward(x, weight, bias, running_mean, running_var, momentum, eps, batch_stats,
                       mean, invstd, out):
    scratch = cuda.shared.array(THREADS_1D, float32)
    channel = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    batch, _, size = x.shape
    count = batch * size
    if batch_stats:       # the same for the whole block: the reductions inside are not divergent
        partial = float32(0)
        for e in range(tid, count, cuda.blockDim.x):
            partial += x[e // size, channel, e % size]
        mu = block_sum(scratch, partial) / float32(count)
        partial = float32(0)
        for e in range(tid, count, cuda.blockDim.x):
            d = x[e // size, channel, e % size] - mu
            partial += d * d
        var = block_sum(scratch, partial) / float32(count)
        if tid == 0:
            # torch updates the running variance with the unbiased estimate.
            unbiased = var * float32(count) / float32(max(count - 1, 1))
            running_mean[channel] = (1 - momentum) * running_mean[channel] + momentum * mu
            running_var[channel] = (1 - momentum) * running_var[channel] + momentum * unbiased
    else:
        mu = running_mean[channel]
        var = running_var[channel]
    istd = float32(1) / math.sqrt(var + eps)
    if tid == 0:
        mean[channel] = mu
        invstd[channel] = istd
    scale = weight[channel] * istd
    shift = bias[channel] - mu * scale
    for e in range(tid, count, cuda.blockDim.x):
        n = e // size
        s = e % size
        out[n, channel, s] = x[n, channel, s] * scale + shift


@cuda.jit
def _batchnorm_backward(x, weight, mean, invstd, gout, batch_stats, want_gx, gx, gweight, gbias):
    scratch = cuda.shared.array(THREADS_1D, float32)
    channel = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    batch, _, size = x.shape
    count = batch * size
    mu = mean[channel]
    istd = invstd[channel]
    partial_g = float32(0)
    partial_gxhat = float32(0)
    for e in range(tid, count, cuda.blockDim.x):
        n = e // size
        s = e % size
        g = gout[n, channel, s]
        partial_g += g
        partial_gxhat += g * (x[n, channel, s] - mu) * istd
    sum_g = block_sum(scratch, partial_g)
    sum_gxhat = block_sum(scratch, partial_gxhat)
    if tid == 0:
        gweight[channel] = sum_gxhat
        gbias[channel] = sum_g
    if want_gx:
        scale = weight[channel] * istd
        # With batch statistics, mean and variance depend on x too: subtract their share.
        mean_g = sum_g / float32(count) if batch_stats else float32(0)
        mean_gxhat = sum_gxhat / float32(count) if batch_stats else float32(0)
        for e in range(tid, count, cuda.blockDim.x):
            n = e // size
            s = e % size
            xhat = (x[n, channel, s] - mu) * istd
            gx[n, channel, s] = scale * (gout[n, channel, s] - mean_g - xhat * mean_gxhat)


@register("cuda", "batchnorm")
class BatchNorm(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        shape = spec.in_shapes[0]
        self.channels = shape[1]
        self.threads = reduction_threads(shape[0] * int(np.prod(shape[2:], dtype=np.int64)))

    def workspace(self):
        return {"mean": ((self.channels,), "float32"),
                "invstd": ((self.channels,), "float32"),
                # Receives the weight / bias gradients when the plan does not want them.
                "unwanted_grads": ((2, self.channels), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        attrs = self.spec.attrs
        _batchnorm_forward[self.channels, self.threads](
            channel_view(xs[0]), params["weight"], params["bias"], params["running_mean"],
            params["running_var"], np.float32(attrs.get("momentum", 0.1)), np.float32(attrs.get("eps", 1e-5)),
            ctx.training, ws["mean"], ws["invstd"], channel_view(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gx = gxs[0]
        # gout stands in for an unwanted gx: same type, never written (want_gx is False).
        _batchnorm_backward[self.channels, self.threads](
            channel_view(xs[0]), params["weight"], ws["mean"], ws["invstd"], channel_view(gout),
            ctx.training, gx is not None, channel_view(gx if gx is not None else gout),
            gparams.get("weight", ws["unwanted_grads"][0]), gparams.get("bias", ws["unwanted_grads"][1]))


# --- lrn -------------------------------------------------------------------------------------
# torch LocalResponseNorm: scale[c] = k + alpha/size * sum of x[c']^2 over the channel window
# c' in [c - size//2, c + (size-1)//2] (clipped), out = x * scale^-beta. One thread per element.

@cuda.jit
def _lrn_forward(x, size, alpha, beta, k, scale, out):
    i = cuda.grid(1)
    if i < x.size:
        _, channels, spatial = x.shape
        n = i // (channels * spatial)
        c = (i // spatial) % channels
        s = i % spatial
        total = float32(0)
        for cc in range(max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)):
            v = x[n, cc, s]
            total += v * v
        sc = k + alpha / size * total
        scale[n, c, s] = sc
        out[n, c, s] = x[n, c, s] * sc ** -beta


@cuda.jit
def _lrn_backward(x, out, scale, gout, size, alpha, beta, gx):
    # gx[c] = g[c] scale[c]^-beta - 2 alpha beta / size * x[c] * sum of g[c'] out[c'] / scale[c']
    # over the channels c' whose window holds c: c' in [c - (size-1)//2, c + size//2].
    i = cuda.grid(1)
    if i < x.size:
        _, channels, spatial = x.shape
        n = i // (channels * spatial)
        c = (i // spatial) % channels
        s = i % spatial
        total = float32(0)
        for cc in range(max(0, c - (size - 1) // 2), min(channels, c + size // 2 + 1)):
            total += gout[n, cc, s] * out[n, cc, s] / scale[n, cc, s]
        gx[n, c, s] = (gout[n, c, s] * scale[n, c, s] ** -beta
                       - float32(2) * alpha * beta / size * x[n, c, s] * total)


@register("cuda", "lrn")
class LRN(Kernel):
    def _attrs(self):
        a = self.spec.attrs
        return (int(a.get("size", 5)), np.float32(a.get("alpha", 1e-4)), np.float32(a.get("beta", 0.75)),
                np.float32(a.get("k", 1.0)))

    def workspace(self):
        return {"scale": (self.spec.in_shapes[0], "float32")}

    def forward(self, ctx, xs, params, out, ws):
        size, alpha, beta, k = self._attrs()
        x = channel_view(xs[0])
        _lrn_forward[blocks_1d(x.size), THREADS_1D](x, size, alpha, beta, k, channel_view(ws["scale"]),
                                                    channel_view(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        size, alpha, beta, _ = self._attrs()
        x = channel_view(xs[0])
        _lrn_backward[blocks_1d(x.size), THREADS_1D](x, channel_view(out), channel_view(ws["scale"]),
                                                     channel_view(gout), size, alpha, beta,
                                                     channel_view(gxs[0]))


# --- dropout ---------------------------------------------------------------------------------
# Inverted dropout: the mask holds 0 or 1/(1-p) per element, drawn on the device from
# xoroshiro128+ streams that live in the workspace and are seeded once from ctx.rng. A fixed
# number of streams (threads) walks the array with a grid stride, so the state stays small.

MAX_RNG_STREAMS = 64 * THREADS_1D


@cuda.jit
def _dropout_forward(x, p, states, mask, out):
    stream = cuda.grid(1)
    if stream < states.shape[0]:
        keep_scale = float32(1) / (float32(1) - p) if p < 1 else float32(0)
        for i in range(stream, x.size, cuda.gridsize(1)):
            m = keep_scale if xoroshiro128p_uniform_float32(states, stream) >= p else float32(0)
            mask[i] = m
            out[i] = x[i] * m


@cuda.jit
def _scale_by_mask(g, mask, gx):
    i = cuda.grid(1)
    if i < g.size:
        gx[i] = g[i] * mask[i]


@register("cuda", "dropout")
class Dropout(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        self.size = int(np.prod(spec.in_shapes[0], dtype=np.int64))
        self.streams = max(1, min(self.size, MAX_RNG_STREAMS))
        self.seeded = False

    def workspace(self):
        return {"mask": ((self.size,), "float32"),
                "rng_states": ((self.streams,), xoroshiro128p_dtype)}

    def forward(self, ctx, xs, params, out, ws):
        if not ctx.training:
            out.ravel().copy_to_device(xs[0].ravel())
            return
        if not self.seeded:
            # One host-to-device copy of the initial states, on the first training step only.
            init_xoroshiro128p_states(ws["rng_states"], int(ctx.rng.integers(1, 2**63)))
            self.seeded = True
        _dropout_forward[blocks_1d(self.streams), THREADS_1D](
            xs[0].ravel(), np.float32(self.spec.attrs["p"]), ws["rng_states"], ws["mask"], out.ravel())

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        if not ctx.training:
            gxs[0].ravel().copy_to_device(gout.ravel())
            return
        _scale_by_mask[blocks_1d(self.size), THREADS_1D](gout.ravel(), ws["mask"], gxs[0].ravel())
