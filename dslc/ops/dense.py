"""The fully connected layer. Kernels: runtime/{cpu,cuda}/dense.py.

Which axes dense multiplies depends on the input's rank:
  [N, F]          -> [N, units]
  [N, T, F]       -> [N, T, units]: applied at every step (after embed / rnn / lstm / gru), T may be symbolic
  [N, C, H, W...] -> [N, units]: everything after N is flattened first
"""
from __future__ import annotations

import math

from .conv import _check_positive
from .registry import Attr, OpDef, ParamSpec, ShapeError, TensorType, fixed, need_float, register


def _features(x: TensorType) -> int:
    """F, the length of the vectors dense multiplies (see the module doc)."""
    if x.rank == 3:
        return fixed(x.shape[2], "dense's input features (the last axis of [N, T, F])")
    return math.prod(fixed(d, f"dense's input dimension {i}") for i, d in enumerate(x.shape[1:], 1))


@register
class Dense(OpDef):
    name, family = "dense", "dense"
    attrs = (Attr("units", "int", doc="output features"), Attr("bias", "bool", True))
    doc = "fully connected layer: [N, F] -> [N, units]; per step on [N, T, F]; flattens rank 4 and up"

    def key_attrs(self, a):
        return str(a["units"])

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        if x.rank < 2:
            raise ShapeError(f"dense needs features after the batch dimension, found {x}",
                             expected="[N, F], [N, T, F] (per step) or [N, C, H, W] (flattened)", found=str(x),
                             help="a per-sample scalar has no features to weigh")
        _check_positive(a, ("units",))
        _features(x)
        if x.rank == 3:
            return TensorType(("N", x.shape[1], a["units"]))
        return TensorType(("N", a["units"]))

    def params(self, a, ins):
        features = _features(ins[0])
        p = {"weight": ParamSpec((a["units"], features), "he", fan_in=features, fan_out=a["units"])}
        if a["bias"]:
            p["bias"] = ParamSpec((a["units"],), "zeros")
        return p

    def macs(self, a, ins, out):
        """units x F per vector; None when a symbolic sequence length makes the count unknown."""
        x = ins[0]
        steps = x.shape[1] if x.rank == 3 else 1
        if not isinstance(steps, int):
            return None
        return steps * _features(x) * a["units"]
