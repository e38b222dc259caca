"""Lowering: a checked network -> an execution plan for one batch size on one device.

The plan holds
  * the schedule: the graph's nodes in topological order (inputs excluded);
  * the backward: the same nodes reversed, restricted to those through which a gradient
    reaches a trainable parameter; where a tensor fans out (residual adds, concat
    branches, a shared input) the consumers' contributions are accumulated;
  * a static memory plan: every activation, gradient and workspace buffer is allocated
    once, and buffers whose lifetimes do not overlap share storage (greedy interval
    allocation over the step's timeline, keyed by size and dtype);
  * one kernel object per node, found by op name for the device.

Frozen parameters get no gradient buffers, and nodes with nothing trainable upstream or
downstream of them get no backward work.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from .kernel_api import Context, NodeSpec, kernel_class

DTYPES = {"float32": np.float32, "int64": np.int64}


def concrete(shape, batch: int, symbols: dict) -> tuple:
    out = []
    for d in shape:
        if d == "N":
            out.append(batch)
        elif isinstance(d, str):
            out.append(int(symbols[d]))
        else:
            out.append(d)
    return tuple(out)


class _Arena:
    """Greedy reuse of buffers by lifetime: a buffer is handed out again once its last use has passed."""

    def __init__(self, device):
        self.device = device
        self.free: dict[tuple, list] = {}   # (shape, dtype) -> [(free_from_time, array)]
        self.allocated_bytes = 0

    def take(self, shape, dtype, start: int, end: int):
        key = (tuple(shape), np.dtype(dtype).str)
        pool = self.free.setdefault(key, [])
        for i, (free_from, arr) in enumerate(pool):
            if free_from < start:
                pool[i] = (end, arr)
                return arr
        arr = self.device.empty(shape, dtype)
        self.allocated_bytes += int(np.prod(shape)) * np.dtype(dtype).itemsize
        pool.append((end, arr))
        return arr


class Plan:
    def __init__(self, net, params: dict, device, batch: int, symbols: dict, training: bool,
                 trainable: set[str] | None = None, with_loss: bool = True):
        """params: full name -> device array (shared with the model). trainable: full param names that get grads.
        with_loss=False plans only what the outputs need (inference without labels)."""
        self.net, self.device, self.batch, self.training = net, device, batch, training
        g = net.graph
        self.symbols = dict(symbols)
        targets = list(net.outputs) + ([net.loss] if with_loss and net.loss else [])
        needed = set(targets).union(*(nx.ancestors(g, t) for t in targets)) if targets else set(g.nodes)
        self.schedule = [n for n in nx.topological_sort(g) if g.nodes[n]["op"] != "input" and n in needed]
        self.inputs = list(net.inputs)
        trainable = set() if (trainable is None or not training) else set(trainable)
        self.shapes = {n: concrete(g.nodes[n]["type"].shape, batch, symbols) for n in g.nodes
                       if n in needed or g.nodes[n]["op"] == "input"}
        self.dtypes = {n: g.nodes[n]["type"].dtype for n in g.nodes}
        self.kernels = {}
        for n in self.schedule:
            d = g.nodes[n]
            spec = NodeSpec(name=n, op=d["op"], attrs=dict(d["attrs"]),
                            in_shapes=tuple(self.shapes[i] for i in d["inputs"]),
                            in_dtypes=tuple(self.dtypes[i] for i in d["inputs"]),
                            out_shape=self.shapes[n], out_dtype=self.dtypes[n],
                            param_shapes={k: tuple(p.shape) for k, p in d["params"].items()})
            self.kernels[n] = kernel_class(device.name, d["op"])(spec)
        self.node_params = {n: {k: params[f"{n}.{k}"] for k in g.nodes[n]["params"]} for n in self.schedule}
        self.node_trainable = {n: [k for k, p in g.nodes[n]["params"].items()
                                   if p.trainable and f"{n}.{k}" in trainable] for n in self.schedule}
        self._plan_gradients()
        self._plan_memory()

    # ---- which nodes take part in backward -------------------------------------------------
    def _plan_gradients(self):
        g = self.net.graph
        has_trainable = {n for n in self.schedule if self.node_trainable[n]}
        # a node's output needs a gradient when something trainable lies upstream of it (inclusive)
        upstream = set()
        for n in self.schedule:
            if n in has_trainable or any(i in upstream for i in g.nodes[n]["inputs"]):
                upstream.add(n)
        loss = self.net.loss if self.net.loss in self.kernels else None
        reaches_loss = set(nx.ancestors(g, loss)) | {loss} if (loss and self.training) else set()
        self.grad_nodes = {n for n in upstream if n in reaches_loss and self.dtypes[n] == "float32"}
        self.backward_schedule = [n for n in reversed(self.schedule) if n in self.grad_nodes]

    # ---- static memory plan ------------------------------------------------------------------
    def _plan_memory(self):
        g, dev = self.net.graph, self.device
        F = len(self.schedule)
        t_fwd = {n: i for i, n in enumerate(self.schedule)}
        t_bwd = {n: 2 * F - 1 - t_fwd[n] for n in self.schedule}
        consumers = {n: [c for c in self.schedule if n in g.nodes[c]["inputs"]] for n in self.shapes}
        outputs = set(self.net.outputs) | ({self.net.loss} if self.net.loss in self.kernels else set())
        end = 2 * F + 1
        arena = _Arena(dev)
        self.out = {}
        for n in self.inputs:
            self.out[n] = dev.empty(self.shapes[n], DTYPES[self.dtypes[n]])
        for n in self.schedule:
            if self.training or n in outputs:
                last = end            # kept for backward and for reading metrics / NaN diagnosis
            else:
                last = max([t_fwd[c] for c in consumers[n]] + [t_fwd[n]])
            self.out[n] = arena.take(self.shapes[n], DTYPES[self.dtypes[n]], t_fwd[n], last)
        self.ws = {}
        for n in self.schedule:
            last = t_bwd[n] if n in self.grad_nodes else t_fwd[n]
            self.ws[n] = {k: arena.take(s, DTYPES.get(dt, dt) if isinstance(dt, str) else dt, t_fwd[n], last)
                          for k, (s, dt) in self.kernels[n].workspace().items()}
        # gradient of each tensor: written by its first consumer's backward, read by its own backward
        self.grad, self.scratch = {}, {}
        for n in self.backward_schedule:
            cons = [c for c in consumers[n] if c in self.grad_nodes]
            first = min((t_bwd[c] for c in cons), default=t_bwd[n])
            self.grad[n] = arena.take(self.shapes[n], np.float32, first, t_bwd[n])
            if len(cons) > 1 or any(g.nodes[c]["inputs"].count(n) > 1 for c in cons):
                self.scratch[n] = arena.take(self.shapes[n], np.float32, first, t_bwd[n])
        self.param_grads = {}
        for n in self.backward_schedule:
            for k in self.node_trainable[n]:
                self.param_grads[f"{n}.{k}"] = dev.empty(tuple(self.node_params[n][k].shape), np.float32)
        self.loss_seed = dev.empty((), np.float32)
        if self.net.loss in self.grad_nodes:
            dev.fill(self.loss_seed, 1.0)
        self.bytes = arena.allocated_bytes

    # ---- execution -----------------------------------------------------------------------------
    def set_inputs(self, feeds: dict):
        for name in self.inputs:
            if name in feeds:
                self.device.from_host(feeds[name], out=self.out[name])

    def forward(self, ctx: Context):
        g = self.net.graph
        for n in self.schedule:
            xs = [self.out[i] for i in g.nodes[n]["inputs"]]
            self.kernels[n].forward(ctx, xs, self.node_params[n], self.out[n], self.ws[n])

    def backward(self, ctx: Context):
        """Gradients of the loss w.r.t. every trainable parameter, into self.param_grads."""
        g = self.net.graph
        written = set()
        for n in self.backward_schedule:
            gout = self.loss_seed if n == self.net.loss else self.grad[n]
            inputs = g.nodes[n]["inputs"]
            gxs, pending = [], []
            for i in inputs:
                if i not in self.grad_nodes:
                    gxs.append(None)
                elif i not in written and not any(i == x for x, _ in pending):
                    gxs.append(self.grad[i])
                    pending.append((i, False))
                else:                 # a second contribution: compute aside, then add
                    gxs.append(self.scratch[i])
                    pending.append((i, True))
            gparams = {k: self.param_grads[f"{n}.{k}"] for k in self.node_trainable[n]}
            xs = [self.out[i] for i in inputs]
            if len(pending) == len(set(x for x, _ in pending)):
                self.kernels[n].backward(ctx, xs, self.node_params[n], self.out[n], gout, gxs, gparams, self.ws[n])
                for i, aside in pending:
                    if aside:
                        self.device.accumulate(self.grad[i], self.scratch[i])
                    written.add(i)
            else:
                # the same tensor feeds this node twice (e.g. add(x, x)): one scratch cannot hold both,
                # so run backward once per duplicate slot with the others pointed at throwaway buffers
                self._backward_duplicates(ctx, n, xs, gout, gxs, gparams, inputs, written)

    def _backward_duplicates(self, ctx, n, xs, gout, gxs, gparams, inputs, written):
        tmp = [self.device.empty(self.shapes[i], np.float32) if gx is not None else None
               for i, gx in zip(inputs, gxs)]
        self.kernels[n].backward(ctx, xs, self.node_params[n], self.out[n], gout, tmp, gparams, self.ws[n])
        for i, t in zip(inputs, tmp):
            if t is None:
                continue
            if i in written:
                self.device.accumulate(self.grad[i], t)
            else:
                self.device.from_host(self.device.to_host(t), out=self.grad[i]) if self.device.name != "cpu" \
                    else np.copyto(self.grad[i], t)
                written.add(i)

    def loss_value(self) -> float:
        return self.device.scalar(self.out[self.net.loss])

    def first_nonfinite(self):
        """Name of the first node (in schedule order) whose output holds NaN or infinity."""
        for n in self.schedule:
            a = self.device.to_host(self.out[n])
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                return n
        return None
