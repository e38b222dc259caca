"""Draw a checked network with Graphviz: `dslc viz FILE -o out.svg|png|pdf|dot [--depth N]`.

The drawing reads top to bottom, like the source:
- one box per primitive op, labelled with its layer name and its op with the key attributes
  (`conv 3x3 /2, 64`), filled by op family (conv, pool, dense, ...);
- edges carry the per-sample shape of the tensor they move (`64×56×56`; no batch dimension);
- inputs and named outputs are dark terminal boxes;
- every block instance is a cluster labelled with its instance name and block kind, nested
  as the blocks nest;
- `depth=N` keeps N levels of clusters and draws every block nested deeper as one box (its
  instance name, block kind, output shape and parameter count), edges re-routed to it.

Layout is left to `dot`. If that program is missing, the DOT source is written instead,
with a message saying how to install Graphviz.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import graphviz

from .compiler import UsageError
from .graph import Network, Node
from .ops import OPS

FORMATS = ("svg", "png", "pdf", "dot")
FONT = "Helvetica"
PNG_DPI = 120           # Graphviz's 72 looks blurred on today's screens and in slides

# Pastel fill and a darker border of the same hue per op family: calm, and still tells the
# families apart when printed in greyscale (the fills differ in lightness too).
FAMILY_COLOURS = {
    "conv": ("#d3e4f5", "#4a7fb0"),
    "pool": ("#d9eed6", "#5b9652"),
    "dense": ("#fbe1c4", "#c0813a"),
    "norm": ("#e5dcf1", "#7e62a6"),
    "activation": ("#fdf2c4", "#b59a2f"),
    "tensor": ("#eceff1", "#7d8f99"),
    "recurrent": ("#d0ede8", "#3b8f85"),
    "loss": ("#f6d3d1", "#b8504c"),
    "random": ("#fbdcec", "#b0507f"),
    "elementwise": ("#fde9d9", "#c4703f"),
    "layout": ("#e3eef0", "#5f8d96"),
    "stochastic": ("#f3e5c0", "#a3833a"),
}
# a family added without a colour still draws (a test lists the families that lack one)
DEFAULT_COLOURS = ("#f2f2f2", "#8c8c8c")
TERMINAL_COLOURS = ("#37474f", "#263238")       # inputs and outputs: dark, white text
COLLAPSED_COLOURS = ("#ffffff", "#546e7a")       # a whole block drawn as one box
CLUSTER_FILLS = ("#f5f8fb", "#e9eff5")           # alternate with nesting so levels stand apart
CLUSTER_BORDER = "#b4c2cf"
EDGE_COLOUR = "#8a9ba5"
LABEL_COLOUR = "#5f7380"


def render(net: Network, output_path: str, depth: int | None = None) -> str:
    """Draw `net` into `output_path` (format from its extension); returns what was done."""
    fmt = output_format(output_path)
    graph, count = to_graphviz(net, depth)
    if fmt == "dot":
        _write(output_path, graph.source.encode())
        return f"wrote {output_path} ({count} nodes)"
    if fmt == "png":
        graph.graph_attr["dpi"] = str(PNG_DPI)
    try:
        data = graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        dot_path = str(Path(output_path).with_suffix(".dot"))
        _write(dot_path, graph.source.encode())
        return (f"Graphviz's `dot` program is not installed, so wrote the diagram's source to {dot_path} "
                f"({count} nodes) instead of {output_path}.\n"
                f"  = help: install Graphviz (`apt-get install graphviz`, `brew install graphviz`, or "
                f"https://graphviz.org/download/), then rerun this command or run "
                f"`dot -T{fmt} {dot_path} -o {output_path}`")
    _write(output_path, data)
    return f"wrote {output_path} ({count} nodes)"


def output_format(output_path: str) -> str:
    fmt = Path(output_path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(f"cannot tell which picture format `{output_path}` is meant to be",
                         help="end the output name in " + ", ".join(f".{f}" for f in FORMATS))
    return fmt


def _write(path: str, data: bytes):
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


# ---- what gets drawn -------------------------------------------------------------------------

@dataclass
class _Cluster:
    """One level of the cluster tree: the boxes drawn directly in it and its nested blocks."""
    boxes: list = field(default_factory=list)       # op node names or collapsed blocks, in order
    children: dict = field(default_factory=dict)    # (scope name, kind) -> _Cluster


def to_graphviz(net: Network, depth: int | None = None) -> tuple[graphviz.Digraph, int]:
    """The Graphviz graph of `net` and the number of boxes in it."""
    if depth is not None and depth < 0:
        raise UsageError(f"--depth {depth} is negative", help="0 draws every top-level block as one box")
    order = net.nodes()
    # Which box stands for each op node: itself, or the block it is collapsed into.
    box_of = {}
    collapsed: dict[tuple, list[str]] = {}          # (scope name, kind) -> its op nodes, in order
    root = _Cluster()
    for node in order:
        n, scope = node.name, node.scope
        shown = scope if depth is None else scope[:depth]
        if len(shown) < len(scope):
            block = scope[len(shown)]
            box_of[n] = _collapsed_id(block[0])
            if block not in collapsed:
                collapsed[block] = []
                _cluster_at(root, shown).boxes.append(block)
            collapsed[block].append(n)
        else:
            box_of[n] = n
            _cluster_at(root, shown).boxes.append(n)

    # (from box, to box, tensor), in source order; one edge per tensor leaving a collapsed block.
    edges = list(dict.fromkeys((box_of[src], box_of[node.name], src) for node in order for src in node.inputs
                               if box_of[src] != box_of[node.name]))
    outputs = {f"output/{net.tensor_name(out)}": out for out in net.outputs}
    for box, out in outputs.items():
        edges.append((box_of[out], box, out))

    dg = graphviz.Digraph(net.name, graph_attr={
        "rankdir": "TB", "splines": "spline", "nodesep": "0.22", "ranksep": "0.22",
        "fontname": FONT, "fontsize": "14", "bgcolor": "white",
        "label": net.name, "labelloc": "t", "labeljust": "l",
    }, node_attr={
        "shape": "box", "style": "rounded,filled", "fontname": FONT, "fontsize": "10",
        "height": "0.3", "margin": "0.09,0.03", "penwidth": "1",
    }, edge_attr={
        "color": EDGE_COLOUR, "arrowsize": "0.55", "fontname": FONT, "fontsize": "8",
        "fontcolor": LABEL_COLOUR, "penwidth": "1",
    })
    count = _draw_cluster(dg, root, (), net, collapsed)
    for box, out in outputs.items():
        dg.node(box, _terminal_label(net.tensor_name(out), "output"), fillcolor=TERMINAL_COLOURS[0],
                color=TERMINAL_COLOURS[1], fontcolor="white")
    for a, b, tensor in edges:
        dg.edge(a, b, label=_shape_text(net.node(tensor).type))
    return dg, count + len(outputs)


def _cluster_at(root: _Cluster, path: tuple) -> _Cluster:
    c = root
    for entry in path:
        c = c.children.setdefault(entry, _Cluster())
    return c


def _collapsed_id(scope_name: str) -> str:
    # "/" never occurs in a node name, so a block's box cannot clash with an op (the `loss`
    # block holds the terms that the `loss` node sums).
    return f"block/{scope_name}"


def _draw_cluster(dg, cluster: _Cluster, path: tuple, net: Network, collapsed: dict) -> int:
    count = 0
    for box in cluster.boxes:
        if isinstance(box, tuple):
            _draw_collapsed(dg, box, collapsed[box], net)
        else:
            _draw_op(dg, net.node(box))
        count += 1
    for entry, child in cluster.children.items():
        name, kind = entry
        fill = CLUSTER_FILLS[len(path) % 2]
        with dg.subgraph(name=f"cluster_{name}") as sub:
            sub.attr(label=_cluster_label(name, kind, path), style="rounded,filled", fillcolor=fill,
                     color=CLUSTER_BORDER, fontcolor="#3d4f5a", fontsize="10", labeljust="l", margin="8")
            count += _draw_cluster(sub, child, path + (entry,), net, collapsed)
    return count


def _cluster_label(name: str, kind: str, parent_path: tuple) -> str:
    """`layer1.0 · bottleneck`: the instance name relative to the enclosing block where that
    reads on its own (`branch2` inside `inception3a`), whole where it is a bare index; the
    kind is left out where the name already spells it (`branch2`, `conv_relu1`, `loss`)."""
    short = name
    if parent_path:
        rel = name[len(parent_path[-1][0]) + 1:]
        if not rel.isdigit():
            short = rel
    if re.fullmatch(rf"{re.escape(kind)}\d*", short):
        return f"<<B>{escape(short)}</B>>"
    return f"<<B>{escape(short)}</B> · {escape(kind)}>"


def _draw_op(dg, node: Node):
    n, op = node.name, node.op
    last = n.rsplit(".", 1)[-1]
    if node.is_input:
        dg.node(n, _terminal_label(n, "input"), fillcolor=TERMINAL_COLOURS[0], color=TERMINAL_COLOURS[1],
                fontcolor="white")
        return
    fill, border = FAMILY_COLOURS.get(OPS[op].family, DEFAULT_COLOURS)
    detail = OPS[op].key_attrs(node.attrs)
    op_line = f"{op} {detail}".strip()
    # `relu3`, `add1`: a counter the compiler made up says nothing the op does not; a layer
    # with parameters keeps its name, which is how checkpoints and --freeze refer to it.
    if not node.params and re.fullmatch(rf"{re.escape(op)}\d+", last):
        label = f"<{escape(op_line)}>"
    else:
        label = f"<<B>{escape(last)}</B>  {escape(op_line)}>"
    dg.node(n, label, fillcolor=fill, color=border)


def _draw_collapsed(dg, block: tuple, members: list[str], net: Network):
    name, kind = block
    inside = set(members)
    exits = [m for m in members if m in net.outputs or any(s not in inside for s in net.consumers(m))]
    shapes = list(dict.fromkeys(_shape_text(net.node(m).type) or "scalar" for m in exits))
    params = sum(p.size for m in members if not net.node(m).shares for p in net.node(m).params.values())
    lines = [f"<B>{escape(name)}</B>", escape(kind), escape(", ".join(shapes))]
    if params:
        lines.append(f"{params:,} params")
    dg.node(_collapsed_id(name), "<" + "<BR/>".join(lines) + ">", shape="box3d", style="filled",
            fillcolor=COLLAPSED_COLOURS[0], color=COLLAPSED_COLOURS[1], margin="0.12,0.05")


def _terminal_label(name: str, role: str) -> str:
    return f'<<B>{escape(name)}</B><BR/><FONT POINT-SIZE="9">{role}</FONT>>'


# ---- text --------------------------------------------------------------------------------

def _shape_text(t) -> str:
    """`64×56×56` for [N, 64, 56, 56]; the batch dimension is the same everywhere."""
    per_sample = "×".join(str(d) for d in t.shape[1:])
    if t.dtype == "int64":
        return f"int {per_sample}".strip()
    return per_sample
