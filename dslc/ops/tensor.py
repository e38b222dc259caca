"""Tensor plumbing: identity, flatten, reshape, concat, add. Kernels: runtime/{cpu,cuda}/tensor.py.

Also the helpers other families share: `normalise_axis` (softmax uses it), and
`first_difference` / `describe_difference` for shape mismatches (the losses use them).
"""
from __future__ import annotations

import math

from .registry import Attr, OpDef, ShapeError, TensorType, axis_text, fixed, need_float, register


def normalise_axis(a, x: TensorType, op):
    """Turn `a["axis"]` into a positive axis of `x` (batch is 0), in place.

    Negative axes count from the end, as in numpy; the batch axis is refused because every
    op works on one sample at a time.
    """
    axis, rank = a["axis"], x.rank
    if rank < 2:
        raise ShapeError(f"{op} needs an axis after the batch, found {x}",
                         expected="[N, ...] with at least 2 dimensions", found=str(x), arg="axis")
    positive = axis + rank if axis < 0 else axis
    if not 1 <= positive < rank:
        valid = "1 or -1" if rank == 2 else f"1 to {rank - 1} or -{rank - 1} to -1"
        raise ShapeError(f"{op} axis {axis} is out of range for {x}",
                         expected=f"{valid} (axis 0 is the batch)", found=f"axis = {axis}",
                         help="axis 1 is the channel (or feature) axis, -1 the last", arg="axis")
    a["axis"] = positive


def first_difference(t: TensorType, ref: TensorType):
    """The first dimension where two shapes differ, as (dim, t's size, ref's size), or None."""
    if t.rank != ref.rank:
        return ("rank", t.rank, ref.rank)
    for dim, (d, r) in enumerate(zip(t.shape, ref.shape)):
        if d != r:
            return (dim, d, r)
    return None


def describe_difference(diff) -> str:
    dim, got, want = diff
    if dim == "rank":
        return f"it is {got}-d where {want}-d is expected"
    return f"dimension {dim} is {got} where {want} is expected"


@register
class Identity(OpDef):
    name, family = "identity", "tensor"
    init_looks_through = True
    doc = "passes its input through unchanged (names a tensor, or an empty branch)"

    def shape(self, a, ins):
        return ins[0]


@register
class Flatten(OpDef):
    name, family = "flatten", "tensor"
    init_looks_through = True
    doc = "flattens every dimension after the batch: (N, ...) -> (N, prod)"

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        if x.rank < 2:
            raise ShapeError(f"flatten needs a dimension after the batch, found {x}",
                             expected="[N, ...] with at least 2 dimensions", found=str(x))
        size = math.prod(fixed(d, f"dimension {i}") for i, d in enumerate(x.shape[1:], 1))
        return TensorType(("N", size))


@register
class Reshape(OpDef):
    name, family = "reshape", "tensor"
    init_looks_through = True
    attrs = (Attr("shape", "ints", doc="the per-sample shape, without N; one entry may be -1 (inferred)"),)
    doc = "reshapes each sample: (N, ...) -> (N, *shape), the element count unchanged"

    def key_attrs(self, a):
        return "to " + "×".join(str(d) for d in a["shape"])

    def shape(self, a, ins):
        (x,) = ins
        need_float(x)
        size = x.per_sample_elements()
        if size is None:
            raise ShapeError(f"reshape needs a fixed per-sample size, found {x}",
                             help="give every dimension after N a number in the input declaration")
        dims = tuple(a["shape"])
        if not dims:
            raise ShapeError("reshape needs at least one dimension", help="write e.g. reshape(16, 5, 5)",
                             arg="shape")
        if dims.count(-1) > 1 or any(d < 1 and d != -1 for d in dims):
            raise ShapeError(f"reshape sizes must be positive, with at most one -1, found {dims}", arg="shape")
        known = math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if size % known:
                raise ShapeError(f"cannot infer the -1 of reshape{dims}: {size} elements per sample "
                                 f"are not a multiple of {known}", expected=f"a multiple of {known}",
                                 found=f"{x} ({size} per sample)", arg="shape")
            dims = tuple(size // known if d == -1 else d for d in dims)
        elif known != size:
            raise ShapeError(f"reshape{dims} holds {known} elements per sample, the input {size}",
                             expected=f"sizes whose product is {size}", found=f"{x}",
                             help="one entry may be -1 to infer it", arg="shape")
        a["shape"] = dims
        return TensorType(("N", *dims))


@register
class Concat(OpDef):
    name, family = "concat", "tensor"
    attrs = (Attr("axis", "axis", 1, doc="the axis to join on; 1 (channels) by default, may be negative"),)
    min_inputs, max_inputs = 2, None
    doc = "joins its inputs along one axis; every other dimension must agree"
    key_attrs = staticmethod(axis_text)

    def shape(self, a, ins):
        first = ins[0]
        for i, t in enumerate(ins, 1):
            need_float(t, f"input {i}")
            if t.rank != first.rank:
                raise ShapeError(f"concat input {i} is {t.rank}-d but input 1 is {first.rank}-d",
                                 expected=f"{first.rank}-d like input 1 {first}", found=str(t),
                                 help="insert `flatten` or `reshape(...)` so the ranks agree")
        normalise_axis(a, first, "concat")
        axis = a["axis"]
        for i, t in enumerate(ins[1:], 2):
            for dim, (d, r) in enumerate(zip(t.shape, first.shape)):
                if dim != axis and d != r:
                    raise ShapeError(f"concat input {i} differs from input 1 in dimension {dim} "
                                     f"({d} vs {r}); only the join axis {axis} may differ",
                                     expected=f"dimension {dim} = {r}, as in input 1 {first}",
                                     found=f"input {i} {t}",
                                     help="resize the branches (pooling, stride or padding) so they agree")
        joined = sum(fixed(t.shape[axis], f"concat input {i}'s axis {axis}") for i, t in enumerate(ins, 1))
        return TensorType(first.shape[:axis] + (joined,) + first.shape[axis + 1:])


@register
class Add(OpDef):
    name, family = "add", "tensor"
    min_inputs, max_inputs = 2, None
    doc = "elementwise sum of two or more tensors of equal shape (residual connections)"

    def shape(self, a, ins):
        return same_shapes(self.name, ins)


def same_shapes(op_name, ins):
    """The shape rule of an op joining float tensors of one shape (add, mean): that shape."""
    first = ins[0]
    for i, t in enumerate(ins, 1):
        need_float(t, f"input {i}")
        diff = first_difference(t, first)
        if diff is not None:
            raise ShapeError(f"{op_name} input {i} has shape {t} but input 1 has {first}: {describe_difference(diff)}",
                             expected=f"{first}, as input 1", found=str(t),
                             help="a projection (1x1 conv, or dense) makes the shapes agree")
    return first
