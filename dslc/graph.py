"""The checked graph: the contract between the front end and everything after it.

Elaboration (dslc/elaborate.py) builds a `Network`; summary, viz, the artifact, the plan,
the model and the benchmarks read it. A `Network` holds a graph of `Node`s, one per primitive
op (or input), named hierarchically (`layer1.0.conv1`; the rules are in docs/LANGUAGE.md,
"Names"). Read nodes through their attributes:

    for node in net.nodes():            # topological, following the source where it is free to
        print(node.name, node.op, node.type, node.params_count)
    net.node("fc").inputs

Underneath, `net.graph` is a networkx.DiGraph (edges from each input to its consumer) whose
node data holds the `Node` under "node" and nothing else: graph algorithms (ancestors,
topological order) run on it, and every fact about a node is read from the `Node`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from .diagnostics import Span
from .ops import ParamSpec, ShapeError, TensorType

__all__ = ["Network", "Node", "ParamSpec", "TensorType", "add_node"]


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One primitive op of a checked network (or an input, op "input")."""
    name: str
    op: str                              # primitive op name (docs/OPS.md), or "input"
    attrs: dict                          # canonical attributes
    inputs: tuple[str, ...]              # input node names, in the op's order (edges carry none)
    type: TensorType                     # the type of the node's output
    params: dict[str, ParamSpec]         # parameter name -> spec (buffers have trainable=False)
    macs: int | None                     # multiply-accumulates per sample; None: scales with a symbolic dim
    span: Span | None                    # source span of the call that made it (None: unknown)
    scope: tuple[tuple[str, str], ...]   # (scope name, block kind) from the outermost, for clusters and --depth
    # The node whose parameters this one uses (a shared block instance applied again): its
    # `params` say their shapes, but the arrays, and their gradient, are the owner's.
    shares: str | None = None

    @property
    def is_input(self) -> bool:
        return self.op == "input"

    @property
    def line(self) -> int | None:
        return self.span.line if self.span is not None else None

    @property
    def params_count(self) -> int:
        """Trainable parameter elements the node owns (buffers such as running statistics
        excluded; a node that shares another's parameters owns none)."""
        return 0 if self.shares else sum(p.size for p in self.params.values() if p.trainable)

    @property
    def buffers_count(self) -> int:
        return 0 if self.shares else sum(p.size for p in self.params.values() if not p.trainable)

    def param_name(self, key: str) -> str:
        """The full name of parameter `key` (`disc.fc1.weight`): the owner's where it is shared."""
        return f"{self.shares or self.name}.{key}"


def add_node(g: nx.DiGraph, node: Node):
    """Add `node` and the edges from its inputs (which must be in `g` already)."""
    g.add_node(node.name, node=node)
    for i in node.inputs:
        g.add_edge(i, node.name)


@dataclass(frozen=True)
class Objective:
    """One named objective: its total's node, the labels it trains and their parameters' full names."""
    name: str
    loss: str
    trains: tuple[str, ...]
    params: tuple[str, ...]


@dataclass
class Network:
    """What elaboration produces: the graph and the facts around it."""
    name: str
    graph: nx.DiGraph
    params: dict                       # network parameter values after --set
    inputs: list[str]                  # input node names
    outputs: list[str]                 # output node names
    loss: str | None                   # node name of the total loss
    train: dict                        # train section values
    symbols: dict                      # symbolic dims -> bound value or None
    source_path: str = ""
    warnings: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)   # top-level tensor name -> node name
    source_files: list[str] = field(default_factory=list)   # every file read: the program, then its imports
    # Named objectives (`loss d: ... trains disc`), in declaration order; `loss` is then their sum,
    # and `alternate` the order the trainer steps them in per batch (docs/LANGUAGE.md).
    objectives: tuple = ()
    alternate: tuple = ()

    def node(self, name: str) -> Node:
        """The node called `name` (KeyError if there is none)."""
        return self.graph.nodes[name]["node"]

    def __contains__(self, name) -> bool:
        return name in self.graph

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def nodes(self) -> list[Node]:
        """Every node in topological order that follows the source where it is free to
        (by line, then name): the order of the summary table and of a stable drawing."""
        line = {n: (d["node"].line or 0) for n, d in self.graph.nodes(data=True)}
        order = nx.lexicographical_topological_sort(self.graph, key=lambda n: (line[n], n))
        return [self.graph.nodes[n]["node"] for n in order]

    def consumers(self, name: str) -> list[str]:
        """The nodes that read `name`'s output."""
        return list(self.graph.successors(name))

    def tensor_name(self, node: str) -> str:
        """The name the user gave a node's output, else the node's own name."""
        for t, n in self.tensors.items():
            if n == node:
                return t
        return node


def leading_axis_as_batch(prim, in_types, inputs):
    """(input types as the shape rule sees them, the leading axis to give back or None).

    Shape rules see "N" first. Where every input leads with the same other axis (R boxes
    after roi_pool), they see it as "N" and the output leads with it again; inputs that lead
    with different axes (samples and boxes) meet only in an op with `mixes_batches`."""
    if prim.mixes_batches:
        return in_types, None
    leads = {t.shape[0] for t in in_types if t.rank}
    if leads <= {"N"}:
        return in_types, None
    if len(leads) > 1:
        rows = ", ".join(f"`{i}` leads with {t.shape[0]} {t}" for i, t in zip(inputs, in_types) if t.rank)
        raise ShapeError(f"{prim.name} mixes tensors counted differently: {rows}",
                         expected="inputs whose first axes count the same rows",
                         found=", ".join(str(t) for t in in_types),
                         help="a tensor counted by sample (N) meets one counted by box (R) only in "
                              "roi_pool or roi_align")
    (lead,) = leads
    return [TensorType(("N", *t.shape[1:]), t.dtype) if t.rank else t for t in in_types], lead
