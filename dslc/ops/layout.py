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
