"""Layout: slice, transpose, permute, stop_gradient (alias detach).
Kernels: runtime/{cpu,cuda}/layout.py.

They move elements without arithmetic, over the axes after the batch (axis 0 is the batch:
every op works on one sample at a time). Axes may be negative, counted from the end as in
torch; the shape rules write them back as positive axes, so the kernels see one spelling.
"""
from __future__ import annotations

from .registry import Attr, OpDef, ShapeError, TensorType, fixed, need_float, register
from .tensor import normalise_axis


def sample_axis(a, name, x: TensorType, op):
    """Turn `a[name]` into a positive axis of `x` after the batch, in place.

    The batch axis gets its own refusal: it is the mistake someone used to torch's
    `x[:, ...]` or `permute(0, ...)` is likely to make."""
    axis = a[name]
    if x.rank >= 2 and axis in (0, -x.rank):
        raise ShapeError(f"{op} cannot work across samples: axis {axis} is the batch axis of {x}",
                         expected=f"an axis from 1 to {x.rank - 1} (or -1 for the last)", found=f"{name} = {axis}",
                         help="axes count the batch as 0, as in torch: axis 1 is the first axis of a sample",
                         arg=name)
    where = {"axis": axis}
    try:
        normalise_axis(where, x, op)
    except ShapeError as e:
        e.found, e.arg = f"{name} = {axis}", name
        raise
    a[name] = where["axis"]


@register
class Slice(OpDef):
    name, family = "slice", "layout"
    attrs = (
        Attr("axis", "axis", 1, doc="the axis to cut; 1 (channels) by default, may be negative"),
        Attr("start", "int", 0, doc="the first index kept; negative counts from the end"),
        Attr("end", "int", None, doc="one past the last index kept (default: the end); negative counts from the end"),
        Attr("step", "int", 1, doc="keep every step-th index (positive)"),
    )
    doc = "x[:, ..., start:end:step, ...] along one axis after the batch (python/torch slicing, ends clamped)"

    def key_attrs(self, a):
        step = f":{a['step']}" if a["step"] != 1 else ""
        return f"axis {a['axis']} [{a['start']}:{a['end']}{step}]"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        sample_axis(a, "axis", x, self.name)
        axis = a["axis"]
        size = fixed(x.shape[axis], f"slice's axis {axis}")
        step = a["step"]
        if step < 1:
            raise ShapeError(f"slice step must be positive, found {step}", expected="step >= 1",
                             found=f"step = {step}", help="slices run forwards, as in torch; a step of 1 keeps "
                                                           "every index", arg="step")
        written = (a["start"], a["end"])
        start, end = (slice(a["start"], a["end"], step).indices(size))[:2]
        count = len(range(start, end, step))
        if count == 0:
            end_text = "" if written[1] is None else written[1]
            raise ShapeError(f"slice [{written[0]}:{end_text}] of axis {axis} (size {size}) is empty",
                             expected=f"start < end, as indices 0 to {size} of the axis or negative from its end",
                             found=f"start = {written[0]}, end = {written[1]} on {x}",
                             help="a network tensor cannot be empty: check the bounds against the axis size",
                             arg="end" if written[1] is not None else "start")
        a["start"], a["end"] = start, start + (count - 1) * step + 1
        return TensorType(x.shape[:axis] + (count,) + x.shape[axis + 1:])


@register
class Transpose(OpDef):
    name, family = "transpose", "layout"
    attrs = (
        Attr("axis0", "axis", doc="one axis after the batch; may be negative"),
        Attr("axis1", "axis", doc="the other axis; may be negative"),
    )
    doc = "swaps two axes after the batch (torch's transpose): [N, C, L] -> transpose(1, 2) -> [N, L, C]"

    def key_attrs(self, a):
        return f"{a['axis0']}↔{a['axis1']}"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        written = (a["axis0"], a["axis1"])
        sample_axis(a, "axis0", x, self.name)
        sample_axis(a, "axis1", x, self.name)
        i, j = a["axis0"], a["axis1"]
        if i == j:
            raise ShapeError(f"transpose names axis {i} twice ({written[0]} and {written[1]}): it would change nothing",
                             expected="two different axes", found=f"axis {i} of {x} both times",
                             help="remove the transpose, or name the other axis to swap", arg="axis1")
        dims = list(x.shape)
        dims[i], dims[j] = dims[j], dims[i]
        return TensorType(tuple(dims))


@register
class Permute(OpDef):
    name, family = "permute", "layout"
    attrs = (Attr("order", "ints", doc="every axis after the batch once, in their new order; may be negative"),)
    doc = "reorders the axes after the batch, which stays first: [N, C, H, W] -> permute(2, 3, 1) -> [N, H, W, C]"

    def key_attrs(self, a):
        return "(" + ", ".join(str(d) for d in a["order"]) + ")"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        order = tuple(a["order"])
        rank = x.rank
        axes = ", ".join(str(d) for d in range(1, rank))
        if len(order) == rank and rank >= 2 and order[0] in (0, -rank):
            rest = ", ".join(str(d) for d in order[1:])
            raise ShapeError(f"permute orders the axes after the batch only: leave out the batch axis {order[0]}",
                             expected=f"{rank - 1} axes, a permutation of {axes}", found=f"order = {order}",
                             help=f"write permute({rest}): the batch axis always stays first", arg="order")
        if len(order) != rank - 1:
            raise ShapeError(f"permute needs every axis after the batch of {x} once: {rank - 1} axes, found "
                             f"{len(order)}", expected=f"a permutation of {axes}", found=f"order = {order}",
                             help="to swap two axes only, write transpose(a, b)", arg="order")
        positive = []
        for d in order:
            where = {"order": d}
            try:
                sample_axis(where, "order", x, self.name)
            except ShapeError as e:
                e.found = f"order = {order}"
                raise
            positive.append(where["order"])
        if len(set(positive)) != len(positive):
            twice = sorted({d for d in positive if positive.count(d) > 1})
            raise ShapeError(f"permute names axis {twice[0]} twice", expected=f"a permutation of {axes}",
                             found=f"order = {order}", help="name each axis after the batch exactly once",
                             arg="order")
        a["order"] = tuple(positive)
        return TensorType((x.shape[0], *(x.shape[d] for d in positive)))


@register
class StopGradient(OpDef):
    name, family = "stop_gradient", "layout"
    init_looks_through = True
    doc = "passes its input through; no gradient flows back into it (torch's detach)"

    def shape(self, a, ins):
        return ins[0]

    def grad_inputs(self, a, ins):
        return ()       # the plan gives no backward work upstream on its account


@register
class Detach(StopGradient):
    name = "detach"
    doc = "stop_gradient under torch's name"

    def variant(self, a):
        return "stop_gradient", a
