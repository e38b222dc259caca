"""Convolutions: conv and deconv (transposed convolution). Kernels: runtime/{cpu,cuda}/conv.py."""
from __future__ import annotations

from .registry import (
    Attr,
    OpDef,
    ParamSpec,
    ShapeError,
    TensorType,
    fixed,
    need_float,
    need_rank,
    pair_text,
    register,
    resolve_same_pad,
    window_out,
    window_text,
)

_WINDOW_ATTRS = (
    Attr("channels", "int", doc="output channels"),
    Attr("kernel", "pair", doc="kernel size, e.g. 3x3"),
    Attr("stride", "pair", 1),
    Attr("pad", "pad", 0, doc="padding per side, or `same` (stride 1, odd kernel)"),
    Attr("dilation", "pair", 1),
    Attr("groups", "int", 1),
    Attr("bias", "bool", True),
)


def _check_groups(a, c_in):
    g = a["groups"]
    if g < 1 or c_in % g or a["channels"] % g:
        raise ShapeError(f"groups = {g} must divide both input channels ({c_in}) and output channels ({a['channels']})",
                         expected=f"divisors of {c_in} and {a['channels']}", found=f"groups = {g}",
                         help="for a depthwise conv use groups equal to the input channels", arg="groups")


def _check_positive(a, names):
    for n in names:
        v = a[n]
        vals = v if isinstance(v, tuple) else (v,)
        if any(x < 1 for x in vals):
            raise ShapeError(f"`{n}` must be at least 1, found {v}", arg=n)


def _check_not_negative(a, names):
    """Padding crops nothing: a negative pad is refused, as pooling refuses it (the kernels
    would read outside the input)."""
    for n in names:
        v = a[n]
        vals = v if isinstance(v, tuple) else (v,)
        if any(x < 0 for x in vals):
            text = (v[0] if v[0] == v[1] else f"{v[0]}x{v[1]}") if isinstance(v, tuple) else v
            raise ShapeError(f"`{n}` must be 0 or more, found {text}", expected=f"{n} >= 0", found=f"{n} = {text}",
                             help="padding adds zeros around the input; give pad = 0 or more "
                                  "(negative padding would crop, which dslc does not do)", arg=n)


def _key_attrs(a) -> str:
    """`3x3 /2, 64, groups 32`: window, channels, and dilation and groups where they are not 1."""
    parts = [window_text(a), str(a["channels"])]
    if tuple(a.get("dilation", (1, 1))) != (1, 1):
        parts.append(f"dilation {pair_text(a['dilation'])}")
    if a.get("groups", 1) != 1:
        parts.append(f"groups {a['groups']}")
    return ", ".join(parts)


@register
class Conv(OpDef):
    name, family = "conv", "conv"
    attrs = _WINDOW_ATTRS
    doc = "2-d convolution over [N, C, H, W]"
    key_attrs = staticmethod(_key_attrs)

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        need_rank(x, 4, layout="[N, C, H, W]")
        _check_positive(a, ("channels", "kernel", "stride", "dilation"))
        c_in = fixed(x.shape[1], "channels")
        _check_groups(a, c_in)
        if a["pad"] == "same":
            a["pad"] = tuple(resolve_same_pad(k, d, s) for k, d, s in zip(a["kernel"], a["dilation"], a["stride"]))
        _check_not_negative(a, ("pad",))
        ho = window_out(x.shape[2], a["kernel"][0], a["stride"][0], a["pad"][0], a["dilation"][0], "height")
        wo = window_out(x.shape[3], a["kernel"][1], a["stride"][1], a["pad"][1], a["dilation"][1], "width")
        return TensorType(("N", a["channels"], ho, wo))

    def params(self, a, ins):
        c_in = ins[0].shape[1]
        kh, kw = a["kernel"]
        fan_in = c_in // a["groups"] * kh * kw
        fan_out = a["channels"] // a["groups"] * kh * kw
        p = {"weight": ParamSpec((a["channels"], c_in // a["groups"], kh, kw), "he", fan_in=fan_in, fan_out=fan_out)}
        if a["bias"]:
            p["bias"] = ParamSpec((a["channels"],), "zeros")
        return p

    def macs(self, a, ins, out):
        c_in = ins[0].shape[1]
        return out.per_sample_elements() * (c_in // a["groups"]) * a["kernel"][0] * a["kernel"][1]


@register
class Deconv(OpDef):
    name, family = "deconv", "conv"
    attrs = (_WINDOW_ATTRS[0], _WINDOW_ATTRS[1], _WINDOW_ATTRS[2],
             Attr("pad", "pair", 0), Attr("output_pad", "pair", 0),
             Attr("groups", "int", 1), Attr("bias", "bool", True))
    doc = "transposed 2-d convolution (learned upsampling) over [N, C, H, W]"
    key_attrs = staticmethod(_key_attrs)

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        need_rank(x, 4, layout="[N, C, H, W]")
        _check_positive(a, ("channels", "kernel", "stride"))
        c_in = fixed(x.shape[1], "channels")
        _check_groups(a, c_in)
        _check_not_negative(a, ("pad", "output_pad"))
        for o, s in zip(a["output_pad"], a["stride"]):
            if o >= s:
                raise ShapeError(f"output_pad must be smaller than the stride, found output_pad {o} with stride {s}",
                                 arg="output_pad")
        dims = []
        for i, what in ((2, "height"), (3, "width")):
            h = fixed(x.shape[i], what)
            k, s, p, o = a["kernel"][i - 2], a["stride"][i - 2], a["pad"][i - 2], a["output_pad"][i - 2]
            d = (h - 1) * s - 2 * p + k + o
            if d < 1:
                raise ShapeError(f"{what} shrinks to {d}: ({h} - 1) x {s} - 2 x {p} + {k} + {o}",
                                 help="reduce the padding", arg="pad")
            dims.append(d)
        return TensorType(("N", a["channels"], *dims))

    def params(self, a, ins):
        c_in = ins[0].shape[1]
        kh, kw = a["kernel"]
        fan_in = a["channels"] // a["groups"] * kh * kw
        p = {"weight": ParamSpec((c_in, a["channels"] // a["groups"], kh, kw), "he", fan_in=fan_in,
                                 fan_out=c_in // a["groups"] * kh * kw)}
        if a["bias"]:
            p["bias"] = ParamSpec((a["channels"],), "zeros")
        return p

    def macs(self, a, ins, out):
        x = ins[0]
        return x.per_sample_elements() * (a["channels"] // a["groups"]) * a["kernel"][0] * a["kernel"][1]
