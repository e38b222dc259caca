"""One step at a time through a recurrent sequence model, the state carried (dslc sample).

The compiled kernels run whole sequences from a zero (or given) initial state and give no final
state back, so generating text with them means re-running a window of characters for each new
one. For the networks text generation uses, a chain from an id input to the scores,

    embed -> (rnn | lstm | gru | dense | dropout | relu | tanh | sigmoid)* -> scores,

this module evaluates one position at a time with the trained parameters, in float64 NumPy,
keeping each recurrent layer's (h, c) between calls: the cost per character is one step of each
layer, and the text is continued from the state the whole text so far leaves, not a window of it.
The recurrences are torch's (the ops' documented gate orders: LSTM i, f, g, o; GRU r, z, n with
r applied to W_hn h + b_hn; Elman tanh); dropout is the identity (evaluation). A network with
anything else between the input and the scores (a bidirectional or reversed layer, which needs
the future; attention; convolutions over time) is not stepped: `unsupported` says why.
"""
from __future__ import annotations

import numpy as np

_ELEMENTWISE = {
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "dropout": lambda x: x,
    "identity": lambda x: x,
}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _chain(net, input_name: str, output: str) -> tuple[list | None, str | None]:
    """(the nodes from the input to `output`, in order, or None; why not)."""
    node = net.node(net.tensors.get(output, output))
    chain = []
    while node.op != "input":
        if len(node.inputs) != 1:
            return None, f"`{node.name}` ({node.op}) takes {len(node.inputs)} inputs"
        chain.append(node)
        node = net.node(node.inputs[0])
    if node.name != input_name:
        return None, f"the scores do not come from `{input_name}`"
    chain.reverse()
    if not chain or chain[0].op != "embed":
        return None, "the ids do not go into an embed layer first"
    for n in chain[1:]:
        if n.op in ("rnn", "lstm", "gru"):
            if n.attrs.get("bidirectional") or n.attrs.get("reverse"):
                return None, f"`{n.name}` runs backwards over the sequence, which needs the characters to come"
            if not n.attrs.get("sequence", True):
                return None, f"`{n.name}` gives only its last step"
        elif n.op != "dense" and n.op not in _ELEMENTWISE:
            return None, f"`{n.name}` is a {n.op}, which the stepper does not evaluate"
    return chain, None


def unsupported(net, input_name: str, output: str) -> str | None:
    """Why the model cannot be stepped one position at a time, or None when it can."""
    return _chain(net, input_name, output)[1]


class Stepper:
    def __init__(self, model, input_name: str, output: str):
        chain, why = _chain(model.net, input_name, output)
        if chain is None:
            raise ValueError(why)
        self.chain = chain
        params = model.params
        self.p = {n.name: {k: params[f"{n.name}.{k}"].astype(np.float64) for k in n.params} for n in chain}
        self.reset()

    def reset(self):
        """Every recurrent layer back to the zero state training windows start from."""
        self.state = {}
        for n in self.chain:
            if n.op in ("rnn", "lstm", "gru"):
                h = n.attrs["hidden"]
                self.state[n.name] = [(np.zeros(h), np.zeros(h)) for _ in range(n.attrs["layers"])]

    def step(self, token: int) -> np.ndarray:
        """The scores for the position after `token`, the state moved on by it."""
        x = None
        for n in self.chain:
            p = self.p[n.name]
            if n.op == "embed":
                x = p["weight"][int(token)]
            elif n.op == "dense":
                x = p["weight"] @ x + (p["bias"] if "bias" in p else 0.0)
            elif n.op in _ELEMENTWISE:
                x = _ELEMENTWISE[n.op](x)
            else:
                layers = self.state[n.name]
                for layer, (h, c) in enumerate(layers):
                    ih = p[f"weight_ih_l{layer}"] @ x + p[f"bias_ih_l{layer}"]
                    hh = p[f"weight_hh_l{layer}"] @ h + p[f"bias_hh_l{layer}"]
                    if n.op == "lstm":
                        i, f, g, o = np.split(ih + hh, 4)
                        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                        h = _sigmoid(o) * np.tanh(c)
                    elif n.op == "gru":
                        ir, iz, in_ = np.split(ih, 3)
                        hr, hz, hn = np.split(hh, 3)
                        r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
                        h = (1.0 - z) * np.tanh(in_ + r * hn) + z * h
                    else:
                        h = np.tanh(ih + hh)
                    layers[layer] = (h, c)
                    x = h
        return x
