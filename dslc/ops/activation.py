"""Activations: relu, leaky_relu, elu, sigmoid, tanh, prelu, softmax, maxout.
Kernels: runtime/{cpu,cuda}/activation.py.

None of them counts MACs (see docs/OPS.md).
"""
from __future__ import annotations

from .conv import _check_positive
from .registry import Attr, OpDef, ParamSpec, ShapeError, TensorType, axis_text, need_float, register
from .tensor import normalise_axis


class _Elementwise(OpDef):
    """An activation applied to each element: the output has the input's shape."""
    family = "activation"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        return x


@register
class Relu(_Elementwise):
    name = "relu"
    relu_like = True
    doc = "max(x, 0)"


@register
class Sigmoid(_Elementwise):
    name = "sigmoid"
    doc = "1 / (1 + exp(-x))"


@register
class Tanh(_Elementwise):
    name = "tanh"
    doc = "hyperbolic tangent"


@register
class LeakyRelu(_Elementwise):
    name = "leaky_relu"
    relu_like = True
    attrs = (Attr("slope", "float", 0.01, doc="slope for x < 0"),)
    doc = "x for x > 0, slope * x otherwise"

    def key_attrs(self, a):
        return f"slope {a['slope']:g}"


@register
class Elu(_Elementwise):
    name = "elu"
    relu_like = True
    attrs = (Attr("alpha", "float", 1.0),)
    doc = "x for x > 0, alpha * (exp(x) - 1) otherwise"

    def key_attrs(self, a):
        return f"alpha {a['alpha']:g}"


def _need_channels(x: TensorType, op: str) -> int:
    """The fixed channel count on axis 1 that a per-channel op works with."""
    if x.rank < 2 or not isinstance(x.shape[1], int):
        raise ShapeError(f"{op} works per channel of axis 1, found {x}",
                         expected="[N, C, ...] with a fixed C", found=str(x),
                         help="on a sequence [N, T, F] axis 1 is the symbolic length" if x.rank > 1 else "")
    return x.shape[1]


@register
class Prelu(_Elementwise):
    name = "prelu"
    relu_like = True
    doc = "leaky relu with a learned slope per channel (axis 1), initially 0.25"

    def shape(self, a, ins):
        x = super().shape(a, ins)
        _need_channels(x, self.name)
        return x

    def params(self, a, ins):
        return {"weight": ParamSpec((ins[0].shape[1],), "const:0.25")}


@register
class Softmax(OpDef):
    name, family = "softmax", "activation"
    attrs = (Attr("axis", "axis", 1, doc="the axis that sums to one; 1 by default, may be negative"),)
    doc = "exp(x) / sum(exp(x)) along one axis"
    key_attrs = staticmethod(axis_text)

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        normalise_axis(a, x, self.name)
        return x


@register
class Maxout(OpDef):
    name, family = "maxout", "activation"
    relu_like = True
    attrs = (Attr("pieces", "int", doc="channels reduced to one by a max"),)
    doc = "max over groups of `pieces` consecutive channels: [N, C, ...] -> [N, C / pieces, ...]"

    def key_attrs(self, a):
        return f"{a['pieces']} pieces"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        c = _need_channels(x, self.name)
        _check_positive(a, ("pieces",))
        k = a["pieces"]
        if c % k:
            raise ShapeError(f"maxout's {k} pieces do not divide the {c} channels",
                             expected=f"a divisor of {c}", found=f"pieces = {k}",
                             help=f"make the layer before give a multiple of {k} channels", arg="pieces")
        return TensorType((x.shape[0], c // k) + x.shape[2:])
