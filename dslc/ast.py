"""The syntax tree: plain dataclasses, each carrying the Span it came from."""
from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import Span


# ---- expressions ----------------------------------------------------------------------
@dataclass
class Num:
    value: int | float
    span: Span


@dataclass
class Pair:               # 3x3
    value: tuple
    span: Span


@dataclass
class Str:
    value: str
    span: Span


@dataclass
class Name:
    id: str
    span: Span


@dataclass
class BinOp:
    op: str               # + - * / // %
    left: object
    right: object
    span: Span


@dataclass
class Neg:
    operand: object
    span: Span


@dataclass
class Compare:            # stride == 1, cin != cout, c < 64
    op: str               # == != < <= > >=
    left: object
    right: object
    span: Span


@dataclass
class BoolOp:             # a and b, a or b
    op: str               # "and" | "or"
    left: object
    right: object
    span: Span


@dataclass
class Not:
    operand: object
    span: Span


@dataclass
class TupleExpr:
    items: list
    span: Span


@dataclass
class CallExpr:           # adam(lr = 3e-3) in a train section
    name: str
    args: list
    span: Span


# ---- chains ---------------------------------------------------------------------------
@dataclass
class Arg:
    name: str | None      # None for positional
    value: object
    span: Span


@dataclass
class Call:               # conv(64, 3x3), relu, basic(64), image (a tensor reference)
    name: str
    args: list[Arg]
    span: Span
    name_span: Span


@dataclass
class Chain:
    terms: list
    span: Span


@dataclass
class Repeat:             # basic(64) * 2
    term: object
    count: object
    span: Span


@dataclass
class Labelled:           # layer1: basic(64) * 2
    label: str
    term: object
    span: Span


@dataclass
class Group:              # ( chain )
    chain: Chain
    span: Span


@dataclass
class Residual:
    body: list
    shortcut: object      # None (identity), "auto", or a list of statements
    span: Span
    shortcut_span: Span | None = None


@dataclass
class Branches:           # concat { a | b }, sum { a | b } or mean { a | b }
    kind: str             # "concat" | "sum" | "mean"
    branches: list[Chain]
    span: Span


@dataclass
class If:                 # if cond { body } else { body }
    cond: object
    then: list
    orelse: list | None   # None without `else`; `else if` is an else body of one If
    span: Span


# ---- statements -----------------------------------------------------------------------
@dataclass
class Param:
    name: str
    default: object | None
    span: Span


@dataclass
class Assign:
    name: str
    chain: Chain
    span: Span
    name_span: Span


@dataclass
class Import:
    path: str
    span: Span


@dataclass
class NetworkDecl:
    name: str
    params: list[Param]
    span: Span


@dataclass
class InputDecl:
    name: str
    dtype: str
    shape: list | None
    span: Span
    name_span: Span
    unbatched: Span | None = None   # `unbatched [R, 5]`: the first axis counts rows over the batch


@dataclass
class BlockDef:
    name: str
    params: list[Param]
    body: list
    span: Span
    name_span: Span


@dataclass
class OutputDecl:
    names: list[tuple[str, Span]]
    span: Span


@dataclass
class LossTerm:
    weight: float
    call: Call
    span: Span


@dataclass
class LossDecl:
    terms: list[LossTerm]
    span: Span
    name: str | None = None            # `loss d: ...`: a named objective
    name_span: Span | None = None
    trains: list = field(default_factory=list)      # (label, span) of `trains a, b`


@dataclass
class TrainItem:
    key: str
    value: object
    span: Span


@dataclass
class TrainSection:
    items: list[TrainItem]
    span: Span


@dataclass
class Program:
    source: object
    items: list = field(default_factory=list)
