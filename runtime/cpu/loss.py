"""CPU kernels of the loss family: cross_entropy, hinge, mse, bce, smooth_l1, kl_gaussian, loss_sum.

Every loss is a mean, written to a 0-d output; its gradient `gout` is 0-d too. The loops
write one partial sum per iteration into a workspace buffer, summed afterwards, so no two
iterations accumulate into the same element when they run in parallel. They run serially
below runtime/jit.py's size threshold (a classifier's (64, 10) logits are far below it): the
kernel decides once and passes `parallel`, and each loop body is one function called from
both the serial and the parallel loop. Label inputs are int64 and get no gradient.

cross_entropy, mse, bce and smooth_l1 take an optional third input, a weight per term (or per
sample) that multiplies each term and its gradient; the mean still divides by the number of
terms (dslc/ops/loss.py). The loops read term i's weight at w[i // w_div] (w_div 1: one weight
per term, terms per sample: one per sample) and, unweighted, take a stand-in array and a flag.
"""
import math

import numpy as np

from dslc.runtime.cpu.activation import exp_negative_abs, softmax_into
from dslc.runtime.jit import njit, parallel_elementwise, pnjit, prange
from dslc.runtime.kernel_api import Kernel, register

# Elementwise losses (mse, bce) reduce in chunks of this many elements, one chunk per parallel task.
_CHUNK = 1 << 14


def _n_chunks(size):
    return max(1, -(-size // _CHUNK))


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


def _flat_or(grad, stand_in):
    """The flat gradient array, or a stand-in where none is wanted (see the mse/bce loops)."""
    return grad.reshape(-1) if grad is not None else stand_in


def _weight_args(xs, terms):
    """(flat weight or stand-in, w_div, weighted) for the loops, from the optional third input."""
    if len(xs) < 3:
        return xs[0].reshape(-1), 1, False
    w = xs[2].reshape(-1)
    return w, max(1, terms // w.size), True


def _check_labels(labels, n_class, name):
    """Out-of-range labels would index out of bounds in the unchecked Numba loops."""
    if labels.size and (labels.min() < 0 or labels.max() >= n_class):
        raise ValueError(f"{name}: labels must lie in [0, {n_class}), "
                         f"got values in [{labels.min()}, {labels.max()}]")


# --- cross_entropy ---------------------------------------------------------------------------
# Logits are viewed as (outer, C, inner) around the class axis and labels as (outer, inner):
# (N, C) -> (N, C, 1); (N, C, H, W) -> (N, C, H*W); (N, T, C) -> (N*T, C, 1). The forward keeps
# the softmax probabilities (as torch keeps its log-softmax), so the backward needs no exp.

@njit
def _cross_entropy_row(logits, labels, row_max, row_sum, w, w_div, weighted, o):
    # -log softmax[label] = log-sum-exp - logit[label], with log-sum-exp = max + log(sum exp(x - max)).
    loss = 0.0
    n_inner = logits.shape[2]
    for i in range(n_inner):
        term = row_max[o, 0, i] + math.log(row_sum[o, 0, i]) - logits[o, labels[o, i], i]
        if weighted:
            term *= w[(o * n_inner + i) // w_div]
        loss += term
    return loss


@pnjit
def _cross_entropy_loss(logits, labels, row_max, row_sum, w, w_div, weighted, partial, parallel):
    if parallel:
        for o in prange(logits.shape[0]):
            partial[o] = _cross_entropy_row(logits, labels, row_max, row_sum, w, w_div, weighted, o)
    else:
        for o in range(logits.shape[0]):
            partial[o] = _cross_entropy_row(logits, labels, row_max, row_sum, w, w_div, weighted, o)
    return


@njit
def _cross_entropy_backward_row(probs, labels, gx, scale, w, w_div, weighted, o):
    # d loss / d logit = (softmax - onehot(label)) * weight * gout / positions
    n_outer, n_class, n_inner = probs.shape
    for i in range(n_inner):
        s = scale * w[(o * n_inner + i) // w_div] if weighted else scale
        for c in range(n_class):
            gx[o, c, i] = probs[o, c, i] * s
        gx[o, labels[o, i], i] -= s


@pnjit
def _cross_entropy_backward(probs, labels, gx, scale, w, w_div, weighted, parallel):
    if parallel:
        for o in prange(probs.shape[0]):
            _cross_entropy_backward_row(probs, labels, gx, scale, w, w_div, weighted, o)
    else:
        for o in range(probs.shape[0]):
            _cross_entropy_backward_row(probs, labels, gx, scale, w, w_div, weighted, o)
    return


@register("cpu", "cross_entropy")
class CrossEntropy(Kernel):
    backward_reads_inputs = (1, 2)    # the labels and weights; the logits' softmax is kept in the workspace
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(_size(spec.in_shapes[0]))

    def _outer(self):
        return _size(self.spec.in_shapes[0][:self.spec.attrs["class_axis"]])

    def _views(self, logits, labels):
        axis = self.spec.attrs["class_axis"]
        return logits.reshape(self._outer(), logits.shape[axis], -1), labels.reshape(self._outer(), -1)

    def workspace(self):
        logits_shape = self.spec.in_shapes[0]
        positions = (self._outer(), 1, _size(logits_shape[self.spec.attrs["class_axis"] + 1:]))
        return {"probs": (logits_shape, "float32"),       # softmax, saved for backward
                "row_max": (positions, "float32"),        # softmax_into's per-position maxima and sums
                "row_sum": (positions, "float32"),
                "partial": ((self._outer(),), "float32")}  # per-task loss sums

    def forward(self, ctx, xs, params, out, ws):
        logits, labels = self._views(xs[0], xs[1])
        _check_labels(labels, logits.shape[1], self.spec.name)
        probs, _ = self._views(ws["probs"], xs[1])
        softmax_into(logits, probs, ws["row_max"], ws["row_sum"])
        w, w_div, weighted = _weight_args(xs, labels.size)
        _cross_entropy_loss(logits, labels, ws["row_max"], ws["row_sum"], w, w_div, weighted, ws["partial"],
                            self.parallel)
        out[()] = ws["partial"].sum() / labels.size

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        probs, labels = self._views(ws["probs"], xs[1])
        gx, _ = self._views(gxs[0], xs[1])
        w, w_div, weighted = _weight_args(xs, labels.size)
        _cross_entropy_backward(probs, labels, gx, float(gout) / labels.size, w, w_div, weighted, self.parallel)


# --- hinge -----------------------------------------------------------------------------------
# torch multi_margin_loss (p=1): mean over samples of sum_{j != y} max(0, margin - x[y] + x[j]) / C

@njit
def _hinge_row(logits, labels, margin, n):
    y = labels[n]
    target = logits[n, y]
    loss = 0.0
    for j in range(logits.shape[1]):
        if j != y:
            loss += max(0.0, margin - target + logits[n, j])
    return loss


@pnjit
def _hinge_forward(logits, labels, margin, partial, parallel):
    if parallel:
        for n in prange(logits.shape[0]):
            partial[n] = _hinge_row(logits, labels, margin, n)
    else:
        for n in range(logits.shape[0]):
            partial[n] = _hinge_row(logits, labels, margin, n)
    return


@njit
def _hinge_backward_row(logits, labels, margin, gx, scale, n):
    y = labels[n]
    target = logits[n, y]
    violations = 0
    for j in range(logits.shape[1]):
        if j != y and margin - target + logits[n, j] > 0:
            gx[n, j] = scale
            violations += 1
        else:
            gx[n, j] = 0
    gx[n, y] = -violations * scale


@pnjit
def _hinge_backward(logits, labels, margin, gx, scale, parallel):
    if parallel:
        for n in prange(logits.shape[0]):
            _hinge_backward_row(logits, labels, margin, gx, scale, n)
    else:
        for n in range(logits.shape[0]):
            _hinge_backward_row(logits, labels, margin, gx, scale, n)
    return


@register("cpu", "hinge")
class Hinge(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(_size(spec.in_shapes[0]))

    def _margin(self):
        return float(self.spec.attrs.get("margin", 1.0))

    def workspace(self):
        return {"partial": ((self.spec.in_shapes[0][0],), "float32")}   # per-sample loss sums

    def forward(self, ctx, xs, params, out, ws):
        logits, labels = xs
        _check_labels(labels, logits.shape[1], self.spec.name)
        _hinge_forward(logits, labels, self._margin(), ws["partial"], self.parallel)
        out[()] = ws["partial"].sum() / logits.size

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            logits, labels = xs
            _hinge_backward(logits, labels, self._margin(), gxs[0], float(gout) / logits.size, self.parallel)


# --- mse, bce, smooth_l1 ---------------------------------------------------------------------
# Each takes two float arrays of one shape, flattened, and an optional weight; pred and target
# may get gradients. The backward loops take a stand-in array (the input itself) for an unwanted
# gradient, and a flag that keeps it unwritten: Numba needs an array in every slot. Sums are
# reduced in chunks. One loop serves the three: `kind` picks the term.

MSE, BCE, SMOOTH_L1 = range(3)


@njit
def _term(kind, x, t, softplus, beta):
    if kind == MSE:
        d = x - t
        return d * d
    if kind == BCE:
        # max(x, 0) - x t + log(1 + exp(-|x|)): finite for any x. softplus holds the last term.
        return max(x, 0.0) - x * t + softplus
    d = abs(x - t)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


@njit
def _pointwise_chunk(kind, pred, target, softplus, beta, w, w_div, weighted, b):
    acc = 0.0
    for i in range(b * _CHUNK, min(pred.size, (b + 1) * _CHUNK)):
        term = _term(kind, pred[i], target[i], softplus[i] if kind == BCE else 0.0, beta)
        acc += term * w[i // w_div] if weighted else term
    return acc


@pnjit
def _pointwise_forward(kind, pred, target, softplus, beta, w, w_div, weighted, partial, parallel):
    if parallel:
        for b in prange(partial.size):
            partial[b] = _pointwise_chunk(kind, pred, target, softplus, beta, w, w_div, weighted, b)
    else:
        for b in range(partial.size):
            partial[b] = _pointwise_chunk(kind, pred, target, softplus, beta, w, w_div, weighted, b)
    return


@njit
def _pointwise_backward_at(kind, pred, target, exp_neg_abs, beta, w, w_div, weighted, gpred, gtarget, scale,
                           want_gpred, want_gtarget, i):
    x = pred[i]
    t = target[i]
    s = scale * w[i // w_div] if weighted else scale
    if kind == BCE:
        # d/dx = sigmoid(x) - t, with sigmoid from e = exp(-|x|); d/dt = -x
        if want_gpred:
            v = 1 / (1 + exp_neg_abs[i])
            sig = v if x >= 0 else exp_neg_abs[i] * v
            gpred[i] = (sig - t) * s
        if want_gtarget:
            gtarget[i] = -x * s
        return
    d = x - t
    if kind == MSE:
        g = 2 * d * s
    elif abs(d) < beta:
        g = d / beta * s
    else:   # torch's sign: 0 at d == 0 (reached with beta == 0)
        g = s if d > 0 else (-s if d < 0 else 0.0 * s)
    if want_gpred:
        gpred[i] = g
    if want_gtarget:
        gtarget[i] = -g


@pnjit
def _pointwise_backward(kind, pred, target, exp_neg_abs, beta, w, w_div, weighted, gpred, gtarget, scale,
                        want_gpred, want_gtarget, parallel):
    if parallel:
        for i in prange(pred.size):
            _pointwise_backward_at(kind, pred, target, exp_neg_abs, beta, w, w_div, weighted, gpred, gtarget,
                                   scale, want_gpred, want_gtarget, i)
    else:
        for i in range(pred.size):
            _pointwise_backward_at(kind, pred, target, exp_neg_abs, beta, w, w_div, weighted, gpred, gtarget,
                                   scale, want_gpred, want_gtarget, i)
    return


class _PointwiseLoss(Kernel):
    kind = MSE

    def __init__(self, spec):
        super().__init__(spec)
        self.size = _size(spec.in_shapes[0])
        self.parallel = parallel_elementwise(self.size)

    def _beta(self):
        return float(self.spec.attrs.get("beta", 1.0))

    def workspace(self):
        return {"partial": ((_n_chunks(self.size),), "float32")}   # per-chunk sums

    def forward(self, ctx, xs, params, out, ws):
        pred, target = xs[0].reshape(-1), xs[1].reshape(-1)
        w, w_div, weighted = _weight_args(xs, pred.size)
        _pointwise_forward(self.kind, pred, target, self._softplus(ws, pred), self._beta(), w, w_div, weighted,
                           ws["partial"], self.parallel)
        out[()] = ws["partial"].sum() / pred.size

    def _softplus(self, ws, pred):
        """bce's log(1 + exp(-|x|)) per element, computed by forward; a stand-in for the others."""
        return pred

    def _extra(self, ws, pred):
        """bce's exp(-|x|) per element, saved by forward; a stand-in for the others."""
        return pred

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None and gxs[1] is None:
            return
        pred, target = xs[0].reshape(-1), xs[1].reshape(-1)
        w, w_div, weighted = _weight_args(xs, pred.size)
        _pointwise_backward(self.kind, pred, target, self._extra(ws, pred), self._beta(), w, w_div, weighted,
                            _flat_or(gxs[0], pred), _flat_or(gxs[1], target), float(gout) / pred.size,
                            gxs[0] is not None, gxs[1] is not None, self.parallel)


@register("cpu", "mse")
class MeanSquaredError(_PointwiseLoss):
    kind = MSE


@register("cpu", "smooth_l1")
class SmoothL1(_PointwiseLoss):
    kind = SMOOTH_L1


@register("cpu", "bce")
class BinaryCrossEntropyWithLogits(_PointwiseLoss):
    kind = BCE

    def workspace(self):
        shape = self.spec.in_shapes[0]
        return {"exp_neg_abs": (shape, "float32"),    # exp(-|x|), saved for backward's sigmoid
                "softplus": (shape, "float32"),       # log1p(exp(-|x|))
                **super().workspace()}

    def _softplus(self, ws, pred):
        exp_neg_abs, softplus = ws["exp_neg_abs"].reshape(-1), ws["softplus"].reshape(-1)
        exp_negative_abs(pred, exp_neg_abs, self.parallel)
        np.log1p(exp_neg_abs, out=softplus)
        return softplus

    def _extra(self, ws, pred):
        return ws["exp_neg_abs"].reshape(-1)


# --- kl_gaussian -----------------------------------------------------------------------------
# -0.5 * sum(1 + lv - mu^2 - exp(lv)) / N; d/dmu = mu * g / N, d/dlv = 0.5 (exp(lv) - 1) g / N.

@njit
def _kl_chunk(mu, logvar, b):
    acc = 0.0
    for i in range(b * _CHUNK, min(mu.size, (b + 1) * _CHUNK)):
        lv = logvar[i]
        acc += -0.5 * (1.0 + lv - mu[i] * mu[i] - math.exp(lv))
    return acc


@pnjit
def _kl_forward(mu, logvar, partial, parallel):
    if parallel:
        for b in prange(partial.size):
            partial[b] = _kl_chunk(mu, logvar, b)
    else:
        for b in range(partial.size):
            partial[b] = _kl_chunk(mu, logvar, b)
    return


@njit
def _kl_backward_at(mu, logvar, gmu, glogvar, scale, want_gmu, want_glogvar, i):
    if want_gmu:
        gmu[i] = mu[i] * scale
    if want_glogvar:
        glogvar[i] = 0.5 * (math.exp(logvar[i]) - 1.0) * scale


@pnjit
def _kl_backward(mu, logvar, gmu, glogvar, scale, want_gmu, want_glogvar, parallel):
    if parallel:
        for i in prange(mu.size):
            _kl_backward_at(mu, logvar, gmu, glogvar, scale, want_gmu, want_glogvar, i)
    else:
        for i in range(mu.size):
            _kl_backward_at(mu, logvar, gmu, glogvar, scale, want_gmu, want_glogvar, i)
    return


@register("cpu", "kl_gaussian")
class KlGaussian(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        self.size = _size(spec.in_shapes[0])
        self.parallel = parallel_elementwise(self.size)

    def workspace(self):
        return {"partial": ((_n_chunks(self.size),), "float32")}   # per-chunk sums

    def forward(self, ctx, xs, params, out, ws):
        _kl_forward(xs[0].reshape(-1), xs[1].reshape(-1), ws["partial"], self.parallel)
        out[()] = ws["partial"].sum() / xs[0].shape[0]

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None and gxs[1] is None:
            return
        mu, logvar = xs[0].reshape(-1), xs[1].reshape(-1)
        _kl_backward(mu, logvar, _flat_or(gxs[0], mu), _flat_or(gxs[1], logvar), float(gout) / xs[0].shape[0],
                     gxs[0] is not None, gxs[1] is not None, self.parallel)


# --- loss_sum --------------------------------------------------------------------------------

@register("cpu", "loss_sum")
class LossSum(Kernel):
    """sum_i w_i * l_i over 0-d losses."""
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        out[()] = sum(float(w) * float(x) for w, x in zip(self.spec.attrs["weights"], xs))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for w, gx in zip(self.spec.attrs["weights"], gxs):
            if gx is not None:
                gx[()] = float(w) * float(gout)
