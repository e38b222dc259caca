"""The op registry: one primitive op, one place.

Each op is a subclass of `OpDef` declared in dslc/ops/<family>.py with its attributes,
shape rule, parameters (with their initialisation), MAC count and which inputs get
gradients. Its kernels live in runtime/cpu/<family>.py and runtime/cuda/<family>.py,
registered under the same name. docs/OPS.md describes the canonical attributes.

Shape rules see `TensorType`s whose shapes start with the batch dimension "N" and may hold
other symbolic dimensions (strings, e.g. "T" for a sequence length). A rule that cannot
accept its inputs raises `ShapeError` with what it expected, what it found and a hint; the
elaborator turns that into a diagnostic at the call's source span.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

REQUIRED = object()
OPS: dict[str, "OpDef"] = {}


@dataclass(frozen=True)
class TensorType:
    shape: tuple            # ("N", 3, 224, 224); ints or symbol names
    dtype: str = "float32"  # "float32" or "int64"

    def __str__(self):
        dims = ", ".join(str(d) for d in self.shape)
        return f"[{dims}]" if self.dtype == "float32" else f"int[{dims}]"

    @property
    def rank(self):
        return len(self.shape)

    def per_sample_elements(self):
        """Elements per sample, or None when a dimension other than N is symbolic."""
        n = 1
        for d in self.shape[1:]:
            if not isinstance(d, int):
                return None
            n *= d
        return n


class ShapeError(Exception):
    """A shape rule's refusal: what was wrong, what it expected and found, how to fix it."""

    def __init__(self, message, *, expected="", found="", help="", arg=None):
        super().__init__(message)
        self.message, self.expected, self.found, self.help = message, expected, found, help
        self.arg = arg   # name of the attribute at fault, so the caret can point at it


@dataclass(frozen=True)
class Attr:
    """One attribute of an op as the language spells it.

    kind: int | float | bool | pair | pad | enum | ints | axis
      pair  accepts 3, 3x3 or (3, 3) and gives (3, 3)
      pad   like pair, or `same`
      enum  one of `choices`, written as a bare name
      ints  a tuple of ints (several positional values collect into it)
      axis  an int axis counted after the batch dimension may be negative; kept as written
    """
    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple = ()
    doc: str = ""

    @property
    def required(self):
        return self.default is REQUIRED


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple
    init: str = "he"        # he | xavier | zeros | ones | const:<v> | uniform_fan_in | normal:<std>
    trainable: bool = True  # False for buffers such as batchnorm running statistics
    fan_in: int = 0         # for he / xavier / uniform_fan_in
    fan_out: int = 0

    @property
    def size(self):
        return math.prod(self.shape)


class OpDef:
    """Base class of every op. Subclasses set the class attributes and override the rules."""
    name: str = ""
    family: str = ""
    attrs: tuple = ()
    min_inputs: int = 1
    max_inputs: int | None = 1          # None: any number
    doc: str = ""
    is_loss: bool = False
    # Facts the runtime reads off the op, so that no module keeps a list of op names:
    classifies: bool = False    # a loss of class scores (axis `class_axis`) against integer labels: accuracy applies
    relu_like: bool = False     # an activation after which He initialisation suits the layer feeding it (else Xavier)
    init_looks_through: bool = False    # that look for a relu-like activation continues past this op
    #                                     (batchnorm, dropout, pooling, reshapes: they keep its scale's role)
    mixes_batches: bool = False # inputs may lead with different axes (maps by sample N, boxes by box R: roi_pool);
    #                             other ops' shape rules see the common leading axis as "N" (elaborate.py)

    def shape(self, a: dict, ins: list[TensorType]) -> TensorType:
        raise NotImplementedError

    def params(self, a: dict, ins: list[TensorType]) -> dict[str, ParamSpec]:
        return {}

    def macs(self, a: dict, ins: list[TensorType], out: TensorType) -> int:
        """Multiply-accumulates per sample (FLOPs = 2 x MACs)."""
        return 0

    def grad_inputs(self, a: dict, ins: list[TensorType]) -> tuple:
        """Indices of inputs that receive a gradient (the backward rule's reach)."""
        return tuple(i for i, t in enumerate(ins) if t.dtype == "float32")

    def variant(self, a: dict) -> tuple[str, dict]:
        """The primitive op this call stands for and its attrs.

        One spelling in the language may be another primitive: `avgpool(global)` is
        `global_avgpool` with no attrs. May raise `ShapeError` for attrs that contradict
        the variant. The elaborator applies it before `link` and `shape`.
        """
        return self.name, a

    def link(self, a: dict, inputs: list[str], graph) -> tuple[dict, list[str]]:
        """Resolve inputs that stand for other nodes; returns the attrs and the inputs read.

        `graph` is the op graph so far (a networkx.DiGraph whose node attributes are op,
        attrs, inputs, type, ...). `maxunpool(p1)` names a max-pool's output: its link takes
        that pool's window attrs and reads the pool's own input instead. May raise `ShapeError`.
        """
        return a, inputs

    def key_attrs(self, a: dict) -> str:
        """The attributes worth reading in a diagram's box (`3x3 /2, 64` for a conv); "" for none."""
        return ""


def pair_text(p) -> str:
    """`2` for (2, 2), `2x3` otherwise."""
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def window_text(a) -> str:
    """`3x3 /2`: a window's kernel, then its stride where it is not 1."""
    text = f"{a['kernel'][0]}x{a['kernel'][1]}"
    if tuple(a["stride"]) != (1, 1):
        text += f" /{pair_text(a['stride'])}"
    return text


def axis_text(a) -> str:
    """`axis 2` where the axis is not the default 1."""
    return f"axis {a['axis']}" if a["axis"] != 1 else ""


def register(cls):
    op = cls()
    if op.name in OPS:
        raise RuntimeError(f"op {op.name!r} registered twice")
    OPS[op.name] = op
    return cls


# ---- helpers shared by shape rules -------------------------------------------------------

def need_rank(t: TensorType, ranks, what="input", layout=""):
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if t.rank not in ranks:
        want = " or ".join(f"{r}-d" for r in ranks)
        raise ShapeError(f"expected a {want} {what}" + (f" {layout}" if layout else "") + f", found {t.rank}-d",
                         expected=f"{want} {layout}".strip(), found=str(t),
                         help="insert `flatten` or `reshape(...)` to change the rank" if t.rank > 2 else "")


def need_float(t: TensorType, what="input"):
    if t.dtype != "float32":
        raise ShapeError(f"expected a float {what}, found integers {t}",
                         expected="float tensor", found=str(t),
                         help="integer ids go through `embed(vocab, dim)` first")


def fixed(d, what):
    """A dimension that must be a number for this op's arithmetic."""
    if not isinstance(d, int):
        raise ShapeError(f"{what} must have a fixed size, found symbolic `{d}`",
                         help="give the dimension a number in the input declaration")
    return d


def window_out(size, k, s, p, dil=1, what="spatial size"):
    """Output length of a strided window (floor mode), with the errors users actually hit."""
    size = fixed(size, what)
    span = dil * (k - 1) + 1
    if size + 2 * p < span:
        raise ShapeError(f"kernel larger than the padded input: {what} {size} + 2x{p} padding < kernel extent {span}",
                         expected=f"{what} + 2*pad >= {span}", found=f"{size} (padded {size + 2 * p})",
                         help="use a smaller kernel, more padding, or remove a downsampling step before this",
                         arg="kernel")
    return (size + 2 * p - span) // s + 1


def resolve_same_pad(k, dil, s, what="kernel"):
    """`pad = same` for stride 1: symmetric padding that keeps the size; odd extents only."""
    span = dil * (k - 1)
    if span % 2:
        raise ShapeError(f"`pad = same` needs an odd kernel extent, found {k} (dilation {dil})",
                         help="use an odd kernel, or give the padding explicitly", arg="pad")
    if s != 1:
        raise ShapeError("`pad = same` is defined for stride 1 only", found=f"stride {s}",
                         help="give the padding explicitly (e.g. pad = k // 2)", arg="pad")
    return span // 2
