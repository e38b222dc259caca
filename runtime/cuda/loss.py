"""CUDA kernels of the loss family: cross_entropy, hinge, mse, bce, smooth_l1, kl_gaussian, loss_sum
(docs/OPS.md).

A loss writes one number into a 0-d device array (viewed as shape (1,) here) and reads its
output gradient from one. The means are two-level tree reductions, race-free and
deterministic: blocks reduce their share into per-block (or per-row) partial sums held in the
workspace, then one block reduces the partials into the scalar.

cross_entropy, mse, bce and smooth_l1 take an optional third input, a weight per term (or per
sample) multiplying each term and its gradient, the mean still over the number of terms. The
kernels read term i's weight at w[i // w_div] and, unweighted, take a stand-in and a flag.
"""
import math

import numpy as np
from numba import cuda, float32

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.cuda.reduce import block_max, block_sum, reduction_threads
from dslc.runtime.kernel_api import Kernel, register


@cuda.jit
def _sum_to_scalar(values, scale, out):
    """out[0] = scale * sum(values), by one block."""
    scratch = cuda.shared.array(THREADS_1D, float32)
    partial = float32(0)
    for i in range(cuda.threadIdx.x, values.size, cuda.blockDim.x):
        partial += values[i]
    total = block_sum(scratch, partial)
    if cuda.threadIdx.x == 0:
        out[0] = total * scale


class _ScalarLoss(Kernel):
    """Shared plumbing: the scalar output and gradient as shape (1,) views."""

    @staticmethod
    def scalar(a):
        return a.reshape(1)

    @staticmethod
    def weight_args(xs, terms):
        """(flat weight or stand-in, w_div, weighted), from the optional third input."""
        if len(xs) < 3:
            return xs[0].ravel(), 1, False
        return xs[2].ravel(), max(1, terms // xs[2].size), True


# --- cross_entropy ---------------------------------------------------------------------------
# Logits seen as (outer, C, inner) around class_axis, labels flat over the (outer, inner)
# positions; the loss is the mean over all positions. One block per position computes
# log-sum-exp and the position's loss, then one block sums them. Backward is elementwise:
# (softmax - onehot) * gout / positions, with the log-sum-exp saved by forward. Labels are
# trusted to lie in [0, C) (the CPU kernel checks them; a kernel cannot raise): one outside
# is skipped rather than read out of bounds.

@cuda.jit
def _cross_entropy_rows(logits, labels, w, w_div, weighted, row_loss, row_logsumexp):
    scratch = cuda.shared.array(THREADS_1D, float32)
    _, classes, inner = logits.shape
    position = cuda.blockIdx.x
    o = position // inner
    i = position % inner
    tid = cuda.threadIdx.x
    partial = float32(-math.inf)
    for c in range(tid, classes, cuda.blockDim.x):
        partial = max(partial, logits[o, c, i])
    top = block_max(scratch, partial)
    partial = float32(0)
    for c in range(tid, classes, cuda.blockDim.x):
        partial += math.exp(logits[o, c, i] - top)
    logsumexp = top + math.log(block_sum(scratch, partial))
    if tid == 0:
        label = labels[position]
        row_logsumexp[position] = logsumexp
        loss = logsumexp - logits[o, label, i] if 0 <= label < classes else float32(0)
        row_loss[position] = loss * w[position // w_div] if weighted else loss


@cuda.jit
def _cross_entropy_backward(logits, labels, row_logsumexp, gout, scale, w, w_div, weighted, gx):
    i = cuda.grid(1)
    if i < logits.size:
        _, classes, inner = logits.shape
        o = i // (classes * inner)
        c = (i // inner) % classes
        k = i % inner
        position = o * inner + k
        d = math.exp(logits[o, c, k] - row_logsumexp[position])
        if c == labels[position]:
            d -= float32(1)
        g = gout[0] * scale
        gx[o, c, k] = d * g * w[position // w_div] if weighted else d * g


@register("cuda", "cross_entropy")
class CrossEntropy(_ScalarLoss):
    def __init__(self, spec):
        super().__init__(spec)
        shape = spec.in_shapes[0]
        axis = spec.attrs["class_axis"]
        self.view = (int(np.prod(shape[:axis], dtype=np.int64)), shape[axis], -1)
        self.positions = int(np.prod(shape, dtype=np.int64)) // shape[axis]
        self.row_threads = reduction_threads(shape[axis])

    def workspace(self):
        return {"row_loss": ((self.positions,), "float32"),
                "row_logsumexp": ((self.positions,), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        _cross_entropy_rows[self.positions, self.row_threads](
            xs[0].reshape(*self.view), xs[1].ravel(), *self.weight_args(xs, self.positions), ws["row_loss"],
            ws["row_logsumexp"])
        _sum_to_scalar[1, reduction_threads(self.positions)](
            ws["row_loss"], np.float32(1.0 / self.positions), self.scalar(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            logits = xs[0].reshape(*self.view)
            _cross_entropy_backward[blocks_1d(logits.size), THREADS_1D](
                logits, xs[1].ravel(), ws["row_logsumexp"], self.scalar(gout),
                np.float32(1.0 / self.positions), *self.weight_args(xs, self.positions), gxs[0].reshape(*self.view))


# --- hinge -----------------------------------------------------------------------------------
# torch multi_margin_loss (p=1, mean): loss_n = sum over c != y of max(0, margin - x_y + x_c) / C,
# averaged over N. One block per sample for both passes.

@cuda.jit
def _hinge_rows(x, labels, margin, row_loss):
    scratch = cuda.shared.array(THREADS_1D, float32)
    n = cuda.blockIdx.x
    label = labels[n]
    target = x[n, label]
    partial = float32(0)
    for c in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        if c != label:
            partial += max(float32(0), margin - target + x[n, c])
    total = block_sum(scratch, partial)
    if cuda.threadIdx.x == 0:
        row_loss[n] = total


@cuda.jit
def _hinge_backward(x, labels, margin, gout, scale, gx):
    scratch = cuda.shared.array(THREADS_1D, float32)
    n = cuda.blockIdx.x
    label = labels[n]
    target = x[n, label]
    g = gout[0] * scale
    active = float32(0)
    for c in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        if c != label:
            if margin - target + x[n, c] > 0:
                gx[n, c] = g
                active += float32(1)
            else:
                gx[n, c] = 0
    total_active = block_sum(scratch, active)
    # The label's logit appears, negated, in every active term.
    if cuda.threadIdx.x == 0:
        gx[n, label] = -g * total_active


@register("cuda", "hinge")
class Hinge(_ScalarLoss):
    def __init__(self, spec):
        super().__init__(spec)
        self.batch, self.classes = spec.in_shapes[0]
        self.threads = reduction_threads(self.classes)

    def workspace(self):
        return {"row_loss": ((self.batch,), "float32")}

    def _margin(self):
        return np.float32(self.spec.attrs.get("margin", 1.0))

    def forward(self, ctx, xs, params, out, ws):
        _hinge_rows[self.batch, self.threads](xs[0], xs[1], self._margin(), ws["row_loss"])
        _sum_to_scalar[1, reduction_threads(self.batch)](
            ws["row_loss"], np.float32(1.0 / (self.batch * self.classes)), self.scalar(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _hinge_backward[self.batch, self.threads](
                xs[0], xs[1], self._margin(), self.scalar(gout),
                np.float32(1.0 / (self.batch * self.classes)), gxs[0])


# --- mse, bce, smooth_l1, kl_gaussian -------------------------------------------------------
# Means of an elementwise term: per-block partial sums, then one block sums the partials.
# mse: (p - t)^2, d/dp = 2 (p - t), d/dt = -2 (p - t).
# bce with logits x: max(x, 0) - x t + log(1 + exp(-|x|)), d/dx = sigmoid(x) - t, d/dt = -x.
# smooth_l1, d = p - t: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta; d/dp = d / beta or sign(d).
# kl_gaussian of mu (pred) and logvar (target): -0.5 (1 + lv - mu^2 - exp(lv)), summed and divided
# by the batch; d/dmu = mu, d/dlv = 0.5 (exp(lv) - 1).

MSE, BCE, SMOOTH_L1, KL = range(4)


@cuda.jit
def _pointwise_loss_partials(code, pred, target, beta, w, w_div, weighted, partials):
    scratch = cuda.shared.array(THREADS_1D, float32)
    partial = float32(0)
    for i in range(cuda.grid(1), pred.size, cuda.gridsize(1)):
        x = pred[i]
        t = target[i]
        if code == MSE:
            term = (x - t) * (x - t)
        elif code == BCE:
            term = max(x, float32(0)) - x * t + math.log1p(math.exp(-abs(x)))
        elif code == SMOOTH_L1:
            d = abs(x - t)
            term = float32(0.5) * d * d / beta if d < beta else d - float32(0.5) * beta
        else:
            term = float32(-0.5) * (float32(1) + t - x * x - math.exp(t))
        partial += term * w[i // w_div] if weighted else term
    total = block_sum(scratch, partial)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = total


@cuda.jit
def _pointwise_loss_backward(code, pred, target, beta, w, w_div, weighted, gout, inv_count, want_gpred, gpred,
                             want_gtarget, gtarget):
    i = cuda.grid(1)
    if i < pred.size:
        x = pred[i]
        t = target[i]
        g = gout[0] * inv_count
        if weighted:
            g *= w[i // w_div]
        if code == BCE:
            if want_gpred:
                e = math.exp(-abs(x))
                sig = float32(1) / (float32(1) + e) if x >= 0 else e / (float32(1) + e)
                gpred[i] = (sig - t) * g
            if want_gtarget:
                gtarget[i] = -x * g
        elif code == KL:
            if want_gpred:
                gpred[i] = x * g
            if want_gtarget:
                gtarget[i] = float32(0.5) * (math.exp(t) - float32(1)) * g
        else:
            d = x - t
            if code == MSE:
                d = float32(2) * d * g
            elif abs(d) < beta:
                d = d / beta * g
            else:
                d = g if d > 0 else (-g if d < 0 else float32(0))
            if want_gpred:
                gpred[i] = d
            if want_gtarget:
                gtarget[i] = -d


class _PointwiseLoss(_ScalarLoss):
    code = MSE

    def __init__(self, spec):
        super().__init__(spec)
        self.size = int(np.prod(spec.in_shapes[0], dtype=np.int64))
        # The mean's divisor: every element, or the batch for kl_gaussian (summed over features).
        self.count = spec.in_shapes[0][0] if self.code == KL else self.size
        # Each block walks a grid-stride share: a bounded number of partials, all summed by one block.
        self.blocks = min(blocks_1d(self.size), THREADS_1D)

    def _beta(self):
        return np.float32(self.spec.attrs.get("beta", 1.0))

    def workspace(self):
        return {"partials": ((self.blocks,), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        _pointwise_loss_partials[self.blocks, THREADS_1D](self.code, xs[0].ravel(), xs[1].ravel(), self._beta(),
                                                          *self.weight_args(xs, self.size), ws["partials"])
        _sum_to_scalar[1, reduction_threads(self.blocks)](ws["partials"], np.float32(1.0 / self.count),
                                                          self.scalar(out))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gpred, gtarget = gxs[:2]
        if gpred is None and gtarget is None:
            return
        pred = xs[0].ravel()
        # pred stands in for an unwanted gradient: same type, never written (its flag is False).
        _pointwise_loss_backward[blocks_1d(self.size), THREADS_1D](
            self.code, pred, xs[1].ravel(), self._beta(), *self.weight_args(xs, self.size), self.scalar(gout),
            np.float32(1.0 / self.count),
            gpred is not None, gpred.ravel() if gpred is not None else pred,
            gtarget is not None, gtarget.ravel() if gtarget is not None else pred)


@register("cuda", "mse")
class MSELoss(_PointwiseLoss):
    code = MSE


@register("cuda", "bce")
class BCELoss(_PointwiseLoss):
    code = BCE


@register("cuda", "smooth_l1")
class SmoothL1Loss(_PointwiseLoss):
    code = SMOOTH_L1


@register("cuda", "kl_gaussian")
class KlGaussianLoss(_PointwiseLoss):
    code = KL


# --- loss_sum --------------------------------------------------------------------------------

@cuda.jit
def _scaled_scalar(src, weight, accumulate, dst):
    """dst[0] = weight * src[0], added to dst[0] when accumulating. One thread."""
    if cuda.grid(1) == 0:
        value = weight * src[0]
        dst[0] = dst[0] + value if accumulate else value


@register("cuda", "loss_sum")
class LossSum(_ScalarLoss):
    def _weights(self):
        return [np.float32(w) for w in self.spec.attrs["weights"]]

    def forward(self, ctx, xs, params, out, ws):
        total = self.scalar(out)
        for k, (x, w) in enumerate(zip(xs, self._weights())):
            _scaled_scalar[1, 1](self.scalar(x), w, k > 0, total)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for gx, w in zip(gxs, self._weights()):
            if gx is not None:
                _scaled_scalar[1, 1](self.scalar(gout), w, False, self.scalar(gx))
