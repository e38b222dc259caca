"""A test-only PyTorch interpreter of a checked graph: the independent reference for whole networks.

It runs the same graph with torch.nn.functional ops and the same parameter values, so
a network's loss and every parameter gradient can be compared with dslc's plan. Each op's
mapping here is written from torch's documented semantics, not from dslc's kernels.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F


def _recurrent(op, x, p, a):
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[op]
    mod = cls(x.shape[-1], a["hidden"], num_layers=a["layers"], batch_first=True)
    out, _ = torch.func.functional_call(mod, dict(p), (x,))
    return out if a["sequence"] else out[:, -1]


def _dense(x, p, a):
    if x.dim() > 3 or x.dim() == 2:
        x = x.reshape(x.shape[0], -1)
    return F.linear(x, p["weight"], p.get("bias"))


def _cross_entropy(logits, labels, a):
    axis = a.get("class_axis", 1)
    if axis != 1:
        logits = logits.movedim(axis, 1)
    return F.cross_entropy(logits, labels)


OPS = {
    "conv": lambda xs, p, a: F.conv2d(xs[0], p["weight"], p.get("bias"), a["stride"], a["pad"], a["dilation"], a["groups"]),
    "deconv": lambda xs, p, a: F.conv_transpose2d(xs[0], p["weight"], p.get("bias"), a["stride"], a["pad"],
                                                  a["output_pad"], a["groups"]),
    "maxpool": lambda xs, p, a: F.max_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], ceil_mode=a.get("ceil", False)),
    "avgpool": lambda xs, p, a: F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["pad"], ceil_mode=a.get("ceil", False),
                                             count_include_pad=True),
    "global_avgpool": lambda xs, p, a: xs[0].mean(dim=(2, 3)),
    "upsample": lambda xs, p, a: F.interpolate(xs[0], scale_factor=a["scale"], mode=a["mode"],
                                               **({"align_corners": False} if a["mode"] == "bilinear" else {})),
    "dense": lambda xs, p, a: _dense(xs[0], p, a),
    "batchnorm": lambda xs, p, a: F.batch_norm(xs[0], p["running_mean"], p["running_var"], p["weight"], p["bias"],
                                               True, a["momentum"], a["eps"]),
    "lrn": lambda xs, p, a: F.local_response_norm(xs[0], a["size"], a["alpha"], a["beta"], a["k"]),
    "dropout": lambda xs, p, a: xs[0],     # tests use p = 0 or compare in eval mode
    "relu": lambda xs, p, a: F.relu(xs[0]),
    "leaky_relu": lambda xs, p, a: F.leaky_relu(xs[0], a["slope"]),
    "elu": lambda xs, p, a: F.elu(xs[0], a["alpha"]),
    "prelu": lambda xs, p, a: F.prelu(xs[0], p["weight"]),
    "sigmoid": lambda xs, p, a: torch.sigmoid(xs[0]),
    "tanh": lambda xs, p, a: torch.tanh(xs[0]),
    "softmax": lambda xs, p, a: F.softmax(xs[0], dim=a["axis"]),
    "identity": lambda xs, p, a: xs[0],
    "flatten": lambda xs, p, a: xs[0].reshape(xs[0].shape[0], -1),
    "reshape": lambda xs, p, a: xs[0].reshape(xs[0].shape[0], *a["shape"]),
    "concat": lambda xs, p, a: torch.cat(xs, dim=a["axis"]),
    "add": lambda xs, p, a: sum(xs[1:], xs[0]),
    "embed": lambda xs, p, a: F.embedding(xs[0], p["weight"]),
    "lstm": lambda xs, p, a: _recurrent("lstm", xs[0], p, a),
    "gru": lambda xs, p, a: _recurrent("gru", xs[0], p, a),
    "rnn": lambda xs, p, a: _recurrent("rnn", xs[0], p, a),
    "cross_entropy": lambda xs, p, a: _cross_entropy(xs[0], xs[1], a),
    "mse": lambda xs, p, a: F.mse_loss(xs[0], xs[1]),
    "bce": lambda xs, p, a: F.binary_cross_entropy_with_logits(xs[0], xs[1]),
    "hinge": lambda xs, p, a: F.multi_margin_loss(xs[0], xs[1], margin=a["margin"]),
    "loss_sum": lambda xs, p, a: sum(w * x for w, x in zip(a["weights"], xs)),
}


def run_torch(net, params: dict, feeds: dict):
    """Loss, outputs and parameter gradients of `net` computed by torch (float64 for a sharp reference)."""
    g = net.graph
    tparams = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=not k.endswith(("running_mean", "running_var")))
               for k, v in params.items()}
    vals = {}
    for n in nx.topological_sort(g):
        d = net.node(n)
        if d.op == "input":
            v = feeds[n]
            vals[n] = torch.tensor(v) if v.dtype.kind == "i" else torch.tensor(v.astype(np.float64))
            continue
        p = {k: tparams[f"{n}.{k}"] for k in d.params}
        vals[n] = OPS[d.op]([vals[i] for i in d.inputs], p, d.attrs)
    loss = vals[net.loss]
    loss.backward()
    grads = {k: t.grad.numpy() for k, t in tparams.items() if t.grad is not None}
    return loss.item(), {o: vals[o].detach().numpy() for o in net.outputs}, grads
