"""Exact accounting of a checked network: per-layer table and totals, as text or JSON.

Units: MACs are multiply-accumulates per sample; FLOPs = 2 x MACs. Memory figures assume
float32 (4 bytes) for activations and parameters; activation memory is the sum of every
node's output per sample (what training keeps for the backward pass, before any reuse).
"""
from __future__ import annotations

from .graph import Network


def _fmt_shape(t):
    return str(t) if t.shape else "scalar"


def layers(net: Network) -> list[dict]:
    return [{"name": n.name, "op": n.op, "shape": list(n.type.shape), "dtype": n.type.dtype,
             "params": n.params_count, "buffers": n.buffers_count, "macs": n.macs,
             "inputs": list(n.inputs), **({"shares": n.shares} if n.shares else {}),
             "attrs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in n.attrs.items()},
             "line": n.line}
            for n in net.nodes()]


def totals(net: Network, frozen=()) -> dict:
    """Parameters are what an optimizer could train (torch's `parameters()`); buffers such as batchnorm
    running statistics are counted apart. MACs are None when they scale with an unbound symbolic
    dimension (a sequence length T): compile with `--set T=...` for an exact count."""
    params = buffers = frozen_params = macs = act = 0
    symbolic = False
    for n in net.nodes():
        # a shared instance applied again uses its first application's parameters: counted there
        for k, p in ({} if n.shares else n.params).items():
            if p.trainable:
                params += p.size
                if any(f"{n.name}.{k}" == f or f"{n.name}.{k}".startswith(f + ".") for f in frozen):
                    frozen_params += p.size
            else:
                buffers += p.size
        if n.macs is None:
            symbolic = True
        else:
            macs += n.macs
        if not n.is_input and n.type.shape:
            e = n.type.per_sample_elements()
            symbolic |= e is None
            act += (e or 0) * 4
    return {"parameters": params, "trainable_parameters": params - frozen_params, "buffers": buffers,
            "macs": None if symbolic else macs, "flops": None if symbolic else 2 * macs,
            "activation_bytes_per_sample": None if symbolic else act, "parameter_bytes": (params + buffers) * 4,
            "symbolic_dims": sorted(k for k, v in net.symbols.items() if v is None)}


def to_json(net: Network) -> dict:
    t = totals(net)
    return {
        "network": net.name,
        "source": net.source_path,
        **t,
        "units": {"macs": "multiply-accumulates per sample", "flops": "2 x macs per sample",
                  "activation_bytes_per_sample": "float32 bytes of every layer output for one sample"},
        "inputs": [{"name": i, "shape": list(net.node(i).type.shape), "dtype": net.node(i).type.dtype}
                   for i in net.inputs],
        "outputs": [{"name": net.tensor_name(o), "node": o, "shape": list(net.node(o).type.shape)}
                    for o in net.outputs],
        "loss": net.loss,
        "params": {k: v for k, v in net.params.items()},
        "symbols": {k: v for k, v in net.symbols.items()},
        "train": {k: _jsonable(v) for k, v in net.train.items()},
        "layers": layers(net),
    }


def _jsonable(v):
    if isinstance(v, tuple) and v and v[0] == "call":
        return {"name": v[1], "args": list(v[2]), "kwargs": {k: _jsonable(x) for k, x in v[3].items()}}
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def human(n: float, unit="") -> str:
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suf}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def human_bytes(n: int) -> str:
    for div, suf in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {suf}"
    return f"{n} B"


def to_text(net: Network) -> str:
    rows = [r for r in layers(net)]
    head = ("name", "op", "output shape", "params", "MACs")
    table = [head]
    for r in rows:
        shape = "[" + ", ".join(str(d) for d in r["shape"]) + "]" if r["shape"] else "scalar"
        if r["dtype"] == "int64":
            shape = "int" + shape
        macs = "per T" if r["macs"] is None else f"{r['macs']:,}" if r["macs"] else "-"
        params = "shared" if r.get("shares") else f"{r['params']:,}" if r["params"] else "-"
        table.append((r["name"], r["op"], shape, params, macs))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = [f"network {net.name}" + (f"  ({net.source_path})" if net.source_path else "")]
    sep = "  "
    def fmt(row):
        return sep.join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    lines.append(fmt(head))
    lines.append(sep.join("-" * w for w in widths))
    lines += [fmt(r) for r in table[1:]]
    lines.append(sep.join("-" * w for w in widths))
    t = totals(net)
    lines += [
        f"parameters:             {t['parameters']:,}",
        f"trainable parameters:   {t['trainable_parameters']:,}",
        f"buffers:                {t['buffers']:,} (batchnorm running statistics; not trained)",
    ]
    if t["macs"] is None:
        dims = ", ".join(t["symbolic_dims"])
        lines.append(f"MACs, FLOPs, activations: scale with {dims}; compile with `--set {t['symbolic_dims'][0]}=...` "
                     "for exact counts")
    else:
        lines += [
            f"MACs per sample:        {t['macs']:,}  ({human(t['macs'])})",
            f"FLOPs per sample:       {t['flops']:,}  ({human(t['flops'])}; FLOPs = 2 x MACs)",
            f"activations per sample: {human_bytes(t['activation_bytes_per_sample'])} (float32, all layer outputs)",
        ]
    lines.append(f"parameter memory:       {human_bytes(t['parameter_bytes'])} (float32, buffers included)")
    ins = ", ".join(f"{i}: {_fmt_shape(net.node(i).type)}" for i in net.inputs)
    outs = ", ".join(f"{net.tensor_name(o)} ({o}): {_fmt_shape(net.node(o).type)}" for o in net.outputs)
    lines.append(f"inputs:  {ins or '-'}")
    lines.append(f"outputs: {outs or '-'}")
    if net.loss:
        lines.append(f"loss:    {net.loss}")
    return "\n".join(lines)


def param_count(net: Network) -> int:
    return totals(net)["parameters"]


