"""Losses: cross_entropy, hinge, mse, bce, smooth_l1, kl_gaussian, and loss_sum (a weighted sum
of losses). Kernels: runtime/{cpu,cuda}/loss.py.

A loss reduces to a scalar, TensorType(()) with no batch dimension: the mean over the batch
(and, for cross_entropy, over every labelled position; for the elementwise losses over every
element; kl_gaussian sums over the features and averages over the batch). Labels and targets
(the second input) never get a gradient. No loss counts MACs (see docs/OPS.md).

cross_entropy, mse, bce and smooth_l1 take an optional third input, a float weight (a mask when
it holds 0 and 1) that multiplies each term before the mean: the loss is sum(w * term) / count,
count being the number of terms whatever the weights (torch's reduction='mean' of the weighted
terms, not a weighted average). The weight has the terms' shape (the prediction's; the labels'
for cross_entropy) or is one number per sample, [N]. It gets no gradient.
"""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TensorType, need_float, need_rank, register
from .tensor import describe_difference, first_difference

SCALAR = TensorType(())


def _need_logits_and_labels(logits: TensorType, labels: TensorType, op: str):
    if logits.dtype == "int64" and labels.dtype == "float32":
        raise ShapeError(f"{op} takes the logits first and the labels second; these look swapped",
                         expected="float logits, then int labels", found=f"{logits}, {labels}",
                         help=f"write {op}(logits, labels)")
    need_float(logits, "logits tensor")
    if labels.dtype != "int64":
        raise ShapeError(f"{op}'s labels must be integer class ids, found a float tensor {labels}",
                         expected="an int tensor", found=str(labels),
                         help="declare the labels as `int` (or `int[...]`); float targets go to `bce` or `mse`")


class _Loss(OpDef):
    family = "loss"
    is_loss = True
    min_inputs = max_inputs = 2

    def grad_inputs(self, a, ins):
        return (0,)


def _need_weight(op: str, weight: TensorType, terms: TensorType):
    """The optional third input: a float weight shaped like the terms, or one per sample [N]."""
    shapes = f"{terms} (one weight per term) or [N] (one per sample)" if terms.shape != ("N",) else "[N]"
    if weight.dtype != "float32":
        raise ShapeError(f"the weight must be a float tensor, found integers {weight}",
                         expected=f"a float {shapes}", found=str(weight),
                         help="declare the weight (a mask of 0 and 1, say) as a float input")
    if weight.shape != terms.shape and weight.shape != ("N",):
        raise ShapeError(f"the weight {weight} fits neither the terms {terms} nor one per sample [N]",
                         expected=shapes, found=str(weight),
                         help=f"the third input of {op} multiplies each term before the mean")


@register
class CrossEntropy(_Loss):
    name = "cross_entropy"
    classifies = True
    max_inputs = 3
    doc = ("softmax cross-entropy of logits and integer labels, averaged over every labelled position; "
           "classes on axis 1 ([N, C], [N, C, H, W]) or last ([N, T, C]); an optional third input weights "
           "each position (shaped like the labels, or [N]): sum(w * term) / positions")

    def shape(self, a, ins):
        """Find the class axis from the two shapes and store it as attr `class_axis`.

        Axis 1 is preferred when both layouts fit (e.g. [N, 5, 5] with labels [N, 5]), as in torch.
        """
        logits, labels = ins[:2]
        _need_logits_and_labels(logits, labels, self.name)
        if logits.rank < 2:
            raise ShapeError(f"cross_entropy needs logits with a class axis, found {logits}",
                             expected="[N, C], [N, C, H, W] or [N, T, C]", found=str(logits),
                             help="end the network with `dense(classes)`")
        # A layout fits when the labels have the logits' shape less the class axis, whose size is fixed.
        classes_second = TensorType(logits.shape[:1] + logits.shape[2:], "int64")
        classes_last = TensorType(logits.shape[:-1], "int64")
        if labels.shape == classes_second.shape and isinstance(logits.shape[1], int):
            a["class_axis"] = 1
        elif labels.shape == classes_last.shape and isinstance(logits.shape[-1], int):
            a["class_axis"] = logits.rank - 1
        else:
            layouts = (f"{classes_second} (classes on axis 1)" if classes_second == classes_last else
                       f"{classes_second} (classes on axis 1) or {classes_last} (classes last)")
            raise ShapeError(f"cross_entropy's labels {labels} do not fit the logits {logits}",
                             expected=layouts, found=str(labels),
                             help="the labels hold one class id per position of the logits, without the "
                                  "class axis, whose size must be fixed")
        if logits.shape[a["class_axis"]] == 1:
            raise ShapeError("cross_entropy over a single class is always zero",
                             expected="2 or more classes", found=str(logits),
                             help="for one output per sample use `bce` (binary) or `mse`")
        if len(ins) == 3:
            _need_weight(self.name, ins[2], TensorType(labels.shape))
        return SCALAR


@register
class Hinge(_Loss):
    name = "hinge"
    classifies = True
    attrs = (Attr("margin", "float", 1.0),)
    doc = "multiclass SVM hinge loss of logits [N, C] and integer labels [N] (torch multi_margin_loss, p = 1)"

    def key_attrs(self, a):
        return f"margin {a['margin']:g}"

    def shape(self, a, ins):
        logits, labels = ins
        _need_logits_and_labels(logits, labels, self.name)
        need_rank(logits, 2, "logits tensor", layout="[N, C]")
        if labels.shape != ("N",):
            raise ShapeError(f"hinge takes one label per sample, found {labels}",
                             expected="int[N]", found=str(labels),
                             help="declare the labels `int`; for per-position labels use cross_entropy")
        return SCALAR


class _ElementwiseLoss(_Loss):
    """A loss comparing two float tensors of one shape, element by element, optionally weighted."""
    max_inputs = 3

    def shape(self, a, ins):
        pred, target = ins[:2]
        need_float(pred, "prediction")
        if target.dtype != "float32":
            raise ShapeError(f"{self.name}'s target must be a float tensor, found integers {target}",
                             expected=f"a float tensor shaped like {pred}", found=str(target),
                             help="integer class ids go to `cross_entropy` or `hinge`")
        diff = first_difference(target, pred)
        if diff is not None:
            raise ShapeError(f"{self.name}'s target {target} does not match the prediction {pred}: "
                             f"{describe_difference(diff)}",
                             expected=str(pred), found=str(target),
                             help="the prediction and target are compared element by element")
        if len(ins) == 3:
            _need_weight(self.name, ins[2], pred)
        return SCALAR


_WEIGHT_DOC = "; an optional third input weights each element (pred's shape, or [N]): sum(w * term) / elements"


@register
class Mse(_ElementwiseLoss):
    name = "mse"
    doc = "mean squared error over all elements of two float tensors of one shape" + _WEIGHT_DOC


@register
class Bce(_ElementwiseLoss):
    name = "bce"
    doc = ("mean binary cross-entropy of logits (sigmoid applied inside) and float targets in [0, 1]"
           + _WEIGHT_DOC)


@register
class SmoothL1(_ElementwiseLoss):
    name = "smooth_l1"
    attrs = (Attr("beta", "float", 1.0, doc="where the quadratic part ends; 0 gives the L1 loss"),)
    doc = ("torch smooth_l1_loss (mean): 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta, d = pred - target"
           + _WEIGHT_DOC)

    def key_attrs(self, a):
        return f"beta {a['beta']:g}" if a["beta"] != 1 else ""

    def shape(self, a, ins):
        if not a["beta"] >= 0:
            raise ShapeError(f"beta must be 0 or more, found {a['beta']}",
                             expected="beta >= 0", found=f"beta = {a['beta']}",
                             help="beta is the width of the quadratic zone around 0 (torch's default 1.0)",
                             arg="beta")
        return super().shape(a, ins)


@register
class KlGaussian(_Loss):
    name = "kl_gaussian"
    doc = ("KL divergence of the diagonal Gaussian N(mu, exp(logvar)) from N(0, I): "
           "-0.5 * sum(1 + logvar - mu^2 - exp(logvar)) over the features, averaged over the batch")

    def shape(self, a, ins):
        mu, logvar = ins
        need_float(mu, "mean (mu)")
        need_float(logvar, "log-variance (logvar)")
        if mu.rank < 2:
            raise ShapeError(f"kl_gaussian needs a batch of feature vectors, found {mu}",
                             expected="[N, features, ...]", found=str(mu),
                             help="mu and logvar are the encoder's two heads, e.g. `dense(20)` each")
        diff = first_difference(logvar, mu)
        if diff is not None:
            raise ShapeError(f"logvar {logvar} does not match the mean {mu}: "
                             f"{describe_difference(diff)}",
                             expected=str(mu), found=str(logvar),
                             help="mu and logvar are two heads of one size")
        return SCALAR

    def grad_inputs(self, a, ins):
        return (0, 1)


@register
class LossSum(OpDef):
    name, family = "loss_sum", "loss"
    attrs = (Attr("weights", "floats", None, doc="one weight per loss; all 1 by default"),)
    min_inputs, max_inputs = 1, None
    is_loss = True
    doc = "weighted sum of scalar losses (`loss a + 0.3 * b - 0.1 * c`): sum of w_i * l_i, weights of any sign"

    def key_attrs(self, a):
        """`1× + 0.4× - 0.1×` where the weights are not all 1."""
        if all(w == 1 for w in a["weights"]):
            return ""
        first, *rest = a["weights"]
        return f"{first:g}×" + "".join(f" {'-' if w < 0 else '+'} {abs(w):g}×" for w in rest)

    def shape(self, a, ins):
        for i, t in enumerate(ins, 1):
            if t.shape != () or t.dtype != "float32":
                raise ShapeError(f"loss_sum adds scalar losses, but input {i} is {t}",
                                 expected="a loss (a scalar [])", found=str(t),
                                 help="apply a loss such as cross_entropy or mse first")
        if a["weights"] is None:
            a["weights"] = (1.0,) * len(ins)
        elif len(a["weights"]) != len(ins):
            raise ShapeError(f"loss_sum has {len(a['weights'])} weights for {len(ins)} losses",
                             expected=f"{len(ins)} weights", found=f"weights = {tuple(a['weights'])}",
                             help="give one weight per loss", arg="weights")
        a["weights"] = tuple(float(w) for w in a["weights"])
        return SCALAR
