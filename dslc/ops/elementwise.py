"""Elementwise algebra: unary functions, constant scale and shift, clamp, broadcasting binary
ops, the mean of tensors and sums / means over axes. Kernels: runtime/{cpu,cuda}/elementwise.py.

Semantics are torch's: `mul`, `sub` and `div` broadcast like torch's operators (a size-1
dimension stretches to the other side's size, the gradient is summed back over it), with one
restriction: both inputs carry the batch axis and have the same rank, so broadcasting never
pairs the batch with a feature axis. None of these ops counts MACs (see docs/OPS.md).
"""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TensorType, need_float, register
from .tensor import same_shapes


class _Unary(OpDef):
    """A function applied to each element: the output has the input's shape."""
    family = "elementwise"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        return x


@register
class Exp(_Unary):
    name = "exp"
    doc = "exp(x)"


@register
class Log(_Unary):
    name = "log"
    doc = "natural logarithm; -inf at 0 and NaN below, as torch"


@register
class Sqrt(_Unary):
    name = "sqrt"
    doc = "square root; NaN below 0, as torch"


@register
class Square(_Unary):
    name = "square"
    doc = "x * x"


@register
class Abs(_Unary):
    name = "abs"
    doc = "|x|; the gradient at 0 is 0, as torch"


@register
class Scale(_Unary):
    name = "scale"
    attrs = (Attr("factor", "float", doc="the constant each element is multiplied by, e.g. scale(0.5)"),)
    doc = "factor * x: multiplies by a constant"

    def key_attrs(self, a):
        return f"x{a['factor']:g}"


@register
class Shift(_Unary):
    name = "shift"
    attrs = (Attr("offset", "float", doc="the constant added to each element, e.g. shift(1)"),)
    doc = "x + offset: adds a constant"

    def key_attrs(self, a):
        return f"{a['offset']:+g}"


@register
class Clamp(_Unary):
    name = "clamp"
    attrs = (Attr("min", "float", None, doc="the lower bound; none if left out"),
             Attr("max", "float", None, doc="the upper bound; none if left out"))
    doc = "min(max(x, min), max), either bound optional; the gradient passes where min <= x <= max (torch.clamp)"

    def key_attrs(self, a):
        low = "" if a["min"] is None else f"{a['min']:g}"
        high = "" if a["max"] is None else f"{a['max']:g}"
        return f"[{low}, {high}]"

    def shape(self, a, ins):
        x = super().shape(a, ins)
        if a["min"] is None and a["max"] is None:
            raise ShapeError("clamp needs a bound", expected="`min = ...`, `max = ...` or both",
                             found="neither", help="e.g. `clamp(min = 0, max = 6)` or `clamp(max = 1)`")
        if a["min"] is not None and a["max"] is not None and a["min"] > a["max"]:
            raise ShapeError(f"clamp min {a['min']:g} is above its max {a['max']:g}",
                             expected="min <= max", found=f"min = {a['min']:g}, max = {a['max']:g}",
                             help="swap the bounds", arg="min")
        return x


@register
class Relu6(_Unary):
    name = "relu6"
    relu_like = True
    doc = "min(max(x, 0), 6) (MobileNet); the gradient passes where 0 < x < 6 (torch relu6)"


# ---- binary, with broadcasting ----------------------------------------------------------------

def broadcast_shape(op: str, x: TensorType, y: TensorType) -> tuple:
    """torch's broadcast of two shapes that both start with the batch: equal ranks, and in each
    dimension equal sizes or a 1 on one side."""
    if x.rank != y.rank:
        raise ShapeError(f"{op} needs inputs of equal rank, found {x} and {y}",
                         expected=f"{x.rank}-d like input 1 {x}, with 1 where it broadcasts",
                         found=f"input 2 {y}",
                         help="both inputs keep the batch axis; `reshape(...)` adds size-1 axes, "
                              "e.g. [N, C] -> reshape(C, 1, 1) -> [N, C, 1, 1]")
    out = ["N"]
    for dim, (p, q) in enumerate(zip(x.shape[1:], y.shape[1:]), 1):
        if p == q or q == 1:
            out.append(p)
        elif p == 1:
            out.append(q)
        else:
            raise ShapeError(f"{op} cannot broadcast {x} with {y}: dimension {dim} is {p} and {q}",
                             expected=f"dimension {dim} equal ({p}) or 1 on one side",
                             found=f"input 2 {y}",
                             help="sizes broadcast only from 1, as in torch; a pooling or `reduce_mean(..., "
                                  "keepdims = true)` makes a dimension 1")
    return tuple(out)


class _Binary(OpDef):
    family = "elementwise"
    min_inputs, max_inputs = 2, 2

    def shape(self, a, ins):
        x, y = ins
        need_float(x, "input 1")
        need_float(y, "input 2")
        return TensorType(broadcast_shape(self.name, x, y))


@register
class Mul(_Binary):
    name = "mul"
    doc = "a * b, elementwise with broadcasting: `mul(a, b)` or `a -> mul(b)`"


@register
class Sub(_Binary):
    name = "sub"
    doc = "a - b, elementwise with broadcasting: `sub(a, b)` or `a -> sub(b)`"


@register
class Div(_Binary):
    name = "div"
    doc = "a / b, elementwise with broadcasting: `div(a, b)` or `a -> div(b)`"


# ---- the mean of tensors, and reductions over axes ------------------------------------------

@register
class Mean(OpDef):
    name, family = "mean", "elementwise"
    min_inputs, max_inputs = 2, None
    doc = "elementwise mean of two or more tensors of equal shape (FractalNet's join): `mean(a, b, c)`"

    def shape(self, a, ins):
        return same_shapes(self.name, ins)


class _Reduce(OpDef):
    family = "elementwise"
    attrs = (Attr("axes", "ints", doc="the axes to reduce (1 is the first after the batch; may be negative)"),
             Attr("keepdims", "bool", False, doc="keep each reduced axis with size 1"))

    def key_attrs(self, a):
        return "axes " + ", ".join(str(d) for d in a["axes"]) + (" keep" if a["keepdims"] else "")

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        rank = x.rank
        if rank < 2:
            raise ShapeError(f"{self.name} needs an axis after the batch, found {x}",
                             expected="[N, ...] with at least 2 dimensions", found=str(x))
        if not a["axes"]:
            raise ShapeError(f"{self.name} needs at least one axis", help=f"e.g. `{self.name}(axes = (2, 3))`",
                             arg="axes")
        axes = []
        for axis in a["axes"]:
            positive = axis + rank if axis < 0 else axis
            if not 1 <= positive < rank:
                valid = "1 or -1" if rank == 2 else f"1 to {rank - 1} or -{rank - 1} to -1"
                raise ShapeError(f"{self.name} axis {axis} is out of range for {x}",
                                 expected=f"{valid} (axis 0 is the batch, which is never reduced)",
                                 found=f"axis {axis}",
                                 help="a loss averages over the batch; reduce the axes after it", arg="axes")
            if positive in axes:
                raise ShapeError(f"{self.name} reduces axis {positive} twice", found=f"axes = {a['axes']}",
                                 help="name each axis once", arg="axes")
            axes.append(positive)
        a["axes"] = tuple(sorted(axes))
        if a["keepdims"]:
            return TensorType(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
        return TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes))


@register
class ReduceSum(_Reduce):
    name = "reduce_sum"
    doc = "sum over axes: `reduce_sum(axes = (2, 3), keepdims = true)`"


@register
class ReduceMean(_Reduce):
    name = "reduce_mean"
    doc = "mean over axes: `reduce_mean(1)`; `reduce_mean(2, 3)` averages each map"
