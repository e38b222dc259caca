"""The compiled artifact: a checked network serialized as JSON (never pickle).

`dslc compile FILE -o net.json` writes it. Everything that takes a .net file takes the
artifact too: `dslc run net.json --data ...`, `dslc compile net.json`, `dslc.load("net.json")`,
`dslc.compile_file("net.json")` (compile_file recognises it by its content, see `is_artifact`).
Models saved with `Model.save` embed the same JSON.

Loading checks the file as the compiler checked the source: every node's op must be known,
its inputs defined before it, and its output type, parameters and MACs are recomputed from its
op's rules and compared with what the file says, so an edited or foreign file is refused with
a message (ArtifactError) instead of reaching the runtime.
"""
from __future__ import annotations

import dataclasses
import json
import math

import networkx as nx

from .diagnostics import Source, Span
from .elaborate import MAX_NODES, MAX_PARAMS, MAX_TENSOR_BYTES
from .graph import Network, Node, Objective, add_node, leading_axis_as_batch
from .ops import OPS, ParamSpec, ShapeError, TensorType

FORMAT = "dslc-network"
VERSION = 1


class ArtifactError(ValueError):
    """A file that is not a compiled dslc network, or one that does not check."""

    def __init__(self, message, help=""):
        super().__init__(message)
        self.message, self.help = message, help


def is_artifact(path: str, text: str | None = None) -> bool:
    """Whether a file holds a compiled network rather than a .net program: it is named .json,
    or its text starts with `{` (which no program does)."""
    if str(path).endswith(".json"):
        return True
    if text is not None:
        return text.lstrip().startswith("{")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except (OSError, ValueError):
        return False
    return head.lstrip().startswith(b"{")


def _span_json(s):
    return None if s is None else [s.source.path, s.line, s.col, s.end_line, s.end_col]


def _attr_json(v):
    return {"tuple": list(v)} if isinstance(v, tuple) else v


def _attr_load(v):
    return tuple(v["tuple"]) if isinstance(v, dict) and "tuple" in v else v


def to_dict(net: Network) -> dict:
    nodes = []
    # Insertion order, not net.nodes(): the runtime initialises parameters in the graph's
    # order, so a loaded artifact starts from the same values as its source.
    for name in net.graph:
        n = net.node(name)
        nodes.append({
            "name": n.name, "op": n.op, "attrs": {k: _attr_json(v) for k, v in n.attrs.items()},
            "inputs": list(n.inputs), "shape": list(n.type.shape), "dtype": n.type.dtype,
            "params": {k: {"shape": list(p.shape), "init": p.init, "trainable": p.trainable,
                           "fan_in": p.fan_in, "fan_out": p.fan_out} for k, p in n.params.items()},
            "macs": n.macs, "span": _span_json(n.span), "scope": [list(s) for s in n.scope],
            **({"shares": n.shares} if n.shares else {}),
        })
    return {"format": FORMAT, "version": VERSION, "network": net.name, "source": net.source_path,
            "params": net.params, "inputs": net.inputs, "outputs": net.outputs, "loss": net.loss,
            "train": _train_json(net.train), "symbols": net.symbols, "tensors": net.tensors, "nodes": nodes,
            **({"objectives": [{"name": o.name, "loss": o.loss, "trains": list(o.trains), "params": list(o.params)}
                               for o in net.objectives], "alternate": list(net.alternate)} if net.objectives else {})}


def _train_json(train):
    def conv(v):
        if isinstance(v, tuple) and v and v[0] == "call":
            return {"call": v[1], "args": [conv(x) for x in v[2]], "kwargs": {k: conv(x) for k, x in v[3].items()}}
        if isinstance(v, tuple):
            return {"tuple": [conv(x) for x in v]}
        return v
    return {k: conv(v) for k, v in train.items()}


def _train_load(train):
    def conv(v):
        if isinstance(v, dict) and "call" in v:
            return ("call", v["call"], tuple(conv(x) for x in v["args"]), {k: conv(x) for k, x in v["kwargs"].items()})
        if isinstance(v, dict) and "tuple" in v:
            return tuple(conv(x) for x in v["tuple"])
        return v
    return {k: conv(v) for k, v in train.items()}


_NOT_OURS = "write one with `dslc compile FILE.net -o net.json`, or pass the .net file itself"


def from_dict(d) -> Network:
    """The Network an artifact holds, checked (ArtifactError where it does not check)."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ArtifactError("not a dslc compiled network (JSON without the \"format\": \"dslc-network\" marker)",
                            _NOT_OURS)
    version = d.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"a compiled network without a valid format version (found {version!r})", _NOT_OURS)
    if version > VERSION:
        raise ArtifactError(f"made by a newer dslc (format version {version}; this dslc reads {VERSION})",
                            "compile the .net source again with this dslc, or upgrade dslc")
    try:
        return _load(d)
    except ArtifactError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ArtifactError(f"a damaged compiled network ({what})",
                            "compile the .net source again; artifacts are not meant to be edited") from None


def _load(d: dict) -> Network:
    entries = d["nodes"]
    if not isinstance(entries, list) or len(entries) > MAX_NODES:
        raise ArtifactError(f"a damaged compiled network (`nodes` is not a list of at most {MAX_NODES:,} nodes)")
    g = nx.DiGraph()
    sources = {}
    for e in entries:
        name, op = e["name"], e["op"]
        if not isinstance(name, str) or not name or name in g:
            raise ArtifactError(f"a damaged compiled network (node name {name!r} is empty, not text or repeated)")
        sp = e["span"]
        span = None
        if sp is not None:
            path, *where = sp
            if not isinstance(path, str) or len(where) != 4 or not all(_whole(x) for x in where):
                raise ArtifactError(f"a damaged compiled network (node `{name}` has a malformed source span)")
            span = Span(sources.setdefault(path, Source(path, "")), *where)
        scope = tuple(tuple(str(x) for x in s) for s in e["scope"])
        attrs = {str(k): _attr_load(v) for k, v in e["attrs"].items()}
        stored = TensorType(tuple(e["shape"]), e["dtype"])
        inputs = tuple(e["inputs"])
        for i in inputs:
            if i not in g:
                raise ArtifactError(f"a damaged compiled network (node `{name}` reads `{i}`, "
                                    "which is not defined before it)")
        params = {str(k): ParamSpec(tuple(p["shape"]), p["init"], p["trainable"], p["fan_in"], p["fan_out"])
                  for k, p in e["params"].items()}
        if op == "input":
            if inputs or attrs or params or not _input_type_ok(stored):
                raise ArtifactError(f"a damaged compiled network (input `{name}` is malformed: {stored})")
            node = Node(name, op, attrs, (), stored, {}, 0, span, scope)
        else:
            node = _checked(name, op, attrs, inputs, stored, params, e["macs"], span, scope, g)
        if e.get("shares") is not None:
            owner = g.nodes[e["shares"]]["node"] if isinstance(e["shares"], str) and e["shares"] in g else None
            if owner is None or owner.shares or owner.op != node.op or owner.params != node.params or not node.params:
                raise ArtifactError(f"a damaged compiled network (node `{name}` shares the parameters of "
                                    f"{e['shares']!r}, which holds none like its own before it)")
            node = dataclasses.replace(node, shares=e["shares"])
        add_node(g, node)
    for role in ("inputs", "outputs"):
        if not isinstance(d[role], list) or any(n not in g for n in d[role]):
            raise ArtifactError(f"a damaged compiled network (its {role} name nodes it does not hold)")
    if any(g.nodes[n]["node"].op != "input" for n in d["inputs"]):
        raise ArtifactError("a damaged compiled network (an input names a node that is not an input)")
    if d["loss"] is not None and d["loss"] not in g:
        raise ArtifactError(f"a damaged compiled network (its loss `{d['loss']}` is not one of its nodes)")
    tensors = d.get("tensors", {})
    if not isinstance(tensors, dict) or any(n not in g for n in tensors.values()):
        raise ArtifactError("a damaged compiled network (its tensor names point at nodes it does not hold)")
    for key in ("params", "symbols", "train"):
        if not isinstance(d[key], dict):
            raise ArtifactError(f"a damaged compiled network (`{key}` is not an object)")
    if any(not (isinstance(k, str) and k.isidentifier()) or not (v is None or (_whole(v) and v >= 1))
           for k, v in d["symbols"].items()):
        raise ArtifactError("a damaged compiled network (`symbols` holds a name or a size that is not one)")
    try:
        objectives = tuple(Objective(str(o["name"]), str(o["loss"]), tuple(map(str, o["trains"])),
                                     tuple(map(str, o["params"]))) for o in d.get("objectives", []))
        alternate = tuple(str(a) for a in d.get("alternate", []))
    except (TypeError, KeyError):
        raise ArtifactError("a damaged compiled network (its objectives are not name, loss, trains, params)") \
            from None
    if any(o.loss not in g for o in objectives) or any(a not in {o.name for o in objectives} for a in alternate):
        raise ArtifactError("a damaged compiled network (an objective names a node or objective it does not hold)")
    return Network(str(d["network"]), g, d["params"], list(d["inputs"]), list(d["outputs"]), d["loss"],
                   _train_load(d["train"]), d["symbols"], str(d.get("source", "")), [], tensors, [],
                   objectives, alternate)


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _input_type_ok(t: TensorType) -> bool:
    # the first axis is the batch `N`, or an unbatched input's own named row axis (roi boxes: `R`)
    dims = t.shape[1:]
    return (len(t.shape) >= 1 and isinstance(t.shape[0], str) and t.shape[0].isidentifier()
            and t.dtype in ("float32", "int64")
            and all((_whole(x) and x >= 1) or (isinstance(x, str) and x.isidentifier()) for x in dims)
            and math.prod(x for x in dims if _whole(x)) * 4 <= MAX_TENSOR_BYTES)


def _checked(name, op, attrs, inputs, stored, params, macs, span, scope, g) -> Node:
    """A node whose type, parameters and MACs its op's rules give from its attributes and inputs."""
    prim = OPS.get(op) if isinstance(op, str) else None
    if prim is None:
        raise ArtifactError(f"node `{name}` has op {op!r}, which this dslc does not know",
                            "compile the .net source again with this dslc")
    in_types = [g.nodes[i]["node"].type for i in inputs]
    n_in = len(in_types)
    if n_in < prim.min_inputs or (prim.max_inputs is not None and n_in > prim.max_inputs):
        raise ArtifactError(f"a damaged compiled network (node `{name}` ({op}) has {n_in} inputs)")
    a = dict(attrs)
    try:
        in_types, lead = leading_axis_as_batch(prim, in_types, inputs)
        out = prim.shape(a, in_types)
        if lead is not None and out.shape[:1] == ("N",):
            out = TensorType((lead, *out.shape[1:]), out.dtype)
        want_params = prim.params(a, in_types)
        want_macs = prim.macs(a, in_types, out)
    except ShapeError as e:
        raise ArtifactError(f"a damaged compiled network (node `{name}` ({op}) does not check: {e.message})") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise ArtifactError(f"a damaged compiled network (node `{name}` ({op}) has attributes its op does not "
                            f"accept: {type(e).__name__}: {e})") from None
    elements = out.per_sample_elements()
    if (elements or 0) * 4 > MAX_TENSOR_BYTES or any(p.size > MAX_PARAMS for p in want_params.values()):
        raise ArtifactError(f"a damaged compiled network (node `{name}` ({op}) is larger than dslc compiles)")
    if a != attrs or out != stored or want_params != params or want_macs != macs:
        raise ArtifactError(f"a damaged compiled network (node `{name}` ({op}) does not match what its op "
                            "gives for its attributes and inputs)",
                            "compile the .net source again; artifacts are not meant to be edited")
    return Node(name, op, attrs, inputs, out, want_params, want_macs, span, scope)


def to_text(net: Network) -> str:
    return json.dumps(to_dict(net), indent=1)


def from_text(text: str) -> Network:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"not JSON: {e.msg} at line {e.lineno}, column {e.colno}", _NOT_OURS) from None
    except RecursionError:
        raise ArtifactError("not a compiled network: JSON nested too deeply", _NOT_OURS) from None
    return from_dict(d)


def save_artifact(net: Network, path: str):
    text = to_text(net)      # made in full first: a failure leaves no half-written file
    with open(path, "w") as f:
        f.write(text)


def load_artifact(path: str) -> Network:
    """The checked Network in a compiled artifact; OSError and ArtifactError are the caller's to report."""
    with open(path, encoding="utf-8") as f:
        net = from_text(f.read())
    net.source_files = [path]
    return net
