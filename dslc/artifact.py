"""The compiled artifact: a checked network serialized as JSON (never pickle).

`dslc compile FILE -o net.json` writes it; `load_artifact` rebuilds the Network (graph,
types, parameter specs) so the runtime can build a plan without the source file.
"""
from __future__ import annotations

import json

import networkx as nx

from .diagnostics import Source, Span
from .elaborate import Network
from .ops import ParamSpec, TensorType

FORMAT = "dslc-network"
VERSION = 1


def _span_json(s):
    return None if s is None else [s.source.path, s.line, s.col, s.end_line, s.end_col]


def _attr_json(v):
    return {"tuple": list(v)} if isinstance(v, tuple) else v


def _attr_load(v):
    return tuple(v["tuple"]) if isinstance(v, dict) and "tuple" in v else v


def to_dict(net: Network) -> dict:
    nodes = []
    for name, n in net.graph.nodes(data=True):
        nodes.append({
            "name": name, "op": n["op"], "attrs": {k: _attr_json(v) for k, v in n["attrs"].items()},
            "inputs": list(n["inputs"]), "shape": list(n["type"].shape), "dtype": n["type"].dtype,
            "params": {k: {"shape": list(p.shape), "init": p.init, "trainable": p.trainable,
                           "fan_in": p.fan_in, "fan_out": p.fan_out} for k, p in n["params"].items()},
            "macs": n["macs"], "span": _span_json(n["span"]), "scope": [list(s) for s in n["scope"]],
        })
    return {"format": FORMAT, "version": VERSION, "network": net.name, "source": net.source_path,
            "params": net.params, "inputs": net.inputs, "outputs": net.outputs, "loss": net.loss,
            "train": _train_json(net.train), "symbols": net.symbols, "tensors": net.tensors, "nodes": nodes}


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


def from_dict(d: dict) -> Network:
    if d.get("format") != FORMAT:
        raise ValueError("not a dslc compiled network (missing format marker)")
    if d.get("version", 0) > VERSION:
        raise ValueError(f"made by a newer dslc (format version {d.get('version')}, this reads {VERSION})")
    g = nx.DiGraph()
    sources = {}
    for n in d["nodes"]:
        sp = n["span"]
        span = None
        if sp is not None:
            src = sources.setdefault(sp[0], Source(sp[0], ""))
            span = Span(src, *sp[1:])
        shape = tuple(n["shape"])
        g.add_node(n["name"], op=n["op"], attrs={k: _attr_load(v) for k, v in n["attrs"].items()},
                   inputs=list(n["inputs"]), type=TensorType(shape, n["dtype"]),
                   params={k: ParamSpec(tuple(p["shape"]), p["init"], p["trainable"], p["fan_in"], p["fan_out"])
                           for k, p in n["params"].items()},
                   macs=n["macs"], span=span, scope=tuple(tuple(s) for s in n["scope"]))
    for n in d["nodes"]:
        for i in n["inputs"]:
            g.add_edge(i, n["name"])
    return Network(d["network"], g, d["params"], d["inputs"], d["outputs"], d["loss"], _train_load(d["train"]),
                   d["symbols"], d.get("source", ""), [], d.get("tensors", {}))


def save_artifact(net: Network, path: str):
    with open(path, "w") as f:
        json.dump(to_dict(net), f, indent=1)


def load_artifact(path: str) -> Network:
    with open(path) as f:
        return from_dict(json.load(f))
