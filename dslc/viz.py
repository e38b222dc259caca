"""Draw a checked network with Graphviz: `dslc viz FILE -o out.svg|png|pdf|dot [--depth N]
[--rankdir TB|LR] [--dpi N] [--fit W:H]`.

The drawing reads top to bottom, like the source (`rankdir="LR"`: left to right):
- one box per primitive op, labelled with its layer name and its op with the key attributes
  (`conv 3x3 /2, 64`), filled by op family (conv, pool, dense, ...);
- edges carry the per-sample shape of the tensor they move (`64×56×56`; no batch dimension);
- inputs and named outputs are dark terminal boxes;
- every block instance is a cluster labelled with its instance name and block kind, nested
  as the blocks nest;
- `depth=N` keeps N levels of clusters and draws every block nested deeper as one box (its
  instance name, block kind, output shape and parameter count), edges re-routed to it;
- the branches of a `concat { }` or any fan-out keep their source order (left to right, or top
  to bottom in LR), the same in every module;
- `fit=16/9` wraps a long chain into rows (LR) or columns (TB) so that the picture's shape
  approaches that aspect ratio (width / height): a slide or a page instead of a long strip.

Layout is left to `dot`. If that program is missing, the DOT source is written instead,
with a message saying how to install Graphviz.
"""
from __future__ import annotations

import json
import math
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
DPI_RANGE = (30, 1200)
RANKDIRS = ("TB", "LR")

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
    "roi": ("#dfe7d0", "#6f8a3f"),
}
# a family added without a colour still draws (a test lists the families that lack one)
DEFAULT_COLOURS = ("#f2f2f2", "#8c8c8c")
TERMINAL_COLOURS = ("#37474f", "#263238")       # inputs and outputs: dark, white text
COLLAPSED_COLOURS = ("#ffffff", "#546e7a")       # a whole block drawn as one box
CLUSTER_FILLS = ("#f5f8fb", "#e9eff5")           # alternate with nesting so levels stand apart
CLUSTER_BORDER = "#b4c2cf"
EDGE_COLOUR = "#8a9ba5"
LABEL_COLOUR = "#5f7380"


def render(net: Network, output_path: str, depth: int | None = None, rankdir: str = "TB",
           dpi: int | None = None, fit: float | None = None) -> str:
    """Draw `net` into `output_path` (format from its extension); returns what was done.
    `dpi` sets a PNG's resolution (default 120); `fit` is a target width / height (see to_graphviz)."""
    fmt = output_format(output_path)
    if dpi is not None and not DPI_RANGE[0] <= dpi <= DPI_RANGE[1]:
        raise UsageError(f"--dpi {dpi} is outside {DPI_RANGE[0]}..{DPI_RANGE[1]}",
                         help="120 suits screens, 200-300 print and large slides")
    graph, count, note = _laid_out(net, depth, rankdir, fit)
    if fmt == "dot":
        _write(output_path, graph.source.encode())
        return f"wrote {output_path} ({count} nodes{note})"
    if fmt == "png":
        graph.graph_attr["dpi"] = str(dpi or PNG_DPI)
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
    return f"wrote {output_path} ({count} nodes{note})"


def parse_fit(text: str) -> float:
    """`16:9` (or `4:3`, `1.5`) as a width / height ratio; a usage error names the form otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:[:/x]\s*(\d+(?:\.\d+)?))?\s*", text)
    ratio = float(m[1]) / float(m[2] or 1) if m and float(m[2] or 1) > 0 else 0.0
    if not 0.05 <= ratio <= 20:
        raise UsageError(f"--fit {text} is not an aspect ratio",
                         help="give width:height, e.g. --fit 16:9 (a slide), --fit 4:3, or --fit 1:1.4 (a page)")
    return ratio


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


def to_graphviz(net: Network, depth: int | None = None, rankdir: str = "TB",
                fit: float | None = None) -> tuple[graphviz.Digraph, int]:
    """The Graphviz graph of `net` and the number of boxes in it (see _laid_out)."""
    graph, count, _ = _laid_out(net, depth, rankdir, fit)
    return graph, count


def _laid_out(net: Network, depth: int | None, rankdir: str,
              fit: float | None) -> tuple[graphviz.Digraph, int, str]:
    """The Graphviz graph of `net`, the number of boxes in it, and a note when `fit` was not met.

    `fit` (width / height) wraps the drawing into rows (LR) or columns (TB): it is laid out once
    unwrapped, cut between consecutive blocks into k pieces, with k the count whose drawing comes
    closest to `fit`; edges between pieces stop constraining the ranks, so each piece starts anew
    beside (TB) or below (LR) the previous one. Without `dot` to measure with, it is not wrapped."""
    if depth is not None and depth < 0:
        raise UsageError(f"--depth {depth} is negative", help="0 draws every top-level block as one box")
    if rankdir not in RANKDIRS:
        raise UsageError(f"--rankdir {rankdir} is not one of {', '.join(RANKDIRS)}",
                         help="TB draws top to bottom, LR left to right")
    drawing = _Drawing(net, depth)
    dg, count = drawing.build(rankdir)
    if fit is None:
        return dg, count, ""
    try:
        layout = json.loads(dg.pipe(format="json"))
        best = (_aspect_error(layout, fit), dg, 1, _aspect(layout))
        ordered = False
        # more pieces, starting a little below the estimate, until the aspect has passed `fit`
        # (each drawing shows where the cuts really fell, which the estimate cannot know)
        start = _piece_estimate(layout, rankdir, fit)
        for k in range(max(2, start - 1), min(len(drawing.boxes), 3 * start + 2, 24) + 1):
            piece_of = drawing.pieces(layout, rankdir, k)
            # dot usually stacks the pieces in the order they are declared; where it does not,
            # edges between the pieces' first boxes often put them in order; a drawing whose
            # pieces are still out of order is not used
            for tie in (False, True):
                wrapped, _ = drawing.build(rankdir, piece_of, tie_pieces=tie)
                wrapped_layout = json.loads(wrapped.pipe(format="json"))
                if _in_order(wrapped_layout, rankdir, piece_of):
                    ordered = True
                    err = _aspect_error(wrapped_layout, fit)
                    if err < best[0] - 1e-9:
                        best = (err, wrapped, max(piece_of.values()) + 1, _aspect(wrapped_layout))
                    break
            else:
                continue
            w, h = _size(wrapped_layout)
            if (w / h < fit) == (rankdir == "LR"):
                break
    except graphviz.ExecutableNotFound:
        return dg, count, ""
    _, graph, pieces, aspect = best
    if pieces == 1 and not ordered:
        return graph, count, (f"; not wrapped (width/height {aspect}): dot kept no wrapping's pieces in order; "
                              f"--depth 1 draws fewer boxes")
    if pieces == 1:
        return graph, count, f"; not wrapped: its width/height {aspect} is nearest {fit:.2f}"
    return graph, count, f"; {pieces} {'rows' if rankdir == 'LR' else 'columns'}, width/height {aspect}"


class _Drawing:
    """What gets drawn: the boxes (op nodes, collapsed blocks, outputs), the cluster tree they
    sit in and the edges between them, before Graphviz attributes."""

    def __init__(self, net: Network, depth: int | None):
        self.net = net
        order = net.nodes()
        # Which box stands for each op node: itself, or the block it is collapsed into.
        box_of = {}
        self.collapsed: dict[tuple, list[str]] = {}     # (scope name, kind) -> its op nodes, in order
        self.path_of: dict[str, tuple] = {}             # box -> the clusters it is drawn in
        self.root = _Cluster()
        for node in order:
            n, scope = node.name, node.scope
            shown = scope if depth is None else scope[:depth]
            if len(shown) < len(scope):
                block = scope[len(shown)]
                box_of[n] = _collapsed_id(block[0])
                if block not in self.collapsed:
                    self.collapsed[block] = []
                    _cluster_at(self.root, shown).boxes.append(block)
                    self.path_of[box_of[n]] = tuple(shown)
                self.collapsed[block].append(n)
            else:
                box_of[n] = n
                _cluster_at(self.root, shown).boxes.append(n)
                self.path_of[n] = tuple(shown)

        # (from box, to box, tensor), in source order; one edge per tensor leaving a collapsed block.
        self.edges = list(dict.fromkeys((box_of[src], box_of[node.name], src) for node in order
                                        for src in node.inputs if box_of[src] != box_of[node.name]))
        self.outputs = {f"output/{net.tensor_name(out)}": out for out in net.outputs}
        for box, out in self.outputs.items():
            self.edges.append((box_of[out], box, out))
            self.path_of[box] = ()
        self.boxes = list(self.path_of)

    def build(self, rankdir: str, piece_of: dict | None = None,
              tie_pieces: bool = False) -> tuple[graphviz.Digraph, int]:
        net = self.net
        dg = graphviz.Digraph(net.name, graph_attr={
            "rankdir": rankdir, "splines": "spline", "nodesep": "0.22", "ranksep": "0.22",
            "fontname": FONT, "fontsize": "14", "bgcolor": "white",
            "label": net.name, "labelloc": "t", "labeljust": "l",
            # out-edges left to right in the order they are written (source order), so the
            # branches of every concat stand in the same order in every module
            "ordering": "out", "remincross": "false", "newrank": "true",
        }, node_attr={
            "shape": "box", "style": "rounded,filled", "fontname": FONT, "fontsize": "10",
            "height": "0.3", "margin": "0.09,0.03", "penwidth": "1",
        }, edge_attr={
            "color": EDGE_COLOUR, "arrowsize": "0.55", "fontname": FONT, "fontsize": "8",
            "fontcolor": LABEL_COLOUR, "penwidth": "1",
        })
        if piece_of:
            # declared piece by piece first, so Graphviz starts from the pieces in order
            for box in sorted(self.boxes, key=lambda b: piece_of[b]):
                dg.node(box)
        count = _draw_cluster(dg, self.root, (), net, self.collapsed)
        for box, out in self.outputs.items():
            dg.node(box, _terminal_label(net.tensor_name(out), "output"), fillcolor=TERMINAL_COLOURS[0],
                    color=TERMINAL_COLOURS[1], fontcolor="white")
        for a, b, tensor in self.edges:
            attrs = {"constraint": "false"} if piece_of and piece_of[a] != piece_of[b] else {}
            dg.edge(a, b, label=_shape_text(net.node(tensor).type), **attrs)
        pairs = [(a, b) for a, b in self.sibling_order() if not piece_of or piece_of[a] == piece_of[b]]
        if piece_of and tie_pieces:
            # the first box of each piece beside the next piece's first box: the pieces in order
            firsts = list({p: box for box, p in reversed(piece_of.items())}.items())
            pairs += [(a, b) for (_, a), (_, b) in zip(sorted(firsts), sorted(firsts)[1:])]
        for a, b in pairs:
            # dot stacks a rank bottom-up in LR: the first branch goes on top when it is the head
            dg.edge(*((b, a) if rankdir == "LR" else (a, b)), style="invis", minlen="0")
        return dg, count + len(self.outputs)

    def sibling_order(self) -> list[tuple[str, str]]:
        """Invisible edges that hold parallel branches in source order: between the first boxes of
        consecutive items (boxes or nested blocks) of one cluster that are fed by the same boxes.
        They may share a rank, and dot puts an edge's tail before its head within a rank;
        `ordering=out` alone is not kept once the branches are clusters. dot's final crossing
        pass (`remincross`) rotates branches that cross nothing in any order, so it is off."""
        item_of: dict[tuple, dict[str, tuple]] = {}        # cluster path -> {box: item in it}
        for box, path in self.path_of.items():
            for i in range(len(path) + 1):
                item = ("box", box) if i == len(path) else ("block", path[i])
                item_of.setdefault(path[:i], {})[box] = item
        order = []
        for members in item_of.values():
            entry: dict[tuple, list] = {}                  # item -> its boxes, in order
            feeds: dict[tuple, set] = {}
            for box, item in members.items():
                entry.setdefault(item, []).append(box)
            for a, b, _ in self.edges:
                item = members.get(b)
                if item is not None and members.get(a) != item:
                    feeds.setdefault(item, set()).add(a)
            groups: dict[frozenset, list] = {}
            for item in entry:
                if feeds.get(item):
                    groups.setdefault(frozenset(feeds[item]), []).append(entry[item])
            for branches in groups.values():
                order += [(a[0], b[0]) for a, b in zip(branches, branches[1:])]
        return order

    def pieces(self, layout: dict, rankdir: str, k: int) -> dict:
        """Box -> piece (0..k-1): the unwrapped drawing cut across its long axis near k-1 equally
        spaced places, each cut where the fewest edges cross it (a single tensor, ideally), and
        each block kept whole unless it alone is longer than about one piece."""
        pos = _positions(layout, rankdir)
        lo = min(a for a, _ in pos.values())
        stretch = (max(b for _, b in pos.values()) - lo) / k
        extent: dict[tuple, list] = {}
        for box, path in self.path_of.items():
            for i in range(1, len(path) + 1):
                e = extent.setdefault(path[:i], [math.inf, -math.inf])
                e[0], e[1] = min(e[0], pos[box][0]), max(e[1], pos[box][1])
        # the outermost block short enough to stay in one piece, or the box on its own
        centre_of = {}
        for box, path in self.path_of.items():
            span = next((extent[path[:i]] for i in range(1, len(path) + 1)
                         if extent[path[:i]][1] - extent[path[:i]][0] <= 0.8 * stretch), pos[box])
            centre_of[box] = (span[0] + span[1]) / 2 - lo
        centres = sorted(set(centre_of.values()))
        blocks: dict[tuple, list] = {}                 # block -> the range of its boxes' centres
        for box, path in self.path_of.items():
            for i in range(1, len(path) + 1):
                r = blocks.setdefault(path[:i], [math.inf, -math.inf])
                r[0], r[1] = min(r[0], centre_of[box]), max(r[1], centre_of[box])

        def cost(cut: float, aim: float) -> float:
            # edges crossing the cut, blocks it splits, and one more for each half piece it
            # lies away from where it was aimed
            crossing = sum(min(centre_of[a], centre_of[b]) < cut < max(centre_of[a], centre_of[b])
                           for a, b, _ in self.edges)
            split = sum(lo_ < cut < hi for lo_, hi in blocks.values())
            return crossing + split + 2 * abs(cut - aim) / stretch

        # a cut between consecutive centres, near each of the k-1 places aimed at
        gaps = [((c0 + c1) / 2, c1) for c0, c1 in zip(centres, centres[1:])]
        cuts = []
        for i in range(1, k):
            aim = i * stretch
            near = [g for g in gaps if abs(g[0] - aim) <= 0.4 * stretch and (not cuts or g[1] > cuts[-1])]
            if near:
                cuts.append(min(near, key=lambda g: cost(g[0], aim))[1])
        return {box: sum(c >= cut for cut in cuts) for box, c in sorted(centre_of.items(), key=lambda bc: bc[1])}


def _positions(layout: dict, rankdir: str) -> dict:
    """Box -> (start, end) along the drawing's long axis (down for TB, right for LR), in points."""
    out = {}
    for obj in layout.get("objects", []):
        if "pos" not in obj or "nodes" in obj:
            continue
        x, y = (float(v) for v in obj["pos"].split(","))
        half = 36 * float(obj["width" if rankdir == "LR" else "height"])    # inches -> points, halved
        c = x if rankdir == "LR" else -y
        out[obj["name"]] = (c - half, c + half)
    return out


def _in_order(layout: dict, rankdir: str, piece_of: dict) -> bool:
    """Whether the pieces follow one another across the long axis, each below the one before (LR)
    or to its right (TB), judged by where their boxes lie on average."""
    where: dict[int, list] = {}
    for obj in layout.get("objects", []):
        if obj.get("name") in piece_of and "pos" in obj:
            x, y = (float(v) for v in obj["pos"].split(","))
            where.setdefault(piece_of[obj["name"]], []).append(-y if rankdir == "LR" else x)
    means = [sum(where[p]) / len(where[p]) for p in sorted(where)]
    return all(a < b for a, b in zip(means, means[1:]))


def _size(layout: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = (float(v) for v in layout["bb"].split(","))
    return x1 - x0, y1 - y0


def _aspect(layout: dict) -> str:
    w, h = _size(layout)
    return f"{w / h:.2f}"


def _aspect_error(layout: dict, fit: float) -> float:
    w, h = _size(layout)
    return abs(math.log((w / h) / fit))


def _piece_estimate(layout: dict, rankdir: str, fit: float) -> int:
    """The piece count at which k pieces of the long axis laid side by side give the aspect `fit`
    (k strips of length L/k and breadth B: aspect L/(k^2 B) for LR rows, k^2 B/L for TB columns)."""
    w, h = _size(layout)
    return max(1, round(math.sqrt(w / (h * fit)) if rankdir == "LR" else math.sqrt(fit * h / w)))


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
    last = _own_name(n)
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


def _own_name(name: str) -> str:
    """The last part of a dotted name, or from its nearest part that is not a bare index: a
    repeat's `features.0`, not `0`, so a slide shows which layer it is without its cluster."""
    parts = name.split(".")
    i = len(parts) - 1
    while i > 0 and parts[i].isdigit():
        i -= 1
    return ".".join(parts[i:])


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
