"""The Python API: a compiled network with parameters, ready to run forward, backward and fit.

    net = dslc.compile("models/lenet5.net", classes=10)
    net.params["conv1.weight"]           # numpy arrays, named hierarchically
    out = net.forward(image=x)            # {"logits": array}
    net.forward(image=x, label=y, training=True); net.backward(); net.grads
    net.forward(image=x); net.backward(wrt=["image"], output="logits", index=3)   # saliency of class 3
    net.fit(x, y, epochs=3)
    net.save("lenet.ckpt"); net2 = dslc.load("lenet.ckpt")
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict

import networkx as nx
import numpy as np

from dslc.artifact import from_dict, to_dict
from dslc.compiler import compile_file
from dslc.diagnostics import did_you_mean
from dslc.ops import OPS
from dslc.summary import to_text

from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset
from .devices import get_device
from .errors import CheckpointError, RuntimeUserError
from .kernel_api import Context
from .plan import Plan
from .train import TrainConfig, Trainer
from .weights import network_params


class LoadReport:
    """What a partial parameter load matched; printed for transfer learning."""

    def __init__(self, loaded, missing, unexpected, mismatched, name_map=None, ignored=(), source=None):
        self.loaded, self.missing, self.unexpected, self.mismatched = loaded, missing, unexpected, mismatched
        self.name_map = name_map            # the torchvision NameMap the file's names went through, or None
        self.ignored = list(ignored)        # torch's batchnorm update counts: no place in dslc
        self.source = source

    def __str__(self):
        lines = [f"loaded {len(self.loaded)} tensors" + (f" from {self.source}" if self.source else "")]
        if self.name_map is not None:
            lines.append(f"names: {self.name_map.description}")
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} batchnorm update counts (num_batches_tracked)")
        if self.mismatched:
            lines.append("skipped (shape differs): " + ", ".join(f"{n} {a}->{b}" for n, a, b in self.mismatched))
        if self.missing:
            lines.append(f"kept initial values ({len(self.missing)}): " + ", ".join(self.missing[:8])
                         + (" ..." if len(self.missing) > 8 else ""))
        if self.unexpected:
            lines.append(f"not in this network ({len(self.unexpected)}): " + ", ".join(self.unexpected[:8])
                         + (" ..." if len(self.unexpected) > 8 else ""))
        return "\n".join(lines)


class Model:
    def __init__(self, net, device: str = "cpu", seed: int = 0, init: str | None = None):
        """init: "he" or "xavier" for every weight initialised by fan; default: the `train { init ... }`
        setting, else chosen per layer by the activation that follows it (He before ReLU-like, else Xavier)."""
        self.net = net
        init = init or (str(net.train["init"]) if "init" in net.train else None)
        self.device = get_device(device)
        self.frozen: set[str] = set()
        self.specs = OrderedDict()
        for n in net.graph.nodes:
            if net.node(n).shares:      # a shared instance applied again: its arrays are the owner's
                continue
            for k, p in net.node(n).params.items():
                self.specs[f"{n}.{k}"] = (n, p)
        self._host = OrderedDict((name, self._init(n, p, np.random.default_rng([seed, i]), init))
                                 for i, (name, (n, p)) in enumerate(self.specs.items()))
        self._dev = self.device.params_from_host(self._host)
        self._plans: dict = {}
        self._last = None
        self._exposed = None            # layer_outputs' with_outputs copy: (layers, Model)
        self._inputs_needed = None      # the inputs a forward without the loss needs (_needed)
        self.ctx = Context(training=False, rng=np.random.default_rng(seed))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path, overrides=None, device="cpu", seed=0):
        net, _ = compile_file(path, overrides or {})
        return cls(net, device=device, seed=seed)

    def _init(self, node, spec, rng, scheme):
        if spec.init == "zeros":
            return np.zeros(spec.shape, np.float32)
        if spec.init == "ones":
            return np.ones(spec.shape, np.float32)
        if spec.init.startswith("const:"):
            return np.full(spec.shape, float(spec.init[6:]), np.float32)
        if spec.init.startswith("normal:"):
            return (rng.standard_normal(spec.shape) * float(spec.init[7:])).astype(np.float32)
        if spec.init == "uniform_fan_in":
            b = 1.0 / math.sqrt(max(spec.fan_in, 1))
            return rng.uniform(-b, b, spec.shape).astype(np.float32)
        scheme = scheme or ("he" if self._followed_by_relu(node) else "xavier")
        if scheme == "he":
            std = math.sqrt(2.0 / max(spec.fan_in, 1))
        else:
            std = math.sqrt(2.0 / max(spec.fan_in + spec.fan_out, 1))
        return (rng.standard_normal(spec.shape) * std).astype(np.float32)

    def _followed_by_relu(self, node) -> bool:
        g = self.net.graph
        frontier = list(g.successors(node))
        for _ in range(4):                      # past batchnorm, dropout, pooling (init_looks_through)
            nxt = []
            for s in frontier:
                op = OPS[self.net.node(s).op]
                if op.relu_like:
                    return True
                if op.init_looks_through:
                    nxt += list(g.successors(s))
            frontier = nxt
        return False

    # ---- parameters ---------------------------------------------------------------------------
    @property
    def params(self) -> "OrderedDict[str, np.ndarray]":
        """Hierarchical name -> numpy array (a copy from the device when on a GPU)."""
        return self.device.params_to_host(self._dev)

    def trainable_names(self):
        return [k for k, (n, p) in self.specs.items() if p.trainable and not self._is_frozen(k)]

    def _is_frozen(self, name):
        return any(name == f or name.startswith(f + ".") for f in self.frozen)

    def freeze(self, *prefixes):
        """Stop training every parameter under these names (e.g. "layer1", "conv1.weight")."""
        for p in prefixes:
            if not any(k == p or k.startswith(p + ".") for k in self.specs):
                layers = sorted({k.rsplit(".", 1)[0] for k in self.specs})
                raise RuntimeUserError(f"nothing to freeze under `{p}`",
                                       did_you_mean(p, layers) or "names look like " + ", ".join(layers[:4]))
            self.frozen.add(p)
        self._plans.clear()

    def unfreeze(self, *prefixes):
        self.frozen -= set(prefixes) if prefixes else set(self.frozen)
        self._plans.clear()

    def load_params(self, source, strict: bool = False) -> LoadReport:
        """Load from a dict of arrays or a weights file (a dslc checkpoint, .safetensors, .npz, or .pt/.pth with
        torch installed); torchvision's names are mapped to the zoo's (runtime/torchvision_names.py).
        Unmatched names and shapes are reported, not fatal."""
        where = os.fsdecode(source) if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else None
        source, name_map, ignored, _ = network_params(source, self)
        loaded, missing, mismatched = [], [], []
        for k in self.specs:
            if k not in source:
                missing.append(k)
                continue
            v = np.asarray(source[k])
            if tuple(v.shape) != tuple(self._host[k].shape):
                mismatched.append((k, tuple(v.shape), tuple(self._host[k].shape)))
                continue
            self.set_param(k, v)
            loaded.append(k)
        unexpected = [k for k in source if k not in self.specs]
        report = LoadReport(loaded, missing, unexpected, mismatched, name_map, ignored, where)
        if strict and (missing or unexpected or mismatched):
            raise RuntimeUserError("parameters do not match this network:\n" + str(report),
                                   "load with strict=False for a partial (transfer-learning) load")
        return report

    def set_param(self, name, value):
        value = np.asarray(value, dtype=np.float32)
        self.device.from_host(value, out=self._dev[name])

    # ---- running ----------------------------------------------------------------------------
    def _bindings(self, feeds):
        """Batch size and symbolic dims (T) read off the fed arrays."""
        batch, symbols = None, {k: v for k, v in self.net.symbols.items() if v is not None}
        for name in self.net.inputs:
            if name not in feeds:
                continue
            a, t = feeds[name], self.net.node(name).type
            if a.ndim != len(t.shape):
                raise RuntimeUserError(f"input `{name}` expects {len(t.shape)} dimensions {t}, got shape {a.shape}",
                                       "the first dimension is the batch")
            for d, s in zip(t.shape, a.shape):
                if d == "N":
                    d = "__batch"
                if isinstance(d, str):
                    key = "N" if d == "__batch" else d
                    prev = batch if key == "N" else symbols.get(key)
                    if prev is not None and prev != s:
                        raise RuntimeUserError(f"input `{name}` has {key} = {s}, but another input has {prev}",
                                               "feed arrays with matching batch and sequence sizes")
                    if key == "N":
                        batch = s
                    else:
                        symbols[key] = s
                elif d != s:
                    raise RuntimeUserError(f"input `{name}` expects shape {t}, got {a.shape}",
                                           "resize the data or change the network's input declaration")
        if batch is None:
            raise RuntimeUserError("no input fed", f"pass {', '.join(self.net.inputs)}")
        return batch, symbols

    def plan(self, batch, symbols, training, with_loss=True, wrt=(), target=None):
        """The plan for these sizes (cached). wrt/target: an input-gradient plan (Plan's), which
        computes no parameter gradients."""
        key = (batch, tuple(sorted(symbols.items())), training, with_loss, frozenset(self.frozen), tuple(wrt), target)
        if key not in self._plans:
            trainable = set(self.trainable_names()) if training and not wrt else None
            self._plans[key] = Plan(self.net, self._dev, self.device, batch, symbols, training, trainable, with_loss,
                                    wrt=tuple(wrt), target=target)
        return self._plans[key]

    @property
    def last_plan(self) -> Plan | None:
        """The plan the last forward call ran (None before any): its parameter gradients after
        backward(), and its kernel calls for a per-kernel profile (Plan.kernel_calls)."""
        return self._last

    def _feeds(self, kw):
        out = {}
        for k, v in kw.items():
            if k not in self.net.inputs:
                raise RuntimeUserError(f"`{k}` is not an input of {self.net.name}",
                                       f"inputs: {', '.join(self.net.inputs)}")
            dt = np.int64 if self.net.node(k).type.dtype == "int64" else np.float32
            out[k] = np.ascontiguousarray(v, dtype=dt)
        return out

    def forward(self, training: bool = False, **inputs) -> dict:
        """Run the network on named inputs; returns {output name: array} (and "loss" when labels were fed)."""
        feeds = self._feeds(inputs)
        batch, symbols = self._bindings(feeds)
        needs_all = self.net.loss is not None and all(i in feeds for i in self.net.inputs)
        plan = self.plan(batch, symbols, training and needs_all, needs_all)
        missing = [i for i in self.net.inputs if i not in feeds and self._needed(i, needs_all)]
        if missing:
            raise RuntimeUserError(f"missing input{'s' * (len(missing) > 1)} {', '.join(missing)}",
                                   f"call forward({', '.join(f'{i}=...' for i in self.net.inputs)})")
        plan.set_inputs(feeds)
        self.ctx.training = training
        plan.forward(self.ctx)
        self._last = plan
        self._last_feeds, self._last_training = feeds, training
        out = {self.net.tensor_name(o): self.device.to_host(plan.out[o]).copy() for o in self.net.outputs}
        if needs_all:
            out["loss"] = plan.loss_value()
        return out

    def with_outputs(self, layers) -> Model:
        """This model with `layers` (node names) made outputs too, sharing its parameters (on the
        device) and its random state: forward() then returns them too, and
        backward(output=layer, ...) differentiates them (dslc inspect's picture kinds)."""
        import copy
        import dataclasses
        m = copy.copy(self)
        m.net = dataclasses.replace(self.net, outputs=list(dict.fromkeys(list(self.net.outputs) + list(layers))))
        m._plans, m._last, m._exposed, m._inputs_needed = {}, None, None, None
        return m

    def layer_outputs(self, layers, **inputs) -> dict:
        """{layer: its output (host array)} for the named inputs, in eval mode. The layers are made
        outputs (with_outputs): an output is stored unfused and kept to the end of the pass,
        whereas an inference plan fuses conv -> batchnorm -> relu into one call (the conv's own
        output is never stored) and reuses dead activations' memory. The copy, and so its plans,
        is kept for the last list of layers asked for: a caller that goes through a dataset in
        chunks builds one plan per chunk size, not one per chunk, and a caller that walks
        through many layers holds one copy's workspaces at a time, not one per layer."""
        key = tuple(layers)
        if self._exposed is None or self._exposed[0] != key:
            self._exposed = (key, self.with_outputs(layers))
        exposed = self._exposed[1]
        out = exposed.forward(training=False, **inputs)
        return {n: out[exposed.net.tensor_name(n)] for n in layers}

    def _needed(self, input_name, with_loss):
        if with_loss:
            return True
        # Asked on every forward without the labels; the graph search took ~20% of a batch-1
        # LeNet-5 inference call, so its answer is kept (the network of a Model never changes).
        if self._inputs_needed is None:
            g = self.net.graph
            self._inputs_needed = {i for i in self.net.inputs
                                   if any(i == o or i in nx.ancestors(g, o) for o in self.net.outputs)}
        return input_name in self._inputs_needed

    def backward(self, wrt=None, output: str | None = None, index: int | None = None, grad=None) -> dict:
        """Gradients after a forward pass.

        backward(): gradients of the last training forward's loss w.r.t. every trainable
        parameter; returns (and keeps in .grads) name -> array.

        backward(wrt=["image"], ...): gradients w.r.t. the named float inputs of the last
        forward, in eval mode (training=False) as in training mode; returns input name -> array
        shaped like the input. Parameters need not be trainable (frozen ones too), and no
        parameter gradient is computed. The scalar differentiated is
          * the loss (the default; the forward must have been fed the labels), or
          * output="logits" (an output's tensor name): the sum of that output over the batch
            weighted by `grad` (an array of the output's shape: d scalar / d output), or, with
            index=k, the sum of output[:, k] (class k's score for every sample: saliency
            without labels; each sample's gradient is its own when samples do not interact,
            i.e. no training-mode batchnorm), or, with neither, the sum of the output.
        wrt=None with an output given: every float input the output depends on.
        The forward is run again on the last inputs, in the last forward's mode, in a plan that
        also holds the input gradients; in training mode batchnorm's running statistics are
        left as the first forward set them (dropout draws new masks)."""
        if wrt is not None or output is not None:
            return self._input_gradients(wrt, output, index, grad)
        if index is not None or grad is not None:
            raise RuntimeUserError("backward(index=/grad=) seeds an output's gradient",
                                   "name the output too: net.backward(wrt=[...], output=\"logits\", index=k)")
        plan = self._last
        if plan is None or not plan.training:
            raise RuntimeUserError("backward() needs a forward pass with training=True and every input (labels too)",
                                   "call net.forward(training=True, image=x, label=y) first")
        plan.backward(self.ctx)
        self._grads_plan = plan
        return self.grads

    def _input_gradients(self, wrt, output, index, grad) -> dict:
        if self._last is None:
            raise RuntimeUserError("backward() needs a forward pass first", "call net.forward(image=x) first")
        g, feeds = self.net.graph, self._last_feeds
        if output is None:
            if self.net.loss is None or not all(i in feeds for i in self.net.inputs):
                raise RuntimeUserError("the gradient of the loss needs a forward pass fed every input, labels too",
                                       "feed the labels, or name an output: backward(wrt=[...], output=\"logits\", "
                                       "index=k)")
            target = self.net.loss
        else:
            names = {self.net.tensor_name(o): o for o in self.net.outputs}
            target = names.get(output, output if output in self.net.outputs else None)
            if target is None:
                raise RuntimeUserError(f"`{output}` is not an output of {self.net.name}",
                                       did_you_mean(output, list(names)) or f"outputs: {', '.join(names)}")
        ancestors = nx.ancestors(g, target)
        floats = [i for i in self.net.inputs if self.net.node(i).type.dtype == "float32" and i in ancestors]
        wrt = floats if wrt is None else [wrt] if isinstance(wrt, str) else list(wrt)
        for name in wrt:
            if name not in self.net.inputs:
                raise RuntimeUserError(f"`{name}` is not an input of {self.net.name}",
                                       did_you_mean(name, self.net.inputs) or f"inputs: {', '.join(self.net.inputs)}")
            if name not in floats:
                why = "integer inputs have no gradient" if self.net.node(name).type.dtype != "float32" else \
                    f"`{self.net.tensor_name(target)}` does not depend on it"
                raise RuntimeUserError(f"no gradient with respect to `{name}`: {why}",
                                       f"float inputs {self.net.tensor_name(target)} depends on: "
                                       + (", ".join(floats) or "none"))
        if not wrt:
            raise RuntimeUserError("no input to differentiate with respect to", "pass wrt=[input name, ...]")
        batch, symbols = self._bindings(feeds)
        plan = self.plan(batch, symbols, True, with_loss=output is None, wrt=tuple(wrt), target=target)
        seed = None
        if output is not None:
            shape = plan.shapes[target]
            if grad is not None:
                seed = np.asarray(grad, dtype=np.float32)
                if seed.shape != shape:
                    raise RuntimeUserError(f"grad has shape {seed.shape}, but `{output}` has shape {shape}",
                                           "pass d scalar / d output, shaped like the output")
            else:
                seed = np.ones(shape, np.float32)
                if index is not None:
                    if len(shape) < 2 or not -shape[1] <= int(index) < shape[1]:
                        hint = f"index picks along axis 1: 0 to {shape[1] - 1}" if len(shape) > 1 else \
                            "the output has no class axis: pass grad= instead"
                        raise RuntimeUserError(f"index {index} is out of range for `{output}` of shape {shape}", hint)
                    seed = np.zeros(shape, np.float32)
                    seed[:, int(index)] = 1.0
        elif index is not None or grad is not None:
            raise RuntimeUserError("index=/grad= seed an output's gradient", "name the output: output=\"logits\"")
        buffers = [k for k, (_, p) in self.specs.items() if not p.trainable]
        saved = {k: self.device.to_host(self._dev[k]).copy() for k in buffers} if self._last_training else {}
        plan.set_inputs(feeds)
        self.ctx.training = self._last_training
        plan.forward(self.ctx)
        for k, v in saved.items():
            self.set_param(k, v)
        if seed is not None:
            self.device.from_host(seed, out=plan.grad[target])
        plan.backward(self.ctx)
        return OrderedDict((name, self.device.to_host(plan.grad[name]).copy()) for name in wrt)

    @property
    def grads(self) -> dict:
        plan = getattr(self, "_grads_plan", None)
        if plan is None:
            return {}
        return OrderedDict((k, self.device.to_host(v).copy()) for k, v in plan.param_grads.items())

    # ---- training ---------------------------------------------------------------------------
    def fit(self, x=None, y=None, epochs: int = 1, batch: int | None = None, lr: float | None = None,
            optimizer: str | None = None, val=None, seed: int = 0, progress: bool = True,
            data: dict | None = None, comm=None, sync_batchnorm: bool = False, **kw):
        """Train on arrays; returns the per-epoch metrics (a list of dicts).

        The data: `fit(x, y)` for a network with one data input and a label (`fit(x)` where the
        loss compares with the input itself), or one array per input, by name:
        `fit(data={"image": x, "box": b, "label": y})` or `fit(image=x, box=b, label=y)`.
        `val` likewise: an (x, y) pair or a dict by input name. Other keywords are training
        settings (TrainConfig).

        `comm`: train data-parallel over the processes of an MPI communicator (e.g.
        `from mpi4py import MPI; net.fit(x, y, comm=MPI.COMM_WORLD)`, the script started with
        `mpiexec -n K`): every process passes the same data and settings; `batch` is the global
        batch, split evenly; the result equals one process's up to float32 rounding (dropout and
        augmentation draw as one process does); batchnorm uses each process's own statistics
        unless `sync_batchnorm=True`."""
        named = {k: kw.pop(k) for k in list(kw) if k in self.net.inputs}
        if data is not None or named:
            if x is not None or y is not None:
                raise RuntimeUserError("give the data either as fit(x, y) or by input name, not both",
                                       f"e.g. fit(data={{{', '.join(repr(i) + ': ...' for i in self.net.inputs)}}})")
            train = Dataset(name="arrays", arrays={k: np.asarray(v) for k, v in {**(data or {}), **named}.items()})
        elif x is None:
            raise RuntimeUserError("fit was given no data",
                                   f"fit(x, y), or one array per input: "
                                   f"fit({', '.join(f'{i}=...' for i in self.net.inputs)})")
        else:
            train = Dataset(np.asarray(x), None if y is None else np.asarray(y), "arrays", None)
        if isinstance(val, dict):
            valid = Dataset(name="validation", arrays={k: np.asarray(v) for k, v in val.items()})
        elif val:
            valid = Dataset(np.asarray(val[0]), None if len(val) < 2 or val[1] is None else np.asarray(val[1]),
                            "validation", None)
        else:
            valid = None
        cfg = TrainConfig.from_network(self.net, epochs=epochs, batch=batch, lr=lr, optimizer=optimizer, seed=seed,
                                       **kw)
        trainer = Trainer(self, cfg, train, valid, progress=progress, comm=comm, sync_batchnorm=sync_batchnorm)
        return trainer.fit()

    def save(self, path, extra_meta: dict | None = None):


        arrays = {f"param/{k}": v for k, v in self.params.items()}
        meta = {"kind": "dslc-model", "network": json.dumps(to_dict(self.net)), **(extra_meta or {})}
        save_checkpoint(path, arrays, meta)

    @classmethod
    def load(cls, path, device="cpu"):


        arrays, meta = load_checkpoint(path)
        if meta.get("kind") != "dslc-model" or "network" not in meta:
            raise CheckpointError(f"{path} holds parameters but not a network",
                                  "load it into a compiled network with net.load_params(path)")
        m = cls(from_dict(json.loads(meta["network"])), device=device)
        m.load_params({k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}, strict=True)
        return m

    def summary(self) -> str:
        return to_text(self.net)
