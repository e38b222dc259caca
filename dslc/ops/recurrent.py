"""Sequences: embed, and the recurrent layers rnn (tanh), lstm, gru.
Kernels: runtime/{cpu,cuda}/recurrent.py.

Sequences are batch first, [N, T, F]; the length T may be symbolic and passes through.
Parameters follow torch's names, layouts, gate order (LSTM i, f, g, o; GRU r, z, n) and
initialisation: every recurrent weight and bias is U(-1/sqrt(H), 1/sqrt(H)) (`uniform_fan_in`
with fan_in = H). MACs count the recurrent layers' matmuls, not the gates' elementwise work;
embed is a lookup and counts none.

Initial states: `rnn`/`gru` take an optional second input h0 and `lstm` an optional second
and third, h0 and c0 (`x -> lstm(h0, c0, hidden = 256)`), each [N, layers, H] (torch's
[layers, N, H] batch first) or [N, H] for one layer; a missing one is zero (an LSTM may take
h0 alone: c0 is then zero). Gradients flow into them.

`reverse = true` runs every layer from the last step to the first (torch has no such flag: it
is flip(time) -> layer -> flip(time)); the states stay aligned with their steps, and
`sequence = false` returns the state after step 0, the last one computed.

`bidirectional = true` is torch's: each layer runs forward and backward in time (the backward
direction's parameters are named with a `_reverse` suffix, weight_ih_l0_reverse ...), its
states [N, T, 2H] are the two directions' concatenated [forward, backward] on the feature
axis, and the next layer reads those; `sequence = false` returns step T-1 of that (torch's
output[:, -1]). Initial states are then [N, 2 * layers, H], index 2l + d for layer l and
direction d.

`dropout = p` is torch's: in training, each layer's states but the last layer's are zeroed
elementwise with probability p and the kept ones scaled by 1/(1-p) before the next layer reads
them (drawn from the run's seeded stream, as `dropout` draws); in evaluation nothing is dropped.
"""
from __future__ import annotations

from .conv import _check_positive
from .registry import Attr, OpDef, ParamSpec, ShapeError, TensorType, fixed, need_float, need_rank, register


@register
class Embed(OpDef):
    name, family = "embed", "recurrent"
    attrs = (Attr("vocab", "int", doc="number of distinct ids, 0 .. vocab-1"),
             Attr("dim", "int", doc="length of each id's vector"))
    doc = "looks up a learned vector per integer id: int [N, T] -> [N, T, dim]"

    def key_attrs(self, a):
        return f"{a['vocab']} → {a['dim']}"

    def shape(self, a, ins):
        (ids,) = ins
        if ids.dtype != "int64":
            raise ShapeError(f"embed takes integer ids, found a float tensor {ids}",
                             expected="int [N, T]", found=str(ids),
                             help="declare the input as `int[T]`; a float sequence goes straight to a recurrent layer")
        need_rank(ids, 2, "id sequence", layout="[N, T]")
        _check_positive(a, ("vocab", "dim"))
        return TensorType(("N", ids.shape[1], a["dim"]))

    def params(self, a, ins):
        return {"weight": ParamSpec((a["vocab"], a["dim"]), "normal:1.0")}


class _Recurrent(OpDef):
    """A stack of `layers` recurrent layers over [N, T, F]; subclasses set the gate count."""
    family = "recurrent"
    attrs = (Attr("hidden", "int", doc="state size H"),
             Attr("layers", "int", 1, doc="stacked layers, each reading the previous one's states"),
             Attr("sequence", "bool", True, doc="true: every step's state [N, T, H]; false: the last [N, H]"),
             Attr("reverse", "bool", False, doc="true: process the steps from last to first"),
             Attr("bidirectional", "bool", False,
                  doc="true: both directions per layer, states concatenated [forward, backward]"),
             Attr("dropout", "float", 0.0,
                  doc="probability of zeroing each state a layer passes to the next, in training"))
    gates = 1   # G: each weight stacks G blocks of H rows
    states = ("h0",)        # the optional initial-state inputs after the sequence
    max_inputs = 2

    def key_attrs(self, a):
        return f"{a['hidden']}" + (f", {a['layers']} layers" if a["layers"] > 1 else "") + \
            (", reversed" if a.get("reverse") else "") + (", bidirectional" if a.get("bidirectional") else "")

    @staticmethod
    def directions(a):
        return 2 if a.get("bidirectional") else 1

    def shape(self, a, ins):
        x = ins[0]
        need_float(x)
        need_rank(x, 3, "sequence", layout="[N, T, F]")
        fixed(x.shape[2], f"{self.name}'s input features (the last axis of [N, T, F])")
        _check_positive(a, ("hidden", "layers"))
        p = a.get("dropout", 0.0)
        if not 0.0 <= p <= 1.0:
            raise ShapeError(f"`{self.name}` dropout must be in [0, 1], found {p:g}", arg="dropout",
                             expected="0 <= dropout <= 1", found=f"{p:g}",
                             help="dropout is the probability of zeroing each state passed between layers")
        if p > 0 and a["layers"] == 1:
            raise ShapeError(f"`{self.name}` dropout acts between stacked layers, and there is one layer",
                             arg="dropout", help="stack layers (`layers = 2`) or drop `dropout`; "
                                                 "a `dropout(p)` after the layer drops its output")
        if a.get("bidirectional") and a.get("reverse"):
            raise ShapeError(f"`{self.name}` with bidirectional = true runs both directions already",
                             arg="reverse", help="drop `reverse = true`")
        for name, state in zip(self.states, ins[1:]):
            self._check_state(name, state, a)
        width = self.directions(a) * a["hidden"]
        if a["sequence"]:
            return TensorType(("N", x.shape[1], width))
        return TensorType(("N", width))

    def _check_state(self, name, state, a):
        h, layers = a["hidden"], a["layers"] * self.directions(a)
        want = f"[N, {h}]" if layers == 1 else f"[N, {layers}, {h}]"
        written = f"`x -> {self.name}({', '.join(self.states[:self.states.index(name) + 1])}, hidden = {h}"
        written += f", layers = {a['layers']}" if a["layers"] > 1 else ""
        written += ", bidirectional = true)`" if a.get("bidirectional") else ")`"
        if state.dtype != "float32":
            raise ShapeError(f"`{self.name}`'s initial state {name} must be a float tensor, found {state}",
                             expected=want, found=str(state), help=f"pass a float {want} tensor: {written}")
        shape = tuple(state.shape[1:])
        if state.shape[0] == "N" and (shape == (layers, h) or (layers == 1 and shape == (h,))):
            return
        extra = "" if layers == 1 else \
            f"; {layers} layer directions take one state each, [N, 2 * layers, hidden] (torch's h0 batch first)" \
            if a.get("bidirectional") else \
            f"; a stack of {layers} layers takes one state per layer, [N, layers, hidden] (torch's h0 batch first)"
        raise ShapeError(f"`{self.name}`'s initial state {name} must be {want}, found {state}{extra}",
                         expected=want, found=str(state),
                         help=f"{name} is the state each layer starts from, one [{h}] vector per sample "
                              f"and layer: {written}")

    def params(self, a, ins):
        h, rows = a["hidden"], self.gates * a["hidden"]
        p = {}
        for layer in range(a["layers"]):
            inputs = ins[0].shape[2] if layer == 0 else self.directions(a) * h
            for suffix in ("", "_reverse")[:self.directions(a)]:
                p[f"weight_ih_l{layer}{suffix}"] = ParamSpec((rows, inputs), "uniform_fan_in", fan_in=h)
                p[f"weight_hh_l{layer}{suffix}"] = ParamSpec((rows, h), "uniform_fan_in", fan_in=h)
                p[f"bias_ih_l{layer}{suffix}"] = ParamSpec((rows,), "uniform_fan_in", fan_in=h)
                p[f"bias_hh_l{layer}{suffix}"] = ParamSpec((rows,), "uniform_fan_in", fan_in=h)
        return p

    def macs(self, a, ins, out):
        """G*H x (F + H) per step per layer; None when the length T is symbolic."""
        steps, features = ins[0].shape[1], ins[0].shape[2]
        if not isinstance(steps, int):
            return None
        h, rows, d = a["hidden"], self.gates * a["hidden"], self.directions(a)
        per_step = sum(rows * ((features if layer == 0 else d * h) + h) for layer in range(a["layers"]))
        return steps * d * per_step


@register
class Rnn(_Recurrent):
    name, gates = "rnn", 1
    doc = "Elman recurrent layer(s), h' = tanh(W_ih x + b_ih + W_hh h + b_hh)"


@register
class Lstm(_Recurrent):
    name, gates = "lstm", 4
    states, max_inputs = ("h0", "c0"), 3
    doc = "long short-term memory layer(s), torch gate order i, f, g, o"


@register
class Gru(_Recurrent):
    name, gates = "gru", 3
    doc = "gated recurrent unit layer(s), torch gate order r, z, n"
