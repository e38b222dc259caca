"""Lowering: a checked network -> an execution plan for one batch size on one device.

The plan holds
  * the schedule: the graph's nodes in topological order (inputs excluded), as steps of one
    kernel call each. A kernel that can absorb the activation after it (`fuse_activation`,
    e.g. dense + relu) makes one step of the pair: it writes the activation's output and the
    pre-activation is never stored. In inference plans a conv also absorbs the eval-mode
    batchnorm after it (`fuse_inference`), then that one's activation: conv -> batchnorm ->
    relu is one call, a recurrent layer absorbs the embed that feeds it (`fuse_input`), and a
    pointwise conv the batchnorm -> relu before it (`fuse_input_chain`).
    Steps that read one tensor with kernels that say they can share their work
    (`sibling_key`, an inception module's 1x1 convs) run as one call of the first of them
    ("horizontal fusion", see _fuse_siblings);
  * the backward: the same steps reversed, restricted to those through which a gradient
    reaches a trainable parameter. Where a tensor fans out (residual adds, concat branches, a
    shared input) the first consumer in backward order writes its gradient and every later
    one writes into a buffer of its own that is then added in;
  * a static memory plan: every activation, gradient and workspace buffer is allocated once,
    and buffers whose lifetimes do not overlap share storage (greedy interval allocation over
    the step's timeline, forward then backward, by dtype and size). A forward activation
    lives until its last reader: in training that is the last backward step that reads it
    (kernels say whether their backward reads their inputs and output), so
    activations nobody reads in backward are released during forward. Two ops write no
    storage of their own: reshaping ops (`output_is_input_view`) take a view of their input,
    and in-place ops (`forward_in_place`: relu, tanh, ...) write over an input that nobody
    reads afterwards;
  * every kernel call's arguments, bound once: a step runs the kernel on preallocated arrays
    with nothing computed per step.

What a kernel may tell the plan (what its backward reads, in-place and view outputs, scratch
workspaces, the fusions it accepts, sibling groups) is declared with its safe default and
documented on the base class, runtime/kernel_api.py's `Kernel`; the plan asks every kernel
directly and tests no op by name.

The bytes a plan allocates are added up before any is allocated (`memory_needed`), and a plan
that needs more than the device can give is refused with the figure.

Frozen parameters get no gradient buffers, and nodes with nothing trainable upstream or
downstream of them get no backward work.

Input gradients (saliency, adversarial examples, class-model visualisation): a plan made with
`wrt` (float input names) gives backward work to every step on a path from those inputs to
the backward's `target` too, frozen or not, and keeps a gradient buffer per named input
(`grad[name]`, readable after backward). The target is the loss by default; it may be an
output of the network instead, whose gradient buffer (`grad[target]`) the caller fills with
the seed (d scalar / d output) before calling backward: a gradient without labels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from dslc.ops import OPS

from .errors import RuntimeUserError
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


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _gib(nbytes: int) -> str:
    gib = nbytes / 2 ** 30
    return f"{gib:.1f}" if gib >= 1 else f"{gib:.2g}"


class _Arena:
    """Storage shared by lifetime. Requests arrive in order of their first use; each gets the
    smallest free buffer of its dtype that holds it without wasting more than half (a buffer
    is free once the last use of what it held has passed), or a new one. With share=False
    every request gets a buffer of its own.

    Requests are assigned first and storage allocated after (`allocate`), so that the plan
    knows how many bytes it needs before it asks the device for any."""

    def __init__(self, share: bool = True):
        self.share = share
        self._open: dict[str, list] = {}    # dtype -> [[capacity, busy_until, buffer index]]
        self._buffers: list = []             # (capacity, dtype) per buffer
        self.allocated_bytes = 0

    def take(self, shape, dtype, start: int, end: int) -> int:
        """The index of the buffer that serves a request for `shape` used from start to end."""
        dtype = np.dtype(dtype)
        size = _size(shape)
        best = None
        for entry in self._open.setdefault(dtype.str, []):
            capacity, busy_until, _ = entry
            fits = size <= capacity <= 2 * size
            if self.share and busy_until < start and fits and (best is None or capacity < best[0]):
                best = entry
        if best is None:
            best = [size, end, len(self._buffers)]
            self._open[dtype.str].append(best)
            self._buffers.append((size, dtype))
            self.allocated_bytes += size * dtype.itemsize
        best[1] = end
        return best[2]

    def allocate(self, device) -> list:
        """One flat device array per buffer; a request's storage is `buffers[index][:size]`,
        reshaped (C-contiguous)."""
        return [device.empty((capacity,), dtype) for capacity, dtype in self._buffers]


@dataclass
class _Step:
    """One kernel call: `node`'s kernel, reading `inputs`, writing tensor `output` (the node
    itself, or the activation it absorbed)."""
    node: str
    kernel: object
    inputs: list
    output: str
    index: int                      # position on the forward timeline
    is_view: bool = False           # output is a view of the input: forward has nothing to do
    absorbed: tuple = ()            # the nodes fused into this call, in order (output: the last)
    absorbed_input: str | None = None   # the node feeding this one that its call computes too
    absorbed_input_chain: tuple = ()    # and the nodes that one absorbed (e.g. its relu)
    leader: _Step | None = None     # the step whose call computes this one's output (siblings)
    followers: list = field(default_factory=list)       # steps whose outputs this call computes too
    args: tuple = ()                # (xs, params, out, ws), bound once
    backward_args: tuple = ()       # (xs, params, out, gout, gxs, gparams, ws)
    accumulations: list = field(default_factory=list)   # (gradient, aside buffer) added after backward

    @property
    def runs(self) -> bool:
        """Whether this step calls its kernel (a view or a led sibling has nothing to do)."""
        return not self.is_view and self.leader is None

    @property
    def caller(self) -> _Step:
        """The step whose call does this one's work, in forward and in backward."""
        return self.leader or self


def _reads_input(kernel, position: int) -> bool:
    reads = kernel.backward_reads_inputs
    return reads if isinstance(reads, bool) else position in reads


class GradientObserver:
    """What Plan.backward tells as it goes (a data-parallel gradient average starts each
    bucket's allreduce as soon as its gradients are final)."""

    def after_call(self, final: list) -> None:
        """Called after each backward kernel call with the names of the parameter gradients
        that call made final (often none); the gradients' arrays may be read from now on."""


class Plan:
    def __init__(self, net, params: dict, device, batch: int, symbols: dict, training: bool,
                 trainable: set[str] | None = None, with_loss: bool = True, reuse_memory: bool = True,
                 wrt: tuple = (), target: str | None = None):
        """params: full name -> device array (shared with the model). training: the plan has a
        backward (and no inference-only fusions); whether batchnorm and dropout behave as in
        training is the Context's `training`, given per call, so a plan with a backward also
        serves eval-mode input gradients. trainable: full param names that get grads.
        with_loss=False plans only what the outputs need (inference without labels). reuse_memory=False
        gives every tensor, gradient and workspace storage of its own (no sharing, views or in-place
        writes): the reference the memory plan is tested against. wrt: float input names whose
        gradients backward computes (into grad[name]). target: the node whose gradient backward
        starts from: the loss (None), or an output of the network, seeded through grad[target]."""
        self.net, self.device, self.batch, self.training = net, device, batch, training
        self.reuse_memory = reuse_memory
        device.prepare_kernels()
        g = net.graph
        self.symbols = dict(symbols)
        targets = list(net.outputs) + ([net.loss] if with_loss and net.loss else [])
        needed = set(targets).union(*(nx.ancestors(g, t) for t in targets)) if targets else set(g.nodes)
        self.schedule = [n for n in nx.topological_sort(g) if self.net.node(n).op != "input" and n in needed]
        self.inputs = list(net.inputs)
        self.wrt = tuple(wrt) if training else ()
        self.target = target if target is not None else net.loss
        trainable = set() if (trainable is None or not training) else set(trainable)
        self.shapes = {n: concrete(self.net.node(n).type.shape, batch, symbols) for n in g.nodes
                       if n in needed or self.net.node(n).op == "input"}
        self.dtypes = {n: self.net.node(n).type.dtype for n in g.nodes}
        self.kernels = {}
        for n in self.schedule:
            d = self.net.node(n)
            spec = NodeSpec(name=n, op=d.op, attrs=dict(d.attrs),
                            in_shapes=tuple(self.shapes[i] for i in d.inputs),
                            in_dtypes=tuple(self.dtypes[i] for i in d.inputs),
                            out_shape=self.shapes[n], out_dtype=self.dtypes[n],
                            param_shapes={k: tuple(p.shape) for k, p in d.params.items()})
            self.kernels[n] = kernel_class(device.name, d.op)(spec)
        # a node that shares another's parameters (Node.shares) is bound to the owner's arrays
        self.node_params = {n: {k: params[self.net.node(n).param_name(k)] for k in self.net.node(n).params}
                            for n in self.schedule}
        self.node_trainable = {n: [k for k, p in self.net.node(n).params.items()
                                   if p.trainable and self.net.node(n).param_name(k) in trainable]
                               for n in self.schedule}
        self._plan_gradients()
        self._plan_steps()
        self._plan_memory()
        self._bind()
        self._ctx = Context(training=training)
        self._compile_helper = device.start_compile_helper(self)

    # ---- which nodes take part in backward -------------------------------------------------
    def _plan_gradients(self):
        has_trainable = {n for n in self.schedule if self.node_trainable[n]}
        # a node's output needs a gradient when something trainable, or an input whose gradient
        # is wanted, lies upstream of it (inclusive), through ops that pass gradients on: an op
        # whose OpDef.grad_inputs is empty (stop_gradient) cuts the path. (Ops that pass only
        # some, a loss's target, keep every edge here, as their kernels may still be asked.)
        through = {}                # node -> the inputs a gradient may reach through it
        for n in self.schedule:
            d = self.net.node(n)
            cut = not OPS[d.op].grad_inputs(d.attrs, [self.net.node(i).type for i in d.inputs])
            through[n] = [] if cut else list(d.inputs)
        upstream = set(self.wrt)
        for n in self.schedule:
            if n in has_trainable or any(i in upstream for i in through[n]):
                upstream.add(n)
        # and when the target's gradient reaches it, along the same edges
        target = self.target if self.target in self.kernels else None
        reaches_target = {target} if (target and self.training) else set()
        for n in reversed(self.schedule):
            if n in reaches_target:
                reaches_target.update(through[n])
        self.grad_nodes = {n for n in upstream if n in reaches_target and self.dtypes[n] == "float32"
                           and n in self.kernels}
        self.backward_schedule = [n for n in reversed(self.schedule) if n in self.grad_nodes]

    # ---- steps: fusion ---------------------------------------------------------------------------
    def _fusable(self, n, tail, consumers, op_kind):
        """The node after `tail` that `n`'s kernel absorbs, or None: `tail` (n itself, or what
        n absorbed last) must have that node as its only consumer, and be no output of the
        network (a fused node's input is never stored). op_kind "activation": a
        parameter-free node (`fuse_activation`); "parametrized": in inference plans only, a
        node with parameters (`fuse_inference`, e.g. an eval-mode batchnorm), which n's step
        then receives. The kernel says which ops it takes; the plan tests none by name."""
        if self._kept(tail) or len(consumers[tail]) != 1:
            return None
        c = consumers[tail][0]
        d = self.net.node(c)
        if tuple(d.inputs) != (tail,) or self.dtypes[c] != self.dtypes[tail]:
            return None
        if op_kind == "parametrized":
            fuse = None if self.training or not d.params else self.kernels[n].fuse_inference
        else:
            fuse = None if d.params else self.kernels[n].fuse_activation
        return c if fuse is not None and fuse(d.op, dict(d.attrs)) else None

    def _fusable_input(self, n, consumers, absorbs, chain_head, taken):
        """The call feeding n's first input that n's kernel absorbs (`fuse_input_chain`), as
        (its node, the nodes that node absorbed), or None: in inference plans only, a call of
        the schedule that takes no part in another input fusion and is absorbed by no other
        node (`taken`), whose output has n as its only consumer and is no output of the
        network. chain_head: the last node of each absorbed chain -> the node that absorbed it."""
        inputs = self.net.node(n).inputs
        if self.training or not inputs:
            return None
        p = inputs[0]
        q = chain_head.get(p, p)        # the call that writes p
        chain = absorbs.get(q, [])
        if q not in self.kernels or q in taken or consumers[p] != [n] or self._kept(p):
            return None
        nodes = [(self.net.node(c).op, dict(self.net.node(c).attrs)) for c in [q, *chain]]
        return (q, chain) if self.kernels[n].fuse_input_chain(nodes) else None

    def _kept(self, tensor) -> bool:
        """Whether `tensor` must be stored whatever reads it: an output of the network, or its loss."""
        return tensor in self.net.outputs or tensor in self._loss_tensors()

    def _loss_tensors(self) -> list:
        """The loss and the terms it sums, which the trainer reads after forward to report each."""
        if self.net.loss is None:
            return []
        node = self.net.node(self.net.loss)
        return [self.net.loss] + (list(node.inputs) if node.op == "loss_sum" else [])

    def _plan_steps(self):
        consumers = {n: [] for n in self.shapes}
        for c in self.schedule:
            for i in dict.fromkeys(self.net.node(c).inputs):
                consumers[i].append(c)
        # producer -> the nodes it absorbs, in order (one with parameters, then an activation)
        absorbs, absorbed = {}, set()
        for n in self.schedule:
            if n in absorbed:
                continue
            chain = []
            for op_kind in ("parametrized", "activation"):
                c = self._fusable(n, chain[-1] if chain else n, consumers, op_kind)
                if c is not None:
                    chain.append(c)
            if chain:
                absorbs[n] = chain
                absorbed.update(chain)
        # consumer -> the call feeding its first input that it absorbs, (node, its chain)
        # (fuse_input_chain)
        absorbs_input = {}
        chain_head = {chain[-1]: n for n, chain in absorbs.items()}
        taken = set(absorbed)           # absorbed nodes, and the consumers that absorbed an input
        for n in self.schedule:
            if n not in absorbed:
                fused_input = self._fusable_input(n, consumers, absorbs, chain_head, taken)
                if fused_input is not None:
                    absorbs_input[n] = fused_input
                    absorbed.update([fused_input[0], *fused_input[1]])
                    taken.update([n, fused_input[0], *fused_input[1]])
        self.steps: list[_Step] = []
        for n in self.schedule:
            if n in absorbed:
                continue
            chain = absorbs.get(n, [])
            output = chain[-1] if chain else n
            kernel = self.kernels[n]
            inputs = list(self.net.node(n).inputs)
            producer, producer_chain = absorbs_input.get(n, (None, []))
            if producer is not None:        # n reads what its absorbed producer reads
                inputs = list(self.net.node(producer).inputs) + inputs[1:]
            is_view = self.reuse_memory and bool(kernel.output_is_input_view) and len(inputs) == 1
            self.steps.append(_Step(n, kernel, inputs, output, len(self.steps), is_view=is_view,
                                    absorbed=tuple(chain), absorbed_input=producer,
                                    absorbed_input_chain=tuple(producer_chain)))
            # an absorbed node's parameters go with n's: "<op>.<name>" for what follows n
            # (fuse_inference), "input.<op>.<name>" for what feeds it (fuse_input_chain)
            for prefix, nodes in (("", chain), ("input.", [producer, *producer_chain] if producer else [])):
                for c in nodes:
                    self.node_params[n].update({f"{prefix}{self.net.node(c).op}.{k}": p
                                                for k, p in self.node_params[c].items()})
        self._fuse_siblings()
        self.step_of = {s.output: s for s in self.steps}
        self.backward_steps = [s for s in reversed(self.steps) if s.node in self.grad_nodes]

    def _fuse_siblings(self):
        """Horizontal fusion: steps that read the same single input with kernels of equal
        `sibling_key()` (an inception module's 1x1 convs) become one call of the first of them,
        the leader (`lead_siblings`), which computes every member's output in forward and, in
        backward, every member's parameter gradients and their summed input gradient; the
        others do nothing. Members take part in backward all or none."""
        groups = {}
        for s in self.steps:
            key = s.kernel.sibling_key()
            if key is not None and not s.is_view and len(s.inputs) == 1:
                groups.setdefault((s.inputs[0], key, s.node in self.grad_nodes), []).append(s)
        for members in groups.values():
            leader, followers = members[0], members[1:]
            if followers and leader.kernel.lead_siblings([f.kernel for f in followers]):
                leader.followers = followers
                for f in followers:
                    f.leader = leader

    # ---- static memory plan ------------------------------------------------------------------
    def _plan_memory(self):
        dev, steps = self.device, self.steps
        S = len(steps)
        keep = 2 * S                  # past the last backward step: outputs stay readable
        in_backward = {s.output for s in self.backward_steps}

        def t_bwd(step):
            return 2 * S - 1 - step.index

        def tensor_dtype(t):
            return DTYPES[self.dtypes[t]]

        # when each tensor is written and last read (a led sibling's: when its leader runs)
        start = {s.output: s.caller.index for s in steps}
        end = dict(start)
        for s in steps:
            for i in s.inputs:
                if i in end:
                    end[i] = max(end[i], s.index)
        for s in self.backward_steps:
            if s.kernel.backward_reads_out:
                end[s.output] = t_bwd(s.caller)
            for k, i in enumerate(s.inputs):
                if i in end and _reads_input(s.kernel, k):
                    end[i] = max(end[i], t_bwd(s.caller))
        for t in list(self.net.outputs) + self._loss_tensors():
            if t in end:
                end[t] = keep

        # storage groups: a view or an in-place output joins its input's storage
        root = {t: t for t in start}
        for t in self.inputs:
            root[t] = t
        members = {t: [t] for t in root}
        group_end = dict(end)

        def join(t, into):
            r = root[into]
            root[t] = r
            members[r].append(t)
            del members[t]
            if r in group_end:
                group_end[r] = max(group_end[r], end[t])

        for s in steps:
            x = s.inputs[0] if s.inputs else None
            if not self.reuse_memory:
                continue
            if s.is_view:
                join(s.output, x)
            elif (s.kernel.forward_in_place and x in root and root[x] not in self.inputs
                  and group_end[root[x]] == s.index
                  and _size(self.shapes[x]) == _size(self.shapes[s.output])
                  and self.dtypes[x] == self.dtypes[s.output]):
                join(s.output, x)

        # every request, then served in order of first use
        requests = []     # (start, end, shape, dtype, where to put it)
        for r, ts in members.items():
            if r in self.inputs:
                continue            # the input's own storage (below)
            first = min(start[t] for t in ts)
            requests.append((first, group_end[r], self.shapes[r], tensor_dtype(r), ("group", r)))
        # workspaces: a buffer the kernel keeps from forward to backward lives that long; a
        # scratch buffer (`scratch_workspace`) lives one call, and forward and backward each get
        # their own, which other nodes' calls share
        self.ws = {s.node: {} for s in steps}
        self.ws_backward = {s.node: {} for s in steps}
        for s in steps:
            if s.leader is not None:
                continue            # the leader's workspace serves the whole group
            last = t_bwd(s) if s.output in in_backward else s.index
            scratch = set(s.kernel.scratch_workspace) if self.reuse_memory else set()
            for k, (shape, dt) in s.kernel.workspace().items():
                dt = DTYPES.get(dt, dt) if isinstance(dt, str) else dt
                if k not in scratch:
                    requests.append((s.index, last, shape, dt, ("ws", s.node, k)))
                    continue
                requests.append((s.index, s.index, shape, dt, ("ws_forward", s.node, k)))
                if s.output in in_backward:
                    requests.append((t_bwd(s), t_bwd(s), shape, dt, ("ws_backward", s.node, k)))
        # gradients: each tensor's is written first by its first consumer in backward order and
        # read by its producer's backward; every later writer gets an aside buffer to add in
        self._gradient_writes = {}     # (step node, input position) -> ("direct" | "aside", tensor)
        written = set()
        first_write = {}
        for s in self.backward_steps:
            for k, i in enumerate(s.inputs):
                if (i not in in_backward and i not in self.wrt) or s.leader is not None:
                    continue        # no gradient wanted; or the leader writes the group's
                if i not in written:
                    written.add(i)
                    first_write[i] = t_bwd(s)
                    self._gradient_writes[(s.node, k)] = ("direct", i)
                else:
                    self._gradient_writes[(s.node, k)] = ("aside", i)
                    requests.append((t_bwd(s), t_bwd(s), self.shapes[i], np.float32, ("aside", s.node, k)))
        for t in in_backward:
            if t == self.target:
                if t != self.net.loss:      # an output's seed, written by the caller once forward is done
                    requests.append((S, t_bwd(self.step_of[t].caller), self.shapes[t], np.float32, ("grad", t)))
                continue
            requests.append((first_write[t], t_bwd(self.step_of[t].caller), self.shapes[t], np.float32, ("grad", t)))
        unreached = []              # wanted inputs whose every path is cut (stop_gradient): zero
        for t in self.wrt:          # read by the caller after backward
            if t in first_write:
                requests.append((first_write[t], keep, self.shapes[t], np.float32, ("grad", t)))
            else:
                unreached.append(t)
                requests.append((0, keep, self.shapes[t], np.float32, ("grad", t)))
        if unreached and self.target not in in_backward and self.target != self.net.loss:
            # the caller still writes the output's seed, which then reaches nothing
            requests.append((0, keep, self.shapes[self.target], np.float32, ("grad", self.target)))

        arena = _Arena(share=self.reuse_memory)
        requests.sort(key=lambda r: r[0])
        served = [arena.take(shape, dt, first, last) for first, last, shape, dt, _ in requests]
        # a parameter several nodes use (a shared instance) gets one gradient, which the first of
        # them in backward order writes; each later one writes an aside buffer that is added in
        trained, self._param_asides = {}, []
        for s in self.backward_steps:
            for k in self.node_trainable[s.node]:
                name = self.net.node(s.node).param_name(k)
                if name in trained:
                    self._param_asides.append((s.node, k, name))
                else:
                    trained[name] = tuple(self.node_params[s.node][k].shape)
        self._param_grad_bytes = sum(_size(trained[name]) * 4 for name in trained) \
            + sum(_size(trained[name]) * 4 for _, _, name in self._param_asides)
        self.memory_needed = (arena.allocated_bytes + self._param_grad_bytes
                              + sum(_size(self.shapes[t]) * np.dtype(tensor_dtype(t)).itemsize for t in self.inputs))
        self._check_memory()

        self.out = {}
        for t in self.inputs:
            self.out[t] = dev.empty(self.shapes[t], tensor_dtype(t))
        for r, ts in members.items():
            if r in self.inputs:
                for t in ts[1:]:
                    self.out[t] = self.out[r].reshape(self.shapes[t])
        buffers = arena.allocate(dev)
        self.grad, self._asides = {}, {}
        for (_, _, shape, _, where), index in zip(requests, served):
            buf = buffers[index][:_size(shape)].reshape(shape)
            if where[0] == "group":
                for t in members[where[1]]:
                    self.out[t] = buf.reshape(self.shapes[t])
            elif where[0] == "ws":
                self.ws[where[1]][where[2]] = buf
                self.ws_backward[where[1]][where[2]] = buf
            elif where[0] == "ws_forward":
                self.ws[where[1]][where[2]] = buf
            elif where[0] == "ws_backward":
                self.ws_backward[where[1]][where[2]] = buf
            elif where[0] == "grad":
                self.grad[where[1]] = buf
            else:
                self._asides[where[1:]] = buf
        for s in steps:
            for t in (s.node,) + s.absorbed[:-1]:
                self.out[t] = self.out[s.output]    # for reading only: what the chain absorbed is not kept
        self.param_grads = {name: dev.empty(shape, np.float32) for name, shape in trained.items()}
        self._param_aside_buffers = {(n, k): dev.empty(trained[name], np.float32)
                                     for n, k, name in self._param_asides}
        for t in unreached:
            dev.fill(self.grad[t], 0.0)
        self.loss_seed = dev.empty((), np.float32)
        if self.net.loss in in_backward:
            dev.fill(self.loss_seed, 1.0)
        self.bytes = arena.allocated_bytes

    def _check_memory(self):
        """Refuse, before anything is allocated, a plan that needs more than the device can
        give (Device.memory_limit): allocating it would fail part way, or swap for hours."""
        limit = self.device.memory_limit()
        if limit is None or self.memory_needed <= limit:
            return
        need = _gib(self.memory_needed)
        what = "training" if self.training else "running"
        if self._param_grad_bytes > limit:      # no batch size fits
            hint = (f"the parameters' gradients alone need ~{_gib(self._param_grad_bytes)} GiB: "
                    "freeze layers or use a smaller network")
        else:
            hint = f"use a smaller --batch ({self.batch} needs ~{need} GiB)"
        raise RuntimeUserError(
            f"{what} {self.net.name} at batch {self.batch} needs ~{need} GiB for its activations, gradients and "
            f"workspaces, but only {_gib(limit)} GiB of {self.device.name} memory is available", hint)

    # ---- every call's arguments, once --------------------------------------------------------
    def _bind(self):
        for s in self.steps:
            xs = [self.out[i] for i in s.inputs]
            s.args = (xs, self.node_params[s.node], self.out[s.output], self.ws[s.node])
        for s in self.backward_steps:
            gout = self.loss_seed if s.output == self.net.loss == self.target else self.grad[s.output]
            gxs = []
            for k, i in enumerate(s.inputs):
                how = self._gradient_writes.get((s.node, k))
                if how is None:
                    gxs.append(None)
                elif how[0] == "direct":
                    gxs.append(self.grad[i])
                else:
                    gxs.append(self._asides[(s.node, k)])
                    s.accumulations.append((self.grad[i], self._asides[(s.node, k)]))
            gparams = {}
            for k in self.node_trainable[s.node]:
                aside = self._param_aside_buffers.get((s.node, k))
                if aside is None:
                    gparams[k] = self.param_grads[self.net.node(s.node).param_name(k)]
                else:
                    gparams[k] = aside
                    s.accumulations.append((self.param_grads[self.net.node(s.node).param_name(k)], aside))
            xs, params, out, _ = s.args
            s.backward_args = (xs, params, out, gout, gxs, gparams, self.ws_backward[s.node])
        for s in self.steps:
            for f in s.followers:   # the leader's call computes the followers' shared-parameter asides too
                s.accumulations.extend(f.accumulations)
            if s.followers:         # each follower's (params, out, gout, gparams)
                s.kernel.bind_siblings([(f.args[1], f.args[2], f.backward_args[3] if f.backward_args else None,
                                         f.backward_args[5] if f.backward_args else {}) for f in s.followers])
        self._forward_calls = [(s.kernel.forward, s.args) for s in self.steps if s.runs]
        self._backward_calls = [(s.kernel.backward, s.backward_args, s.accumulations) for s in self.backward_steps
                                if s.leader is None]
        self._plan_final_gradients()

    def _plan_final_gradients(self):
        """After which backward call each parameter gradient is final: its last write, direct or
        accumulated (a shared parameter's gradient is summed over several calls). A data-parallel
        run starts a gradient's allreduce then, while the rest of the backward pass runs."""
        name_of = {id(a): name for name, a in self.param_grads.items()}
        last = {}
        callers = [s for s in self.backward_steps if s.leader is None]
        for i, s in enumerate(callers):
            written = list(s.backward_args[5].values()) + [g for g, _ in s.accumulations]
            written += [a for f in s.followers if f.backward_args for a in f.backward_args[5].values()]
            for a in written:
                if id(a) in name_of:
                    last[name_of[id(a)]] = i
        self.final_after = [[] for _ in callers]
        for name, i in last.items():
            self.final_after[i].append(name)
        # in the order they become final; gradients no call writes (no path to the loss) last
        self.gradient_order = [n for names in self.final_after for n in names] + \
            [n for n in self.param_grads if n not in last]

    # ---- execution -----------------------------------------------------------------------------
    def set_inputs(self, feeds: dict):
        for name in self.inputs:
            if name in feeds:
                self.device.from_host(feeds[name], out=self.out[name])

    def forward(self, ctx: Context):
        self._ctx = ctx
        for forward, args in self._forward_calls:
            forward(ctx, *args)
        if not self.training:
            self._stop_compile_helper()

    def backward(self, ctx: Context, observer: GradientObserver | None = None):
        """Gradients of the target (the loss, or a seeded output) w.r.t. every trainable parameter,
        into self.param_grads, and w.r.t. the `wrt` inputs, into self.grad[name]. observer: told
        after every kernel call which parameter gradients that call made final."""
        accumulate = self.device.accumulate
        if observer is None:
            for backward, args, accumulations in self._backward_calls:
                backward(ctx, *args)
                for gradient, aside in accumulations:
                    accumulate(gradient, aside)
        else:
            for (backward, args, accumulations), final in zip(self._backward_calls, self.final_after):
                backward(ctx, *args)
                for gradient, aside in accumulations:
                    accumulate(gradient, aside)
                observer.after_call(final)
        self._stop_compile_helper()

    def kernel_calls(self, ctx: Context, backward: bool = True):
        """Every kernel call of a step, in the order forward() and backward() make them, as
        (pass, step, run): pass "forward" or "backward", step the _Step making the call (its
        node, the nodes it absorbed, its kernel), run() the call on the plan's bound buffers (a
        backward call adds its shared-parameter asides too). For per-kernel profiles
        (bench/profile.py); forward() and backward() make the same calls without it."""
        self._ctx = ctx
        calls = [("forward", s, functools.partial(call, ctx, *args))
                 for s, (call, args) in zip([s for s in self.steps if s.runs], self._forward_calls)]
        if backward:
            accumulate = self.device.accumulate

            def run(call, args, accumulations):
                call(ctx, *args)
                for gradient, aside in accumulations:
                    accumulate(gradient, aside)
            calls += [("backward", s, functools.partial(run, *call))
                      for s, call in zip([s for s in self.backward_steps if s.leader is None], self._backward_calls)]
        return calls

    def _stop_compile_helper(self):
        """After a complete first step every kernel is compiled here: the helper has no more to do."""
        if self._compile_helper is not None:
            self._compile_helper.stop()
            self._compile_helper = None

    def loss_value(self) -> float:
        return self.device.scalar(self.out[self.net.loss])

    def first_nonfinite(self):
        """Name of the first node (in schedule order) whose output holds NaN or infinity.

        Dead activations share storage, so after a forward pass most early outputs have been
        overwritten: this runs the forward again from the inputs (which are never
        overwritten) and checks each output as it is written. It is a diagnosis for a step
        that is being abandoned: the rerun updates batchnorm statistics and draws dropout
        masks again."""
        for s in self.steps:
            if s.runs:
                s.kernel.forward(self._ctx, *s.args)
            a = self.device.to_host(self.out[s.output])
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                return s.node
        return None
