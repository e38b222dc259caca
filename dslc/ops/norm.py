"""Normalisation and regularisation: batchnorm, lrn, dropout. Kernels: runtime/{cpu,cuda}/norm.py.

None of them counts MACs (see docs/OPS.md).
"""
from __future__ import annotations

from .conv import _check_positive
from .registry import Attr, OpDef, ParamSpec, ShapeError, need_float, need_rank, register


@register
class BatchNorm(OpDef):
    name, family = "batchnorm", "norm"
    init_looks_through = True
    attrs = (Attr("eps", "float", 1e-5, doc="added to the variance"),
             Attr("momentum", "float", 0.1, doc="weight of the batch in the running statistics, as in torch"))
    doc = "batch normalisation over axis 1 of [N, C], [N, C, L] or [N, C, H, W], with running statistics"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        need_rank(x, (2, 3, 4), layout="[N, C], [N, C, L] or [N, C, H, W]")
        if not isinstance(x.shape[1], int):
            raise ShapeError(f"batchnorm normalises each channel of axis 1, here the symbolic `{x.shape[1]}`",
                             expected="a fixed channel count on axis 1", found=str(x),
                             help="batchnorm needs [N, C, ...]; a sequence [N, T, F] has its features last")
        if a["eps"] <= 0:
            raise ShapeError(f"eps must be positive, found {a['eps']}", help="torch's default is 1e-5", arg="eps")
        if not 0 <= a["momentum"] <= 1:
            raise ShapeError(f"momentum must be between 0 and 1, found {a['momentum']}",
                             help="it weighs the batch statistics in the running ones; torch's default is 0.1",
                             arg="momentum")
        return x

    def params(self, a, ins):
        c = ins[0].shape[1]
        return {"weight": ParamSpec((c,), "ones"),
                "bias": ParamSpec((c,), "zeros"),
                "running_mean": ParamSpec((c,), "zeros", trainable=False),
                "running_var": ParamSpec((c,), "ones", trainable=False)}


@register
class LocalResponseNorm(OpDef):
    name, family = "lrn", "norm"
    attrs = (Attr("size", "int", 5, doc="channels in each window"),
             Attr("alpha", "float", 1e-4),
             Attr("beta", "float", 0.75),
             Attr("k", "float", 1.0, doc="torch's default; the AlexNet paper uses k = 2"))
    doc = "local response normalisation across channels of [N, C, H, W] (torch LocalResponseNorm)"

    def key_attrs(self, a):
        return f"size {a['size']}"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        need_rank(x, 4, layout="[N, C, H, W]")
        _check_positive(a, ("size",))
        if a["k"] <= 0:
            raise ShapeError(f"k must be positive, found {a['k']}",
                             help="k keeps the divisor away from zero where a window is all zeros", arg="k")
        return x


@register
class Dropout(OpDef):
    name, family = "dropout", "norm"
    init_looks_through = True
    attrs = (Attr("p", "float", 0.5, doc="probability of zeroing an element in training"),)
    doc = "inverted dropout: zeroes elements with probability p and scales the rest by 1/(1-p); identity in eval"

    def key_attrs(self, a):
        return f"p={a['p']:g}"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        if not 0 <= a["p"] < 1:
            raise ShapeError(f"dropout probability must be in [0, 1), found {a['p']}",
                             expected="0 <= p < 1", found=f"p = {a['p']}",
                             help="p is the fraction dropped: p = 1 would drop everything", arg="p")
        return x
