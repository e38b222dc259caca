"""CPU kernels of the loss family: cross_entropy, hinge, mse, bce, loss_sum.

Every loss is a mean, written to a 0-d output; its gradient `gout` is 0-d too. The loops
write one partial sum per iteration into a workspace buffer, summed afterwards, so no two
iterations accumulate into the same element when they run in parallel. They run serially
below runtime/jit.py's size threshold (a classifier's (64, 10) logits are far below it): the
kernel decides once and passes `parallel`, and each loop body is one function called from
both the serial and the parallel loop. Label inputs are int64 and get no gradient.
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
def _cross_entropy_row(logits, labels, row_max, row_sum, o):
    # -log softmax[label] = log-sum-exp - logit[label], with log-sum-exp = max + log(sum exp(x - max)).
    loss = 0.0
    for i in range(logits.shape[2]):
        loss += row_max[o, 0, i] + math.log(row_sum[o, 0, i]) - logits[o, labels[o, i], i]
    return loss


@pnjit
def _cross_entropy_loss(logits, labels, row_max, row_sum, partial, parallel):
    if parallel:
        for o in prange(logits.shape[0]):
            partial[o] = _cross_entropy_row(logits, labels, row_max, row_sum, o)
    else:
        for o in range(logits.shape[0]):
            partial[o] = _cross_entropy_row(logits, labels, row_max, row_sum, o)
    return


@njit
def _cross_entropy_backward_row(probs, labels, gx, scale, o):
    # d loss / d logit = (softmax - onehot(label)) * gout / positions
    n_outer, n_class, n_inner = probs.shape
    for c in range(n_class):
        for i in range(n_inner):
            gx[o, c, i] = probs[o, c, i] * scale
    for i in range(n_inner):
        gx[o, labels[o, i], i] -= scale


@pnjit
def _cross_entropy_backward(probs, labels, gx, scale, parallel):
    if parallel:
        for o in prange(probs.shape[0]):
            _cross_entropy_backward_row(probs, labels, gx, scale, o)
    else:
        for o in range(probs.shape[0]):
            _cross_entropy_backward_row(probs, labels, gx, scale, o)
    return


@register("cpu", "cross_entropy")
class CrossEntropy(Kernel):
    backward_reads_inputs = (1,)      # the labels; the logits' softmax is kept in the workspace
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
        _cross_entropy_loss(logits, labels, ws["row_max"], ws["row_sum"], ws["partial"], self.parallel)
        out[()] = ws["partial"].sum() / labels.size

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        probs, labels = self._views(ws["probs"], xs[1])
        gx, _ = self._views(gxs[0], xs[1])
        _cross_entropy_backward(probs, labels, gx, float(gout) / labels.size, self.parallel)


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


# --- mse, bce --------------------------------------------------------------------------------
# Both take two float arrays of one shape, flattened; both inputs may get gradients. The
# backward loops take a stand-in array (the input itself) for an unwanted gradient, and a flag
# that keeps it unwritten: Numba needs an array in every slot. Sums are reduced in chunks.

@njit
def _mse_chunk(pred, target, b):
    acc = 0.0
    for i in range(b * _CHUNK, min(pred.size, (b + 1) * _CHUNK)):
        d = pred[i] - target[i]
        acc += d * d
    return acc


@pnjit
def _mse_forward(pred, target, partial, parallel):
    if parallel:
        for b in prange(partial.size):
            partial[b] = _mse_chunk(pred, target, b)
    else:
        for b in range(partial.size):
            partial[b] = _mse_chunk(pred, target, b)
    return


@njit
def _mse_backward_at(pred, target, gpred, gtarget, scale, want_gpred, want_gtarget, i):
    g = 2 * (pred[i] - target[i]) * scale
    if want_gpred:
        gpred[i] = g
    if want_gtarget:
        gtarget[i] = -g


@pnjit
def _mse_backward(pred, target, gpred, gtarget, scale, want_gpred, want_gtarget, parallel):
    if parallel:
        for i in prange(pred.size):
            _mse_backward_at(pred, target, gpred, gtarget, scale, want_gpred, want_gtarget, i)
    else:
        for i in range(pred.size):
            _mse_backward_at(pred, target, gpred, gtarget, scale, want_gpred, want_gtarget, i)
    return


@njit
def _bce_chunk(logits, target, softplus, b):
    # max(x, 0) - x t + log(1 + exp(-|x|)): finite for any x. softplus holds the last term.
    acc = 0.0
    for i in range(b * _CHUNK, min(logits.size, (b + 1) * _CHUNK)):
        x = logits[i]
        acc += max(x, 0.0) - x * target[i] + softplus[i]
    return acc


@pnjit
def _bce_forward(logits, target, softplus, partial, parallel):
    if parallel:
        for b in prange(partial.size):
            partial[b] = _bce_chunk(logits, target, softplus, b)
    else:
        for b in range(partial.size):
            partial[b] = _bce_chunk(logits, target, softplus, b)
    return


@njit
def _bce_backward_at(logits, target, exp_neg_abs, glogits, gtarget, scale, want_glogits, want_gtarget, i):
    # d/dx = sigmoid(x) - t, with sigmoid from e = exp(-|x|); d/dt = -x
    x = logits[i]
    if want_glogits:
        v = 1 / (1 + exp_neg_abs[i])
        sig = v if x >= 0 else exp_neg_abs[i] * v
        glogits[i] = (sig - target[i]) * scale
    if want_gtarget:
        gtarget[i] = -x * scale


@pnjit
def _bce_backward(logits, target, exp_neg_abs, glogits, gtarget, scale, want_glogits, want_gtarget, parallel):
    if parallel:
        for i in prange(logits.size):
            _bce_backward_at(logits, target, exp_neg_abs, glogits, gtarget, scale, want_glogits, want_gtarget, i)
    else:
        for i in range(logits.size):
            _bce_backward_at(logits, target, exp_neg_abs, glogits, gtarget, scale, want_glogits, want_gtarget, i)
    return


@register("cpu", "mse")
class MeanSquaredError(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(_size(spec.in_shapes[0]))

    def workspace(self):
        return {"partial": ((_n_chunks(_size(self.spec.in_shapes[0])),), "float32")}   # per-chunk sums

    def forward(self, ctx, xs, params, out, ws):
        pred, target = xs[0].reshape(-1), xs[1].reshape(-1)
        _mse_forward(pred, target, ws["partial"], self.parallel)
        out[()] = ws["partial"].sum() / pred.size

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None and gxs[1] is None:
            return
        pred, target = xs[0].reshape(-1), xs[1].reshape(-1)
        _mse_backward(pred, target, _flat_or(gxs[0], pred), _flat_or(gxs[1], target), float(gout) / pred.size,
                      gxs[0] is not None, gxs[1] is not None, self.parallel)


@register("cpu", "bce")
class BinaryCrossEntropyWithLogits(Kernel):
    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(_size(spec.in_shapes[0]))

    def workspace(self):
        shape = self.spec.in_shapes[0]
        return {"exp_neg_abs": (shape, "float32"),    # exp(-|x|), saved for backward's sigmoid
                "softplus": (shape, "float32"),       # log1p(exp(-|x|))
                "partial": ((_n_chunks(_size(shape)),), "float32")}

    def forward(self, ctx, xs, params, out, ws):
        logits, target = xs[0].reshape(-1), xs[1].reshape(-1)
        exp_neg_abs, softplus = ws["exp_neg_abs"].reshape(-1), ws["softplus"].reshape(-1)
        exp_negative_abs(logits, exp_neg_abs, self.parallel)
        np.log1p(exp_neg_abs, out=softplus)
        _bce_forward(logits, target, softplus, ws["partial"], self.parallel)
        out[()] = ws["partial"].sum() / logits.size

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None and gxs[1] is None:
            return
        logits, target = xs[0].reshape(-1), xs[1].reshape(-1)
        _bce_backward(logits, target, ws["exp_neg_abs"].reshape(-1), _flat_or(gxs[0], logits),
                      _flat_or(gxs[1], target), float(gout) / logits.size, gxs[0] is not None, gxs[1] is not None,
                      self.parallel)


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
