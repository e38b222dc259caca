"""Pooling and unpooling: maxpool, avgpool, global_avgpool, maxunpool, unpool, upsample.
Kernels: runtime/{cpu,cuda}/pool.py.

A pool's `kernel` is of kind "window": a pair, or the bare word `global`. `avgpool(global)` is
the primitive `global_avgpool` (see `variant`); maxpool refuses `global`, as there is no global
max pool.
A pool's stride defaults to its kernel. `ceil = true` rounds the output size up like torch's
ceil_mode (see `_pooled_size`). No op here counts MACs (see docs/OPS.md).
"""
from __future__ import annotations

from .conv import _check_positive
from .registry import (
    OPS,
    Attr,
    OpDef,
    ShapeError,
    TensorType,
    fixed,
    need_float,
    need_rank,
    pair_text,
    register,
    window_out,
    window_text,
)

GLOBAL = "global"

_POOL_ATTRS = (
    Attr("kernel", "window", doc="window size, e.g. 2x2; `global` (avgpool only) pools the whole map"),
    Attr("stride", "pair", None, doc="defaults to the kernel"),
    Attr("pad", "pair", 0, doc="padding per side, at most half the kernel"),
    Attr("ceil", "bool", False, doc="round the output size up (torch's ceil_mode): keep a last, partial window"),
)


def _resolve_window(a):
    """Fill in the default stride (the kernel) and check the window, in place."""
    if a["stride"] is None:
        a["stride"] = a["kernel"]
    _check_positive(a, ("kernel", "stride"))
    kernel, pad = a["kernel"], a["pad"]
    if any(p < 0 or 2 * p > k for k, p in zip(kernel, pad)):
        raise ShapeError(f"pad must be between 0 and half the kernel, found pad {pad} with kernel {kernel}",
                         expected=f"pad <= {tuple(k // 2 for k in kernel)}", found=f"pad = {pad}",
                         help="a larger pad would make windows of padding only", arg="pad")


def _pooled_size(size, kernel: int, stride: int, pad: int, ceil: bool, what: str) -> int:
    """Windows along one axis, torch's rule: floor((size + 2 pad - kernel) / stride) + 1; in ceil
    mode ceil(...) + 1, so a last window may overhang the right padding by up to stride - 1,
    but is dropped if it would start past the input and its left padding (it would read
    right padding only). Every window keeps at least one input element either way."""
    if not ceil:
        return window_out(size, kernel, stride, pad, what=what)
    size = fixed(size, what)
    if size + 2 * pad + stride - 1 < kernel:
        raise ShapeError(f"kernel larger than the padded input: {what} {size} + 2x{pad} padding + "
                         f"{stride - 1} overhang (ceil mode, stride {stride}) < kernel {kernel}",
                         expected=f"{what} + 2*pad + stride - 1 >= {kernel}", found=f"{size + 2 * pad + stride - 1}",
                         help="use a smaller kernel, more padding, or remove a downsampling step before this",
                         arg="kernel")
    out = (size + 2 * pad - kernel + stride - 1) // stride + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pooled_shape(a, x: TensorType) -> tuple:
    ho = _pooled_size(x.shape[2], a["kernel"][0], a["stride"][0], a["pad"][0], a["ceil"], what="height")
    wo = _pooled_size(x.shape[3], a["kernel"][1], a["stride"][1], a["pad"][1], a["ceil"], what="width")
    return ("N", x.shape[1], ho, wo)


def _scaled(op, a, ins):
    """The shape rule of unpool and upsample: H and W multiplied by the scale."""
    (x,) = ins
    need_float(x)
    need_rank(x, 4, layout="[N, C, H, W]")
    _check_positive(a, ("scale",))
    sh, sw = a["scale"]
    return TensorType(("N", x.shape[1], fixed(x.shape[2], f"{op}'s input height") * sh,
                       fixed(x.shape[3], f"{op}'s input width") * sw))


@register
class MaxPool(OpDef):
    name, family = "maxpool", "pool"
    init_looks_through = True
    attrs = _POOL_ATTRS
    doc = "max pooling over [N, C, H, W] windows (floor mode, or ceil mode with `ceil = true`, like torch)"
    key_attrs = staticmethod(window_text)

    def shape(self, a, ins):
        (x,) = ins
        if a["kernel"] == GLOBAL:
            raise ShapeError("there is no global max pool", expected="a window such as 2x2",
                             found="maxpool(global)",
                             help="use `avgpool(global)`, or give maxpool the whole map as its window", arg="kernel")
        need_float(x)
        need_rank(x, 4, layout="[N, C, H, W]")
        _resolve_window(a)
        return TensorType(_pooled_shape(a, x))


@register
class AvgPool(OpDef):
    name, family = "avgpool", "pool"
    init_looks_through = True
    attrs = _POOL_ATTRS
    doc = ("average pooling over [N, C, H, W] windows (padding counts as zeros; in ceil mode a window's part "
           "past the right padding does not count); `avgpool(global)` is global_avgpool")
    key_attrs = staticmethod(window_text)

    def variant(self, a):
        if a["kernel"] != GLOBAL:
            return self.name, a
        for name, default in (("stride", None), ("pad", (0, 0)), ("ceil", False)):
            if a[name] != default:
                raise ShapeError(f"`avgpool(global)` takes no {name}: it pools each whole map to one value",
                                 found=f"{name} = {a[name]}", help=f"remove the {name}", arg=name)
        return "global_avgpool", {}

    def shape(self, a, ins):
        if a["kernel"] == GLOBAL:
            primitive, primitive_attrs = self.variant(a)
            return OPS[primitive].shape(primitive_attrs, ins)
        (x,) = ins
        need_float(x)
        need_rank(x, 4, layout="[N, C, H, W]")
        _resolve_window(a)
        return TensorType(_pooled_shape(a, x))


@register
class GlobalAvgPool(OpDef):
    name, family = "global_avgpool", "pool"
    init_looks_through = True
    doc = "mean of each channel's whole map: [N, C, H, W] -> [N, C] (written `avgpool(global)`)"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        need_rank(x, 4, layout="[N, C, H, W]")
        return TensorType(("N", x.shape[1]))


@register
class MaxUnpool(OpDef):
    name, family = "maxunpool", "pool"
    min_inputs = max_inputs = 2
    doc = ("undoes a max-pool: `maxunpool(p1)` places its input's values where the max-pool p1 found "
           "its maxima, zeros elsewhere, at the size of p1's input")

    def link(self, a, inputs, graph):
        how = "name the pool's output, e.g. `p1 = x -> maxpool(2x2)`, and write `maxunpool(p1)`"
        if len(inputs) != 2:
            raise ShapeError("maxunpool needs the max-pool it undoes", help=how)
        values, pooled = inputs
        pool = graph.nodes[pooled]["node"]
        if pool.op != "maxpool":
            raise ShapeError("maxunpool needs the output of a maxpool",
                             expected="a tensor computed by `maxpool(...)`",
                             found=f"`{pooled}`, computed by `{pool.op}`", help=how)
        pool_attrs = pool.attrs
        stride = pool_attrs["stride"] if pool_attrs["stride"] is not None else pool_attrs["kernel"]
        window = {"kernel": pool_attrs["kernel"], "stride": stride, "pad": pool_attrs["pad"],
                  "ceil": pool_attrs["ceil"]}
        return {**a, **window}, [values, pool.inputs[0]]

    def shape(self, a, ins):
        values, source = ins
        need_float(values)
        need_rank(values, 4, layout="[N, C, h, w]")
        need_float(source, "max-pool input")
        need_rank(source, 4, "max-pool input", layout="[N, C, H, W]")
        pooled = TensorType(_pooled_shape(a, source))
        if values.shape != pooled.shape:
            raise ShapeError(f"maxunpool's input {values} does not match its max-pool's output {pooled}",
                             expected=str(pooled), found=str(values),
                             help="between the maxpool and the maxunpool, keep the pooled shape "
                                  "(e.g. conv with pad = same and the same channels)")
        return source

    def grad_inputs(self, a, ins):
        return (0,)   # the max-pool's input only chooses positions


@register
class Unpool(OpDef):
    name, family = "unpool", "pool"
    attrs = (Attr("scale", "pair", doc="upsampling factor per axis, e.g. 2x2"),)
    doc = "\"bed of nails\" unpooling: each value goes to the top-left of a scale-sized block of zeros"

    def key_attrs(self, a):
        return f"×{pair_text(a['scale'])}"

    def shape(self, a, ins):
        return _scaled(self.name, a, ins)


@register
class Upsample(OpDef):
    name, family = "upsample", "pool"
    attrs = (Attr("scale", "pair", doc="upsampling factor per axis, e.g. 2 or 2x2"),
             Attr("mode", "enum", "nearest", choices=("nearest", "bilinear"),
                  doc="bilinear uses align_corners = false, like torch"))
    doc = "upsampling by an integer factor, nearest-neighbour or bilinear"

    def key_attrs(self, a):
        return f"×{pair_text(a['scale'])} {a['mode']}"

    def shape(self, a, ins):
        return _scaled(self.name, a, ins)

