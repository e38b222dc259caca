"""Stochastic structure: drop_path (stochastic depth, FractalNet's drop-path) and
dropconnect_dense (DropConnect). Kernels: runtime/{cpu,cuda}/stochastic.py.

Both are regularisers that act in training only and are the identity of their deterministic
layer in evaluation. Their draws come from the run's one seeded stream (the kernel Context's
`rng`, which dropout and `sample` draw from too and checkpoints save), so a resumed run drops
exactly what the uninterrupted run would have.
"""
from __future__ import annotations

from .dense import Dense
from .registry import Attr, OpDef, ShapeError, need_float, register


def _check_probability(a, op, help):
    p = a["p"]
    if not 0 <= p <= 1:
        raise ShapeError(f"{op} probability must be in [0, 1], found {p:g}",
                         expected="0 <= p <= 1", found=f"p = {p:g}", help=help, arg="p")


@register
class DropPath(OpDef):
    name, family = "drop_path", "stochastic"
    init_looks_through = True
    attrs = (Attr("p", "float", doc="probability of dropping a sample's whole branch in training"),)
    doc = ("per-sample branch dropping (stochastic depth, drop-path): in training each sample's input is "
           "zeroed with probability p and the survivors scaled by 1/(1-p) (torchvision's StochasticDepth, "
           "mode 'row'); identity in eval")

    def key_attrs(self, a):
        return f"p={a['p']:g}"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        _check_probability(a, "drop_path",
                           "p is the chance a sample's branch is dropped: stochastic depth uses 0 to 0.5, "
                           "e.g. `drop_path(0.2)` at the end of a residual branch")
        return x


@register
class DropConnectDense(Dense):
    name, family = "dropconnect_dense", "stochastic"
    attrs = (Attr("units", "int", doc="output features"),
             Attr("p", "float", 0.5, doc="probability of dropping each weight in training"),
             Attr("bias", "bool", True))
    doc = ("DropConnect fully connected layer: dense whose weight entries are zeroed with probability p in "
           "training (one mask per step, shared by the batch; kept weights scaled by 1/(1-p), so "
           "F.linear(x, F.dropout(weight, p), bias)); plain dense in eval. The bias is not dropped")

    def key_attrs(self, a):
        return f"{a['units']} p={a['p']:g}"

    def shape(self, a, ins):
        out = super().shape(a, ins)
        _check_probability(a, "dropconnect_dense",
                           "p is the fraction of weights dropped in each training step, e.g. "
                           "`dropconnect_dense(128, p = 0.5)`")
        return out
