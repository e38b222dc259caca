"""The contract every kernel implements, on every device.

A kernel is the code for one primitive op (see docs/OPS.md) on one device. The plan
(runtime/plan.py) makes one kernel object per graph node, asks it which workspace buffers
it needs, allocates every buffer once, and then calls `forward` / `backward` each step with
preallocated arrays. Kernels never allocate per step; they write their results in place.

Kernels are found by op name: `@register("cpu", "conv")` in runtime/cpu/conv.py,
`@register("cuda", "conv")` in runtime/cuda/conv.py. `kernel_class(device, op)` imports the
device's kernel modules on first use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

DEVICES = ("cpu", "cuda")
# One module per op family; adding a family means adding its name here.
FAMILIES = ("conv", "pool", "dense", "norm", "activation", "tensor", "recurrent", "loss")

_KERNELS: dict[str, dict[str, type]] = {d: {} for d in DEVICES}
_loaded: set[str] = set()


@dataclass(frozen=True)
class NodeSpec:
    """Everything a kernel knows about its node, with every shape concrete (batch first)."""
    name: str                                  # hierarchical name, e.g. "layer1.0.conv1"
    op: str                                    # primitive op name, see docs/OPS.md
    attrs: dict                                # canonical attributes, see docs/OPS.md
    in_shapes: tuple                           # tuple of shape tuples
    in_dtypes: tuple                           # "float32" or "int64" per input
    out_shape: tuple
    out_dtype: str = "float32"
    param_shapes: dict = field(default_factory=dict)   # name -> shape (buffers included)


@dataclass
class Context:
    """Per-step state shared by every kernel of a plan."""
    training: bool = True
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))


class Kernel:
    """Base class: one op on one device, bound to one node.

    forward(ctx, xs, params, out, ws)
        xs: list of input arrays (spec.in_shapes), params: dict name -> array (buffers
        such as batchnorm running stats included, updated in place in training mode),
        out: preallocated output array to overwrite, ws: this node's workspace dict.
    backward(ctx, xs, params, out, gout, gxs, gparams, ws)
        gout: gradient of the loss w.r.t. out. gxs: list aligned with xs, an array to
        OVERWRITE with the input's gradient, or None where none is wanted. gparams: dict
        holding only the trainable params that want a gradient; OVERWRITE each.
        ws holds whatever forward saved there.
    """
    def __init__(self, spec: NodeSpec):
        self.spec = spec

    def workspace(self) -> dict:
        """name -> (shape, dtype) of buffers to allocate once for this node."""
        return {}

    def forward(self, ctx, xs, params, out, ws):
        raise NotImplementedError

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        raise NotImplementedError


class FusesRelu:
    """Mixin for a kernel that can absorb the relu after it (the plan's `fuse_activation`).

    Once fused, `self.relu` is True: forward writes the activated output, and backward, which
    then reads that output (`backward_reads_out`), masks the gradient where it is zero, i.e.
    where the pre-activation was <= 0. A kernel that can fuse only in some configurations says
    so in `can_fuse_relu`."""
    relu = False

    def can_fuse_relu(self) -> bool:
        return True

    def fuse_activation(self, op, attrs) -> bool:
        """Take over a following activation `op`; True when this kernel can."""
        if op != "relu" or self.relu or not self.can_fuse_relu():
            return False
        self.relu = True
        self.backward_reads_out = True
        return True


def register(device: str, *ops: str):
    """Class decorator: register a Kernel subclass for `ops` on `device`."""
    def deco(cls):
        for op in ops:
            if op in _KERNELS[device]:
                raise RuntimeError(f"two {device} kernels registered for op {op!r}")
            _KERNELS[device][op] = cls
        return cls
    return deco


def load_device(device: str) -> dict[str, type]:
    if device not in _loaded:
        for fam in FAMILIES:
            importlib.import_module(f"dslc.runtime.{device}.{fam}")
        _loaded.add(device)
    return _KERNELS[device]


def kernel_class(device: str, op: str) -> type:
    kernels = load_device(device)
    if op not in kernels:
        raise KeyError(f"no {device} kernel for op {op!r}")
    return kernels[op]
