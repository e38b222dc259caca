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

from dslc.ops import OPS

DEVICES = ("cpu", "cuda")
# One kernel module per op family (runtime/<device>/<family>.py), named as the op definitions
# name their families (dslc/ops/registry.py).
FAMILIES = tuple(dict.fromkeys(op.family for op in OPS.values()))

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

    Everything below `backward` is optional: what a kernel may tell the plan (runtime/plan.py)
    so that it stores less or calls fewer kernels. Each default is the safe assumption; a
    kernel overrides the attribute (on its class, or on the instance once its configuration
    is known) or the method.
    """
    # ---- the memory plan -------------------------------------------------------------------
    backward_reads_inputs: bool | tuple = True
    """Which inputs backward reads: True (all), False (none) or a tuple of input positions.
    An input no backward reads is released once forward has no more use for it."""

    backward_reads_out: bool = True
    """Whether backward reads this node's output (else it is released after its last forward
    reader)."""

    forward_in_place: bool = False
    """Forward is correct with `out` being the same buffer as xs[0]. The plan then writes the
    output over an input that nobody reads afterwards (relu, tanh, ...)."""

    output_is_input_view: bool = False
    """The output is its (single) input's elements in the same order (flatten, reshape,
    identity): the plan makes the output a view of the input and skips forward."""

    scratch_workspace: tuple = ()
    """Names of workspace buffers that carry nothing from one call to the next (im2col
    columns, partial sums): forward and backward each get their own, live for that call only,
    so every node's scratch shares storage. Other workspace buffers live from forward to
    backward."""

    def __init__(self, spec: NodeSpec):
        self.spec = spec

    def workspace(self) -> dict:
        """name -> (shape, dtype) of buffers to allocate once for this node."""
        return {}

    def forward(self, ctx, xs, params, out, ws):
        raise NotImplementedError

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        raise NotImplementedError

    def describe(self) -> str:
        """How this kernel computes its node, in a few words, for per-kernel profiles
        (python -m bench.profile): the op, and what the kernel chose or fused where it has a
        choice (a conv's lowering, a relu it took over). Default: the op."""
        return self.spec.op

    # ---- fusion: one call doing the work of several nodes -------------------------------------
    def fuse_activation(self, op: str, attrs: dict) -> bool:
        """Take over the parameter-free activation `op` that follows this node; True when
        taken. Forward then writes the activated output, and backward receives that output
        and its gradient. Default: never."""
        return False

    def fuse_inference(self, op: str, attrs: dict) -> bool:
        """(Inference plans only.) Take over the following node with parameters, `op` (e.g.
        conv: an eval-mode batchnorm); True when taken. Forward then receives that node's
        parameters too, as "<op>.<name>", and writes its output. Asked before
        fuse_activation. Default: never."""
        return False

    def fuse_input(self, op: str, attrs: dict) -> bool:
        """(Inference plans only.) Take over the node `op` that produces this node's first
        input, when that node has no other reader; True when taken. Forward then receives
        that node's inputs in place of its output, and its parameters as
        "input.<op>.<name>" (e.g. lstm: the embed before it, whose lookup it folds into its
        input projection). Default: never."""
        return False

    def fuse_input_chain(self, nodes: list) -> bool:
        """(Inference plans only.) Take over the call that produces this node's first input
        when that call computes several nodes: `nodes` is [(op, attrs), ...] in order, a node
        and what it absorbed (e.g. batchnorm, relu). As fuse_input otherwise; the parameters
        of each arrive as "input.<op>.<name>". Default: a lone node goes to fuse_input, a
        chain is refused."""
        return len(nodes) == 1 and self.fuse_input(*nodes[0])

    # ---- horizontal fusion: siblings reading one tensor ----------------------------------------
    def sibling_key(self):
        """A hashable key, or None (the default) for a kernel that shares no work. Steps
        reading the same single input whose kernels return equal keys form a group (an
        inception module's 1x1 convs), and the first is asked to lead the others."""
        return None

    def lead_siblings(self, siblings: list) -> bool:
        """Compute the work of `siblings` (kernels with this one's sibling_key) too; True when
        accepted. The leader's forward then computes every member's output and its backward
        every member's parameter gradients and their summed input gradient; the others' calls
        are skipped. Only asked of kernels that return a sibling_key."""
        return False

    def bind_siblings(self, operands: list):
        """Each follower's (params, out, gout, gparams) as the plan bound them (gout None and
        gparams empty outside backward); called once on a leader that accepted."""
        raise NotImplementedError(f"{type(self).__name__} has a sibling_key but cannot lead siblings")


class FusesRelu:
    """Mixin for a kernel that can absorb the relu after it (the plan's `fuse_activation`).

    Once fused, `self.relu` is True: forward writes the activated output, and backward, which
    then reads that output (`backward_reads_out`), masks the gradient where it is zero, i.e.
    where the pre-activation was <= 0. A kernel that can fuse only in some configurations says
    so in `can_fuse_relu`."""
    relu = False

    def can_fuse_relu(self) -> bool:
        return True

    def describe(self) -> str:
        return super().describe() + (" +relu" if self.relu else "")

    def fuse_activation(self, op, attrs) -> bool:
        """Take over a following relu (Kernel.fuse_activation); True when this kernel can."""
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
