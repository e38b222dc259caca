"""Syntax tree -> graph of primitive ops, with every tensor's type inferred as nodes are made.

Shape inference runs while elaborating (one traversal, like an FX interpreter): sugar such
as `shortcut auto` depends on shapes, and each error is reported at the call that caused it.
A failed node yields no value; everything downstream of it is skipped silently so that only
independent mistakes are reported, one message per root cause.

What it builds is the checked graph of dslc/graph.py: a `Network` of typed `Node`s (op,
attrs, inputs, output type, params, MACs, source span, scope), named hierarchically
(`layer1.0.conv1`; the rules are in docs/LANGUAGE.md, "Names").
"""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from . import ast
from .diagnostics import CompileError, Diagnostics, Span, did_you_mean
from .graph import Network, Node, Objective, add_node, leading_axis_as_batch
from .ops import OPS, ShapeError, TensorType
from .parser import parse, read_source
from .train_section import check_section
from .values import (
    POISONED,
    SHAPE_FUNCTIONS,
    CoerceError,
    EvalError,
    Word,
    coerce,
    describe,
    evaluate,
    evaluate_condition,
)
from .values import Poisoned as _Poison

MAX_TENSOR_BYTES = 8 << 30      # per sample; refuse before anything is allocated
MAX_PARAMS = 4 << 30           # per operation: 16 GiB of float32
MAX_REPEAT = 1000
MAX_NODES = 100_000             # operations in one graph; elaboration stops at the limit
BLOCK_INPUT = "in"              # the name of a block's input inside its body
# Attribute kinds that take a bare word (`same`, `global`, `bilinear`): elsewhere an unbound
# name among the arguments of an op that takes several tensors is a tensor that does not exist.
_WORD_KINDS = ("enum", "pad", "window")

# What flows along a chain after a step failed (its error is reported). The later steps still
# check everything that needs no shapes (names, arguments, their kinds), then fail silently
# in turn, so a mistake further down the same chain is reported in the same run.
FAILED_INPUT = object()


class _GraphTooLarge(Exception):
    """The graph reached MAX_NODES (reported): the elaboration stops."""


class _Scope:
    """Naming and tensor environment of one block body (or the top level)."""

    def __init__(self, prefix: str, path: tuple, env: dict, tensors: dict):
        self.prefix = prefix           # "layer1.0." or ""
        self.path = path               # ((name, kind), ...)
        self.env = env                 # parameter values
        self.tensors = tensors         # tensor name -> node name (or None when poisoned)
        self.counters: dict[str, int] = {}
        self.labels: set[str] = set()
        # label -> a labelled block or op instance that `-> label` applies again, sharing its
        # parameters: ("block" | "op", its call, the owner's name); None: it failed (reported)
        self.instances: dict[str, tuple | None] = {}

    def fresh(self, kind: str) -> str:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return f"{kind}{self.counters[kind]}"

    def branch(self):
        """The scope of an unlabelled `if` branch: the same names and counters, but tensors it
        assigns stay inside it (the other branch may not assign them)."""
        s = _Scope(self.prefix, self.path, self.env, dict(self.tensors))
        s.counters, s.labels, s.instances = self.counters, self.labels, self.instances
        return s

    def child(self, name: str, kind: str, env=None, tensors=None):
        return _Scope(f"{self.prefix}{name}.", self.path + ((f"{self.prefix}{name}", kind),),
                      self.env if env is None else env, self.tensors if tensors is None else tensors)


class Elaborator:
    def __init__(self, program: ast.Program, overrides: dict | None = None, diags: Diagnostics | None = None):
        self.program = program
        self.overrides = dict(overrides or {})
        self.d = diags or Diagnostics()
        self.g = nx.DiGraph()
        self.blocks: dict[str, ast.BlockDef] = {}
        self.block_stack: list[str] = []
        self.symbols: dict[str, object] = {}
        self.used: set[str] = set()
        self.network_params: dict = {}   # what every block body sees besides its own parameters
        self.files: list[str] = [program.source.path]    # every file read: the program, then its imports
        # while a shared instance is applied again: (new name or prefix, owner's, kind, label, where)
        self._sharing: tuple | None = None

    # ---- entry -------------------------------------------------------------------------
    def run(self) -> Network:
        try:
            net = self._run()
        except _GraphTooLarge:      # reported; elaborating on would only take longer
            self._drop_repeated_errors()
            raise CompileError(self.d.items) from None
        self._drop_repeated_errors()
        return net

    def _run(self) -> Network:
        items = self.program.items
        self._load_imports(self.program, seen={str(Path(self.program.source.path).resolve())})
        for it in items:
            if isinstance(it, ast.BlockDef):
                self._add_block(it)
        decls = [it for it in items if isinstance(it, ast.NetworkDecl)]
        for extra in decls[1:]:
            self.d.error("a file declares one network", extra.span, label="second `network` here",
                         notes=[f"first declared at {decls[0].span.where}"], help="put each network in its own file")
        name = decls[0].name if decls else Path(self.program.source.path).stem
        params = self.network_params = self._network_params(decls[0] if decls else None)
        top = _Scope("", (), params, {})
        inputs = []
        for it in items:
            if isinstance(it, ast.InputDecl):
                node = self._input(it, top)
                if node is not None:
                    inputs.append(node)
                elif it.name not in top.tensors:
                    top.tensors[it.name] = None      # reported: its uses are skipped silently
        assigns = [it for it in items if isinstance(it, ast.Assign)]
        if not assigns and not any(isinstance(it, ast.InputDecl) for it in items):
            self._no_network(items)
        for a in self._order(assigns, top):
            self._assign(a, top)
        loss = None
        loss_decls = [it for it in items if isinstance(it, ast.LossDecl)]
        sections = [it for it in items if isinstance(it, ast.TrainSection)]
        alternates = [i for sec in sections for i in sec.items if i.key == "alternate"]
        objectives, alternate = (), ()
        loss_inputs = []
        if any(decl.name for decl in loss_decls):
            loss, loss_inputs, objectives = self._objectives(loss_decls, top)
            alternate = self._alternate(alternates, objectives)
        else:
            for extra in loss_decls[1:]:
                self.d.error("a network has one `loss` statement", extra.span, label="second `loss` here",
                             help="add terms to one loss: `loss a(...) + 0.5 * b(...)`, or name each "
                                  "objective: `loss d: ... trains disc`")
            for decl in loss_decls:
                if decl.trains:
                    self.d.error("`trains` belongs to a named objective", decl.trains[0][1], label="here",
                                 notes=["an unnamed `loss` trains every parameter"],
                                 help=f"name it, e.g. `loss main: ... trains {decl.trains[0][0]}`, or drop `trains`")
            for it in alternates:
                self.d.error("`alternate` steps named objectives, but this network has none", it.span,
                             label="nothing to alternate",
                             help="declare them, e.g. `loss d: ... trains disc` and `loss g: ... trains gen`, "
                                  "or remove `alternate`")
            if loss_decls:
                loss, loss_inputs = self._loss(loss_decls[0], top)
        outputs = self._outputs(items, top, loss_inputs, assigns)
        kept = [ast.TrainSection([i for i in sec.items if i.key != "alternate"], sec.span) for sec in sections]
        train = self._train(kept, top)
        warnings = self._unused(assigns, top, outputs)
        warnings += self._nothing_to_run(decls[0] if decls else None, name, items, top, outputs, loss)
        self._check_overrides_used(params)
        net = Network(name, self.g, params, inputs, outputs, loss, train, self.symbols,
                      self.program.source.path, warnings,
                      {t: n for t, n in top.tensors.items() if n is not None}, self.files, objectives, alternate)
        return net

    def _nothing_to_run(self, decl, name, items, top, outputs, loss):
        """A network whose main chain is cut off compiles to nothing to run or train: say so
        (a warning: the file is valid, and its blocks may be checked this way on purpose)."""
        computed = [o for o in outputs if not self._node(o).is_input]
        if self.d.items or computed or (outputs and loss):
            return []
        span = decl.span if decl else next((it.span for it in items if isinstance(it, ast.InputDecl)), None)
        if outputs:
            named = {n: t for t, n in top.tensors.items() if n is not None and t != n}
            shown = ", ".join(f"`{named.get(o, o)}` is the input `{o}`" for o in outputs)
            message, label = f"network `{name}` computes nothing: {shown}", "computes nothing"
        else:
            message = f"network `{name}` defines no output" + ("" if loss else " and no loss")
            label = "no output"
        used = {b for n in self.g.nodes for _, b in self._node(n).scope}
        idle = [b for b in self.blocks if b not in used]
        notes = [f"blocks defined but not used: {', '.join(f'`{b}`' for b in idle)}"] if idle else []
        x = next((it.name for it in items if isinstance(it, ast.InputDecl)), "image")
        help = (f"continue a chain from an input to an output, e.g. `logits = {x} -> flatten -> dense(10)`, "
                "and add a loss to train it, e.g. `loss cross_entropy(logits, label)`")
        return [self.d.warn(message, span, label=label, notes=notes, help=help)]

    def _no_network(self, items):
        """A file without inputs or tensors: an empty summary would hide that nothing is there."""
        blocks = [it.name for it in items if isinstance(it, ast.BlockDef)]
        notes = ([f"it defines only blocks ({', '.join(f'`{b}`' for b in blocks)}): "
                  "a file of blocks is for `import` into a network's file"] if blocks else [])
        self.d.error("no network in this file", notes=notes,
                     help="declare an input and a chain from it, e.g. `input image: [3, 32, 32]` "
                          "and `logits = image -> flatten -> dense(10)`; see docs/LANGUAGE.md")

    def _drop_repeated_errors(self):
        """Keep one of each error as printed: a mistake inside a block body is found again at
        every use of the block, and it is one root cause."""
        seen, unique = set(), []
        for d in self.d.items:
            text = d.render()
            if text not in seen:
                seen.add(text)
                unique.append(d)
        self.d.items[:] = unique

    # ---- imports and blocks ----------------------------------------------------------------
    def _load_imports(self, program, seen):
        for it in program.items:
            if not isinstance(it, ast.Import):
                continue
            base = Path(program.source.path).parent
            path = (base / it.path)
            key = str(path.resolve())
            if key in seen:
                continue
            seen.add(key)
            try:
                src = read_source(str(path))
            except OSError as e:
                self.d.error(f"cannot import `{it.path}`: {e.strerror or e}", it.span, label="imported here",
                             help=f"paths are relative to {base or '.'}")
                continue
            except UnicodeDecodeError:
                self.d.error(f"cannot import `{it.path}`: not UTF-8 text", it.span, label="imported here")
                continue
            self.files.append(str(path))
            try:
                sub = parse(src)
            except CompileError as e:
                self.d.items.extend(e.diagnostics)
                continue
            self._load_imports(sub, seen)
            for s in sub.items:
                if isinstance(s, ast.BlockDef):
                    self._add_block(s)

    def _add_block(self, b: ast.BlockDef):
        if b.name in self.blocks:
            self.d.error(f"block `{b.name}` is defined twice", b.name_span, label="second definition",
                         notes=[f"first defined at {self.blocks[b.name].name_span.where}"], help="rename one of them")
            return
        if b.name in OPS:
            self.d.error(f"block `{b.name}` has the name of a built-in op", b.name_span, label="shadows the op",
                         help="choose another name")
            return
        self.blocks[b.name] = b

    # ---- network header, --set ---------------------------------------------------------------
    def _network_params(self, decl):
        params = {}
        for p in (decl.params if decl else []):
            if p.name in params:
                self.d.error(f"parameter `{p.name}` is declared twice", p.span, label="again here")
                continue
            if p.name in self.overrides:
                params[p.name] = self.overrides[p.name]
                continue
            if p.default is None:
                self.d.error(f"network parameter `{p.name}` has no default and was not set", p.span,
                             label="needs a value",
                             help=f"give a default (`{p.name} = ...`) or pass `--set {p.name}=...`")
                params[p.name] = POISONED
                continue
            try:
                params[p.name] = evaluate(p.default, params)
            except EvalError as e:
                self.d.error(e.message, e.span, help=e.help)
                params[p.name] = POISONED
            except _Poison:
                params[p.name] = POISONED
        return params

    def _check_overrides_used(self, params):
        for k in self.overrides:
            if k not in params and k not in self.symbols:
                hint = did_you_mean(k, list(params) + list(self.symbols))
                self.d.error(f"`--set {k}=...` names no network parameter or symbolic dimension",
                             notes=[f"parameters: {', '.join(params) or 'none'}"
                                    + (f"; dimensions: {', '.join(self.symbols)}" if self.symbols else "")],
                             help=hint or "check the `network` line of the file")

    # ---- inputs ----------------------------------------------------------------------------
    def _input(self, it: ast.InputDecl, top: _Scope):
        if it.name in top.tensors or self.g.has_node(it.name):
            self.d.error(f"input `{it.name}` is declared twice", it.name_span, label="again here")
            return None
        dims = []
        for e in it.shape or []:
            if isinstance(e, ast.Name) and e.id not in top.env and e.id not in ("true", "false"):
                # an unbound name in a shape is a symbolic dimension (a sequence length `T`)
                if e.id in self.overrides:
                    v = self.overrides[e.id]
                    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                        self.d.error(f"`--set {e.id}`: a dimension must be a positive whole number, found "
                                     f"{describe(v)}", e.span, label=f"`{e.id}` sizes this input",
                                     help=f"give a length of at least 1, e.g. --set {e.id}=64")
                        return None
                    self.symbols[e.id] = v
                    dims.append(v)
                else:
                    self.symbols.setdefault(e.id, None)
                    dims.append(e.id)
                continue
            try:
                v = evaluate(e, top.env)
            except EvalError as err:
                self.d.error(err.message, err.span, help=err.help)
                return None
            except _Poison:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                self.d.error(f"an input dimension must be a positive whole number, found {describe(v)}", e.span,
                             label="here")
                return None
            dims.append(v)
        if it.unbatched is not None:
            # The first axis counts rows over the whole batch (boxes for roi_pool): named, never the batch.
            if not dims or not isinstance(dims[0], str) or dims[0] == "N":
                found = "no dimensions" if not dims else f"`{dims[0]}`"
                self.d.error(f"an unbatched input's first dimension counts its rows and needs a name, found {found}",
                             it.span, label="unbatched input",
                             help=f"name the rows, e.g. `input {it.name}: unbatched [R, 5]` (N is the batch: "
                                  "a tensor with one row per sample is not unbatched)")
                return None
            t = TensorType(tuple(dims), "int64" if it.dtype == "int" else "float32")
        else:
            t = TensorType(("N", *dims), "int64" if it.dtype == "int" else "float32")
        if not self._size_ok(t, it.span):
            return None
        self._check_node_count(it.span)
        add_node(self.g, Node(it.name, "input", {}, (), t, {}, 0, it.span, ()))
        top.tensors[it.name] = it.name
        return it.name

    # ---- statements ------------------------------------------------------------------------
    def _order(self, assigns, top):
        """Top-level statements in dependency order, so they may be written in any order; cycles are errors."""
        names = {}
        for a in assigns:
            if a.name in names or a.name in top.tensors:
                self.d.error(f"tensor `{a.name}` is assigned twice", a.name_span, label="again here",
                             notes=[f"first assigned at {names[a.name].name_span.where}" if a.name in names
                                    else f"`{a.name}` is an input"],
                             help="give each tensor its own name")
                continue
            names[a.name] = a
        dep = nx.DiGraph()
        # a statement that applies a shared instance again (`-> disc`) follows the one that made it
        made_by = {label: a.name for a in names.values() for label in _labels(a.chain)}
        for a in names.values():
            dep.add_node(a.name)
            for ref in _tensor_refs(a.chain):
                if ref in names:
                    dep.add_edge(ref, a.name)
                elif ref in made_by and made_by[ref] != a.name:
                    dep.add_edge(made_by[ref], a.name)
        try:
            order = list(nx.lexicographical_topological_sort(dep, key=lambda n: names[n].span.line))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(dep)
            path = " -> ".join(f"`{u}`" for u, _ in cycle) + f" -> `{cycle[0][0]}`"
            first = names[cycle[0][0]]
            self.d.error("tensors depend on each other in a cycle", first.name_span, label="part of the cycle",
                         notes=[f"cycle: {path}"],
                         help="a network is acyclic: break the cycle (recurrence goes in `lstm`/`gru`/`rnn`)")
            cyc = {u for u, _ in cycle}
            order = [n for n in sorted(names, key=lambda n: names[n].span.line) if n not in cyc]
            for n in cyc:
                top.tensors[n] = None
        return [names[n] for n in order]

    def _assign(self, a: ast.Assign, scope: _Scope):
        if a.name in OPS or a.name in self.blocks:
            self.d.error(f"tensor name `{a.name}` is also the name of an {'op' if a.name in OPS else 'block'}",
                         a.name_span, label="ambiguous", help="choose another name")
        try:
            node = self._chain(a.chain, scope, None)
        except _Poison:
            node = None
        scope.tensors[a.name] = node
        return node

    def _body(self, stmts, scope: _Scope, current):
        """A block or residual body: statements run in order, each continuing from the last value.
        After a failed statement the later ones are still checked (see FAILED_INPUT)."""
        for s in stmts:
            if isinstance(s, ast.Assign) and s.name in scope.tensors:
                self.d.error(f"tensor `{s.name}` is assigned twice", s.name_span, label="again here")
            try:
                current = self._chain(s.chain if isinstance(s, ast.Assign) else s, scope, current)
            except _Poison:
                current = FAILED_INPUT
            if isinstance(s, ast.Assign):
                scope.tensors[s.name] = None if current is FAILED_INPUT else current
        if current is FAILED_INPUT:
            raise _Poison()
        return current

    # ---- chains ----------------------------------------------------------------------------
    def _chain(self, chain: ast.Chain, scope: _Scope, current, first: bool = True, numbered: bool = False):
        """Run a chain's steps left to right.

        `first`: the chain starts a statement (a group inside a chain does not), so it may start
        from a named tensor. `numbered`: the chain is a labelled group, whose unlabelled steps
        are named by position 0, 1, ... like the children of a torch nn.Sequential; an
        unlabelled repeat `b * n` stands for n consecutive steps, so
        `layer2: (basic(128, stride = 2) -> basic(128) * 3)` names layer2.0 to layer2.3.
        """
        position = 0
        for i, term in enumerate(chain.terms):
            starts = first and i == 0
            steps = 1
            try:
                if numbered and isinstance(term, ast.Repeat):
                    steps = self._repeat_count(term, scope)
                    # after a failure one copy is checked: the others are the same text
                    for k in range(1 if current is FAILED_INPUT else steps):
                        current = self._term(term.term, scope, current, starts and k == 0, label=str(position + k))
                else:
                    label = str(position) if numbered and not isinstance(term, ast.Labelled) else None
                    current = self._term(term, scope, current, starts, label=label)
            except _Poison:
                current = FAILED_INPUT
            position += steps
        if current is FAILED_INPUT:
            raise _Poison()
        return current

    def _term(self, term, scope: _Scope, current, first: bool, label: str | None = None):
        if isinstance(term, ast.Call):
            return self._call(term, scope, current, first, label)
        if isinstance(term, ast.Group):
            if label is None:
                return self._chain(term.chain, scope, current, first)
            return self._chain(term.chain, scope.child(label, "group"), current, first, numbered=True)
        if isinstance(term, ast.Labelled):
            if term.label in scope.labels:
                self.d.error(f"label `{term.label}` is used twice in this scope", term.span, label="again here",
                             help="labels name scopes and must be unique")
                raise _Poison()
            scope.labels.add(term.label)
            call = term.term if isinstance(term.term, ast.Call) else None
            try:
                out = self._term(term.term, scope, current, first, term.label)
            except _Poison:
                if call is not None:
                    scope.instances[term.label] = None     # applying it again fails silently
                raise
            if call is not None:
                self._record_instance(term.label, call, scope, out)
            return out
        if isinstance(term, ast.Repeat):
            return self._repeat(term, scope, current, first, label)
        if isinstance(term, ast.Residual):
            return self._residual(term, scope, current, label)
        if isinstance(term, ast.Branches):
            return self._branches(term, scope, current, label)
        if isinstance(term, ast.If):
            return self._if(term, scope, current, label)
        raise AssertionError(f"unknown term {term!r}")  # grammar and AST are out of sync: a bug, not user input

    def _repeat_count(self, term: ast.Repeat, scope) -> int:
        try:
            n = evaluate(term.count, scope.env, self._types(scope.tensors))
        except EvalError as e:
            self.d.error(e.message, e.span, help=e.help)
            raise _Poison() from None
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPEAT:
            self.d.error(f"a repeat count must be a whole number from 1 to {MAX_REPEAT}, found {describe(n)}",
                         term.count.span, label="here")
            raise _Poison()
        return n

    def _repeat(self, term: ast.Repeat, scope, current, first, label):
        """`b * n`: n copies in one scope named by the label (else `b1`, ...), the copies 0 .. n-1."""
        n = self._repeat_count(term, scope)
        base = label or scope.fresh(term.term.name if isinstance(term.term, ast.Call) else "repeat")
        group = scope.child(base, "repeat")
        for i in range(1 if current is FAILED_INPUT else n):     # after a failure, check one copy
            current = self._term(term.term, group, current, first and i == 0, label=str(i))
        return current

    def _call(self, call: ast.Call, scope: _Scope, current, first, label):
        name = call.name
        if name in scope.instances and name not in scope.tensors:
            return self._reapply(name, call, scope, current, label)
        if name in scope.tensors and not call.args:
            if not first:
                self.d.error(f"tensor `{name}` cannot follow `->`", call.span, label="a tensor, not an op",
                             help=f"combine tensors with `add({name})` or `concat({name})`")
                raise _Poison()
            node = scope.tensors[name]
            if node is None:
                raise _Poison()
            self.used.add(node)
            return node
        names_tensors = any(self._is_tensor_arg(a, scope) for a in call.args)
        if first and names_tensors:
            # A statement that starts with `concat(in, new)` or `add(a, b)` reads exactly the
            # tensors it names, not also the value the previous statement of a body left.
            current = None
        if first and current is None and scope.prefix == "" and (name in OPS or name in self.blocks) \
                and not names_tensors:
            self.d.error(f"`{name}` has no input", call.span, label="nothing flows into this",
                         help="start the chain from an input or a named tensor: `x = image -> ...`")
            raise _Poison()
        if name in self.blocks:
            return self._instantiate(self.blocks[name], call, scope, current, label)
        if name in OPS:
            return self._op(OPS[name], call, scope, current, label)
        candidates = list(OPS) + list(self.blocks) + [t for t in scope.tensors]
        hint = did_you_mean(name, candidates)
        what = "tensor, op or block"
        if name == BLOCK_INPUT and scope.prefix == "":
            hint = "`in` names a block's input and exists only inside `block` bodies"
        self.d.error(f"unknown {what} `{name}`", call.name_span, label="not defined",
                     help=hint or "see `dslc ops` for the list of ops; blocks must be defined or imported")
        raise _Poison()

    def _types(self, tensors: dict):
        """The tensor lookup of `evaluate` for expressions that see `tensors` (name -> node)."""
        def tensor_type(name):
            if name not in tensors:
                return None
            if tensors[name] is None:      # its error is reported already
                raise _Poison()
            return self._node(tensors[name]).type
        return tensor_type

    def _node(self, name) -> Node:
        return self.g.nodes[name]["node"]

    def _is_tensor_arg(self, arg, scope):
        return arg.name is None and isinstance(arg.value, ast.Name) and arg.value.id in scope.tensors

    # ---- ops -------------------------------------------------------------------------------
    def _op(self, op, call: ast.Call, scope: _Scope, current, label):
        failed_input = current is FAILED_INPUT     # checked all the same, then fails silently
        inputs = [] if current is None or failed_input else [current]
        attrs, arg_spans, ok = {}, {}, True
        failed = set()             # attributes whose value had an error (reported already)
        arg_exprs = {}             # attribute -> the expression written for it
        positional = [a for a in call.args if a.name is None]
        keyword = [a for a in call.args if a.name is not None]
        specs = list(op.attrs)
        pos_specs = list(specs)
        for a in positional:
            if self._is_tensor_arg(a, scope):
                node = scope.tensors[a.value.id]
                if node is None:
                    failed_input = True
                else:
                    self.used.add(node)
                    inputs.append(node)
                continue
            try:
                v = evaluate(a.value, scope.env, self._types(scope.tensors))
            except (EvalError, _Poison) as e:
                if isinstance(e, EvalError):     # a Poison's error is reported already
                    self.d.error(e.message, e.span, help=e.help)
                ok = False
                if pos_specs:      # the argument still fills its place, so later ones keep theirs
                    failed.add(pos_specs[0].name)
                    if pos_specs[0].kind != "ints":
                        pos_specs.pop(0)
                continue
            if self._names_a_missing_tensor(op, v, pos_specs[0] if pos_specs else None):
                self.d.error(f"unknown tensor `{v}`", a.span, label="not defined",
                             help=did_you_mean(v, scope.tensors) or "define it with `name = ...` first")
                ok = False
                continue
            if not pos_specs:
                self.d.error(f"`{op.name}` takes {len(specs)} argument{'s' * (len(specs) != 1)}, found an extra one",
                             a.span, label="extra argument", notes=[_signature(op)],
                             help=did_you_mean(str(v), scope.tensors) if isinstance(v, Word) else "remove it")
                ok = False
                continue
            spec = pos_specs[0]
            if spec.kind == "ints":
                attrs[spec.name] = attrs.get(spec.name, ()) + (v if isinstance(v, tuple) else (v,))
                arg_spans[spec.name], arg_exprs[spec.name] = a.span, a.value
                continue
            pos_specs.pop(0)
            attrs[spec.name] = v
            arg_spans[spec.name], arg_exprs[spec.name] = a.span, a.value
        by_name = {s.name: s for s in specs}
        for a in keyword:
            if a.name not in by_name:
                self.d.error(f"`{op.name}` has no argument `{a.name}`", a.span, label="unknown argument",
                             notes=[_signature(op)], help=did_you_mean(a.name, by_name) or "remove it")
                ok = False
                continue
            if a.name in attrs or a.name in failed:
                self.d.error(f"argument `{a.name}` is given twice", a.span, label="again here",
                             notes=[_signature(op)], help="keep one")
                ok = False
                continue
            try:
                attrs[a.name] = evaluate(a.value, scope.env, self._types(scope.tensors))
            except (EvalError, _Poison) as e:
                if isinstance(e, EvalError):
                    self.d.error(e.message, e.span, help=e.help)
                failed.add(a.name)
                ok = False
                continue
            arg_spans[a.name], arg_exprs[a.name] = a.span, a.value
        for s in specs:
            if s.name in failed:
                continue
            if s.name in attrs:
                try:
                    attrs[s.name] = coerce(s.kind, attrs[s.name], s.choices)
                except CoerceError as e:
                    v = attrs[s.name]
                    hint = did_you_mean(v, scope.env) if isinstance(v, Word) else ""
                    self.d.error(f"`{op.name}` argument `{s.name}` expects {e}, found {describe(v)}",
                                 arg_spans[s.name], label="wrong type",
                                 notes=[_signature(op)] + self._set_note(arg_exprs[s.name]),
                                 help=hint or (s.doc or f"see `dslc ops {op.name}`"))
                    ok = False
            elif s.required:
                self.d.error(f"`{op.name}` is missing its argument `{s.name}`", call.span, label="needs more",
                             notes=[_signature(op)], help=s.doc or f"e.g. `{op.name}({s.name} = ...)`")
                ok = False
            else:
                attrs[s.name] = coerce(s.kind, s.default, s.choices)
        if not ok or failed_input:
            raise _Poison()
        return self._make_node(op, attrs, inputs, call, scope, label, arg_spans)

    @staticmethod
    def _names_a_missing_tensor(op, value, spec) -> bool:
        """Whether a positional argument that is an unbound bare name can only be meant as a
        tensor: the op takes tensors besides the one flowing in (`add(y, w)`), and the place
        the name stands in takes no word."""
        takes_tensors = op.max_inputs is None or op.max_inputs > 1
        return isinstance(value, Word) and takes_tensors and (spec is None or spec.kind not in _WORD_KINDS)

    def _set_note(self, expr) -> list[str]:
        """A note saying a value came from the command line, where it did."""
        if isinstance(expr, ast.Name) and expr.id in self.overrides and expr.id in self.network_params:
            return [f"`{expr.id}` was set on the command line: `--set {expr.id}={self.overrides[expr.id]}`"]
        return []

    def _make_node(self, op, attrs, inputs, call, scope: _Scope, label, arg_spans=None):
        arg_spans = arg_spans or {}
        try:
            op_name, attrs = op.variant(attrs)
            prim = OPS[op_name]
            attrs, inputs = prim.link(attrs, inputs, self.g)
            if len(inputs) < prim.min_inputs or (prim.max_inputs is not None and len(inputs) > prim.max_inputs):
                if prim.max_inputs == prim.min_inputs:
                    want = prim.min_inputs
                elif prim.max_inputs is None:
                    want = f"{prim.min_inputs} or more"
                else:
                    want = f"{prim.min_inputs} to {prim.max_inputs}"
                raise ShapeError(f"`{op.name}` takes {want} input tensor{'s' * (want != 1)}, found {len(inputs)}",
                                 help="tensors flow in with `->` or are passed by name, e.g. `add(x)`")
            in_types = [self._node(i).type for i in inputs]
            in_types, lead = leading_axis_as_batch(prim, in_types, inputs)
            out = prim.shape(attrs, in_types)
            if lead is not None and out.shape[:1] == ("N",):
                out = TensorType((lead, *out.shape[1:]), out.dtype)
            params = prim.params(attrs, in_types)
            macs = prim.macs(attrs, in_types, out)
        except ShapeError as e:
            span = arg_spans.get(e.arg, call.span) if e.arg else call.span
            notes = []
            if e.expected:
                notes.append(f"expected {e.expected}")
            if e.found:
                notes.append(f"found    {e.found}")
            # Inputs by the names the user wrote (`a`, `in`) where they have one, else by node name.
            written = {}
            for tensor, node in scope.tensors.items():
                written.setdefault(node, tensor)
            for i in inputs:
                if self.g.has_node(i):
                    notes.append(f"input `{written.get(i, i)}` is {self._node(i).type}")
            names_the_op = e.message.startswith((f"{op.name} ", f"`{op.name}"))
            message = e.message if names_the_op else f"{op.name}: {e.message}"
            self.d.error(message, span, label="here", notes=notes, help=e.help)
            raise _Poison() from None
        name = self._node_name(scope, label, op.name)
        if not self._size_ok(out, call.span, name):
            raise _Poison()
        count = sum(p.size for p in params.values())
        if count > MAX_PARAMS:
            self.d.error(f"`{op.name}` would hold {count:,} parameters", call.span, label="too many parameters",
                         notes=[f"limit: {MAX_PARAMS:,} per operation"],
                         help="check the channel or unit counts (and any `--set` values)")
            raise _Poison()
        shares = self._shared_owner(name, prim, params, inputs, call)
        self._check_node_count(call.span)
        add_node(self.g, Node(name, prim.name, attrs, tuple(inputs), out, params, macs, call.span, scope.path,
                              shares))
        self.used.update(inputs)
        return name

    def _check_node_count(self, span):
        if self.g.number_of_nodes() >= MAX_NODES:
            self.d.error(f"the network has more than {MAX_NODES:,} operations", span, label="the limit is reached here",
                         notes=[f"limit: {MAX_NODES:,} graph nodes"],
                         help="check the repeat counts (`* n`), nested repetitions and blocks repeated inside blocks")
            raise _GraphTooLarge()

    def _node_name(self, scope, label, kind):
        name = scope.prefix + (label if label is not None else scope.fresh(kind))
        while self.g.has_node(name):      # a label equal to an automatic name
            name = scope.prefix + scope.fresh(kind)
        return name

    def _size_ok(self, t: TensorType, span, name=""):
        n = t.per_sample_elements()
        if n is not None and n * 4 > MAX_TENSOR_BYTES:
            self.d.error(f"tensor {t} is too large: {n * 4 / 2**30:.1f} GiB per sample", span,
                         label="output of this step", notes=[f"limit: {MAX_TENSOR_BYTES >> 30} GiB per sample"],
                         help="check the input size and the channel counts")
            return False
        return True

    # ---- blocks ----------------------------------------------------------------------------
    def _instantiate(self, b: ast.BlockDef, call: ast.Call, scope: _Scope, current, label):
        if b.name in self.block_stack:
            chain = " -> ".join(self.block_stack + [b.name])
            self.d.error(f"block `{b.name}` uses itself", call.span, label="recursive use",
                         notes=[f"expansion: {chain}"],
                         help="blocks expand at compile time; use repetition (`* n`) instead")
            raise _Poison()
        # Lexical scope: a body sees the network's parameters and its own, never its caller's.
        env = dict(self.network_params)
        ok = True
        positional = [a for a in call.args if a.name is None]
        if positional and current is None and self._is_tensor_arg(positional[0], scope):
            node = scope.tensors[positional[0].value.id]        # `b(x, 64)`: x flows in
            current = FAILED_INPUT if node is None else node
            positional = positional[1:]
        names = [p.name for p in b.params]
        if len(positional) > len(names):
            extra = positional[len(names):]
            first, last = extra[0].span, extra[-1].span
            where = Span(first.source, first.line, first.col, last.end_line, last.end_col)
            self.d.error(f"block `{b.name}` takes {len(names)} argument{'s' * (len(names) != 1)}, "
                         f"found {len(positional)}", where,
                         label="extra argument" + "s" * (len(extra) > 1), notes=[_block_signature(b)],
                         help="remove it" if len(extra) == 1 else "remove them")
            ok = False
        given = dict(zip(names, positional))
        for a in call.args:
            if a.name is None:
                continue
            if a.name not in names:
                self.d.error(f"block `{b.name}` has no parameter `{a.name}`", a.span, label="unknown argument",
                             notes=[_block_signature(b)], help=did_you_mean(a.name, names) or "remove it")
                ok = False
            elif a.name in given:
                self.d.error(f"argument `{a.name}` is given twice", a.span, label="again here",
                             notes=[_block_signature(b)])
                ok = False
            else:
                given[a.name] = a
        input_types = self._types({} if current is None else
                                  {BLOCK_INPUT: None if current is FAILED_INPUT else current})
        for p in b.params:
            try:
                if p.name in given:
                    env[p.name] = evaluate(given[p.name].value, scope.env, self._types(scope.tensors))
                elif p.default is not None:
                    env[p.name] = evaluate(p.default, env, input_types)
                else:
                    self.d.error(f"block `{b.name}` is missing its argument `{p.name}`", call.span, label="needs more",
                                 notes=[_block_signature(b)])
                    env[p.name], ok = POISONED, False
            except (EvalError, _Poison) as e:
                if isinstance(e, EvalError):     # a Poison's error is reported already
                    self.d.error(e.message, e.span, help=e.help)
                env[p.name], ok = POISONED, False
        if current is None:
            self.d.error(f"block `{b.name}` has no input", call.span, label="nothing flows into this",
                         help="write `x -> block(...)`")
            ok = False
        if not ok:
            # The body is still checked for mistakes of its own; what reads a failed parameter
            # (POISONED) or the input is skipped silently.
            current = FAILED_INPUT
        inst = label if label is not None else scope.fresh(b.name)
        inner = scope.child(inst, b.name, env=env, tensors={BLOCK_INPUT: None if current is FAILED_INPUT else current})
        self.block_stack.append(b.name)
        try:
            return self._body(b.body, inner, current)
        finally:
            self.block_stack.pop()

    # ---- shared instances ------------------------------------------------------------------
    def _record_instance(self, label, call: ast.Call, scope: _Scope, out):
        """Remember `label: block(...)` or `label: op(...)` so that `-> label` applies it again."""
        if call.name in scope.instances and call.name not in scope.tensors:
            scope.instances[label] = scope.instances[call.name]     # `b: disc` is `disc` again
        elif call.name in self.blocks:
            scope.instances[label] = ("block", call, f"{scope.prefix}{label}")
        elif call.name in OPS:
            scope.instances[label] = ("op", call, out)

    def _reapply(self, name, call: ast.Call, scope: _Scope, current, label):
        """`x -> disc`, where `disc: discriminator()` was applied before: the same block (or op)
        with the same arguments, as new nodes that use the first application's parameters (one
        array each; backward adds the gradients of every use into it)."""
        inst = scope.instances[name]
        if inst is None:
            raise _Poison()        # its first application failed (reported)
        kind, orig, owner = inst
        if call.args:
            self.d.error(f"`{name}` is a shared instance: apply it again without arguments", call.span,
                         label="arguments here", notes=[f"`{name}` was made at {orig.span.where}"],
                         help=f"write `-> {name}`: it keeps the arguments of its first application")
            raise _Poison()
        if current is None:
            self.d.error(f"shared instance `{name}` has no input", call.span, label="nothing flows into this",
                         help=f"apply it to a tensor: `y = x -> {name}`")
            raise _Poison()
        if label is None:
            k = 2
            while any(n == f"{scope.prefix}{name}_{k}" or n.startswith(f"{scope.prefix}{name}_{k}.")
                      for n in self.g):
                k += 1
            label = f"{name}_{k}"
            scope.labels.add(label)
        args = orig.args
        if kind == "block" and args and args[0].name is None and self._is_tensor_arg(args[0], scope):
            args = args[1:]        # `disc: discriminator(x)`: x flowed in; now `current` does
        again = ast.Call(orig.name, args, call.span, call.name_span)
        previous = self._sharing
        self._sharing = (f"{scope.prefix}{label}", owner, kind, name, call.span)
        try:
            if kind == "block":
                return self._instantiate(self.blocks[orig.name], again, scope, current, label)
            return self._op(OPS[orig.name], again, scope, current, label)
        finally:
            self._sharing = previous

    def _shared_owner(self, name, prim, params, inputs, call):
        """The node whose parameters node `name` (being made) uses, while a shared instance is
        applied again; None when it has none to share."""
        if self._sharing is None or not params:
            return None
        new, owner, kind, label, where = self._sharing
        if kind == "op":
            target = owner if name == new else None
        else:
            target = owner + name[len(new):] if name.startswith(new + ".") else None
        first = self._node(target) if target is not None and self.g.has_node(target) else None
        shapes = {k: p.shape for k, p in params.items()}
        if first is None or first.op != prim.name or {k: p.shape for k, p in first.params.items()} != shapes:
            notes = []
            if first is not None:
                held = ", ".join(f"{k} {list(p.shape)}" for k, p in first.params.items())
                notes.append(f"`{first.name}` holds {held}")
                notes.append("here it would need " + ", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
                if first.inputs:
                    notes.append(f"`{first.name}` reads {self._node(first.inputs[0]).type}")
            if inputs:
                notes.append(f"here it reads {self._node(inputs[0]).type}")
            if call.span is not None and call.span != where:
                notes.append(f"in `{_source_text(call.span)}` at {call.span.where}")
            self.d.error(f"shared instance `{label}` cannot use its parameters here", where,
                         label="parameters of other shapes", notes=notes,
                         help="a shared instance takes inputs shaped like those of its first application")
            raise _Poison()
        return first.shares or first.name

    # ---- conditionals ----------------------------------------------------------------------
    def _if(self, term: ast.If, scope: _Scope, current, label):
        """`if cond { a } else { b }`: the condition is decided now, from parameters and sizes,
        and only the branch taken is elaborated, so the other may hold steps that would not
        fit these arguments. Without `else`, a false condition passes the input through."""
        try:
            taken = evaluate_condition(term.cond, scope.env, self._types(scope.tensors))
        except EvalError as e:
            self.d.error(e.message, e.span, label=e.label or "in this condition", help=e.help)
            raise _Poison() from None
        body = term.then if taken else term.orelse
        if body is None:
            if current is None:
                self.d.error("`if` without `else` has no input to pass through", term.span,
                             label="the condition is false here and nothing flows in",
                             help="add `else { ... }`, or continue a chain into the `if`: `x -> if ... { ... }`")
                raise _Poison()
            return current
        inner = scope.branch() if label is None else scope.child(label, "if", tensors=dict(scope.tensors))
        return self._body(body, inner, current)

    # ---- residual and branches -------------------------------------------------------------
    def _residual(self, term: ast.Residual, scope: _Scope, current, label):
        if current is None:
            self.d.error("`residual` has no input", term.span, label="nothing flows into this")
            raise _Poison()
        rs = scope if label is None else scope.child(label, "residual")
        try:
            branch = self._body(term.body, rs, current)
        except _Poison:
            branch = FAILED_INPUT
        short = current
        if isinstance(term.shortcut, list):      # `shortcut { steps }`, checked even when the branch failed
            try:
                short = self._body(term.shortcut, rs.child("shortcut", "shortcut"), current)
            except _Poison:
                short = FAILED_INPUT
        if branch is FAILED_INPUT or short is FAILED_INPUT:
            raise _Poison()
        bt, xt = self._node(branch).type, self._node(current).type
        if term.shortcut == "auto" and bt != xt:
            short = self._projection(term, rs, current, bt, xt)
        st = self._node(short).type
        if st != bt:
            last = self._node(branch).span
            self.d.error("residual branch and shortcut disagree", last, label=f"gives {bt}",
                         notes=[f"shortcut carries {st}"],
                         help="add `shortcut auto` for a 1x1 projection" if term.shortcut is None
                         else "make the shortcut produce the branch's shape")
            raise _Poison()
        return self._make_node(OPS["add"], {}, [branch, short], ast.Call("add", [], term.span, term.span), rs, None)

    def _projection(self, term, scope, x, bt: TensorType, xt: TensorType):
        """`shortcut auto`: a 1x1 conv (no bias) and batchnorm, like torchvision's downsample.

        Its stride per axis is the one that maps the input's size onto the branch's, as a 1x1
        conv counts it: ceil(size / stride), so an odd 7x7 map projects onto the 4x4 that a
        3x3 stride-2 pad-1 conv gives.
        """
        span = term.shortcut_span or term.span
        stride = None
        if bt.rank == 4 and xt.rank == 4 and all(isinstance(d, int) for d in bt.shape[1:] + xt.shape[1:]):
            stride = tuple(-(-xs // bs) for xs, bs in zip(xt.shape[2:], bt.shape[2:]))
            if any((xs - 1) // s + 1 != bs for xs, s, bs in zip(xt.shape[2:], stride, bt.shape[2:])):
                stride = None
        if stride is None:
            self.d.error("`shortcut auto` cannot project this input onto the branch's shape", span,
                         label="no 1x1 projection fits", notes=[f"input {xt}", f"branch gives {bt}"],
                         help="projections need [N, C, H, W] tensors whose sizes a strided 1x1 conv maps "
                              "onto each other; write the shortcut explicitly: `shortcut { ... }`")
            raise _Poison()
        # Named like torchvision's ResNet (`downsample.0` conv, `downsample.1` batchnorm), so
        # its pretrained weights load by name.
        ss = scope.child("downsample", "shortcut")
        call = ast.Call("conv", [], span, span)
        conv = self._make_node(OPS["conv"], {"channels": bt.shape[1], "kernel": (1, 1), "stride": stride,
                                             "pad": (0, 0), "dilation": (1, 1), "groups": 1, "bias": False},
                               [x], call, ss, "0")
        bn = OPS["batchnorm"]
        return self._make_node(bn, _defaults(bn), [conv], ast.Call("batchnorm", [], span, span), ss, "1")

    def _branches(self, term: ast.Branches, scope: _Scope, current, label):
        if term.kind == "mean" and len(term.branches) < 2:
            self.d.error("`mean { }` averages two or more branches, found one", term.span, label="one branch",
                         help="separate the branches with `|`, e.g. `mean { conv(c, 3x3, pad = 1) | identity }`")
            raise _Poison()
        bs = scope if label is None else scope.child(label, term.kind)
        outs, bad = [], False
        for chain in term.branches:
            name = bs.fresh("branch")
            sub = bs.child(name, "branch")
            try:
                outs.append(self._chain(chain, sub, current))
            except _Poison:
                bad = True
        if bad:
            raise _Poison()
        op = OPS[{"concat": "concat", "sum": "add", "mean": "mean"}[term.kind]]
        return self._make_node(op, _defaults(op), outs, ast.Call(term.kind, [], term.span, term.span), bs, None)

    # ---- loss, outputs, train --------------------------------------------------------------
    def _loss(self, decl: ast.LossDecl, top: _Scope, scope: _Scope | None = None, label: str = "loss"):
        """The terms in `scope` (default `loss.`) and their weighted total, labelled `label` in `top`."""
        scope = scope or top.child("loss", "loss")
        nodes, weights, loss_inputs = [], [], []
        for t in decl.terms:
            op = OPS.get(t.call.name)
            if op is None or not op.is_loss or op.name == "loss_sum":
                losses = [n for n, o in OPS.items() if o.is_loss and n != "loss_sum"]
                self.d.error(f"`{t.call.name}` is not a loss", t.call.name_span, label="here",
                             notes=["losses: " + ", ".join(losses)],
                             help=did_you_mean(t.call.name, losses) or "use one of the losses above")
                continue
            try:
                n = self._op(op, t.call, scope, None, None)
            except _Poison:
                continue
            nodes.append(n)
            weights.append(t.weight)
            first = self._node(n).inputs[0]
            loss_inputs.append(first)
        if not nodes or len(nodes) != len(decl.terms):
            return None, loss_inputs
        call = ast.Call("loss_sum", [], decl.span, decl.span)
        total = self._make_node(OPS["loss_sum"], {"weights": tuple(weights)}, nodes, call, top, label)
        return total, loss_inputs

    def _objectives(self, decls, top):
        """Named objectives (`loss d: ... trains disc`): each a total of its own terms, named
        `loss.NAME`, checked against the parameters it says it trains; the network's loss is
        their sum (what `dslc eval` reports beside each one)."""
        totals, loss_inputs, objectives, seen, owner = [], [], [], {}, {}
        params = self._param_names()
        for decl in decls:
            if decl.name is None:
                self.d.error("an unnamed `loss` beside named objectives", decl.span, label="no name",
                             notes=["an unnamed loss trains every parameter; named ones train their own groups"],
                             help="name it and say what it trains, e.g. `loss extra: ... trains LABEL`")
                continue
            if decl.name in seen:
                self.d.error(f"objective `{decl.name}` is declared twice", decl.name_span, label="again here",
                             notes=[f"first declared at {seen[decl.name].where}"],
                             help="give each objective its own name, or add the terms to one")
                continue
            seen[decl.name] = decl.name_span
            if not decl.trains:
                self.d.error(f"objective `{decl.name}` does not say what it trains", decl.name_span,
                             label="no `trains`",
                             notes=["each named objective moves only the parameters of the labels it names"],
                             help=f"add `trains LABEL` after its terms, e.g. `loss {decl.name}: ... trains disc`")
                continue
            scope = top.child("loss", "loss")
            total, inputs = self._loss(decl, scope, scope.child(decl.name, "loss"), decl.name)
            loss_inputs += inputs
            trained = []
            for label, span in decl.trains:
                mine = [p for p in params if p == label or p.startswith(label + ".")]
                if not mine:
                    labelled = sorted({p.split(".")[0] for p in params})
                    what = "has no parameters" if self.g.has_node(label) or any(
                        n.startswith(label + ".") for n in self.g.nodes) else "is not a label in this network"
                    self.d.error(f"objective `{decl.name}` trains `{label}`, which {what}", span, label="here",
                                 notes=["top-level labels with parameters: "
                                        + (", ".join(f"`{x}`" for x in labelled) or "none")],
                                 help=did_you_mean(label, labelled) or "name a labelled layer or block instance, "
                                                                        "e.g. `disc: discriminator(64)`")
                    continue
                shared = [p for p in mine if owner.get(p, decl.name) != decl.name]
                if shared:
                    self.d.warn(f"objectives `{owner[shared[0]]}` and `{decl.name}` both train `{label}` "
                                f"({len(shared)} parameter{'s' * (len(shared) > 1)}, e.g. `{shared[0]}`)", span,
                                label="here", help="each objective's steps move them; name disjoint groups "
                                                   "unless that is meant")
                for p in mine:
                    owner.setdefault(p, decl.name)
                trained += [p for p in mine if p not in trained]
            if total is None or len(trained) == 0:
                continue
            if not self._reaches(total, set(trained)):
                self.d.error(f"objective `{decl.name}` trains nothing: its loss does not depend on the "
                             f"parameters of {', '.join(f'`{x}`' for x, _ in decl.trains)}", decl.name_span,
                             label="trains nothing",
                             notes=["a `detach`/`stop_gradient` on the way, or no path at all, cuts the gradient"],
                             help="train the labels the loss reads through, or remove the `detach` between them")
                continue
            totals.append(total)
            objectives.append(Objective(decl.name, total, tuple(x for x, _ in decl.trains), tuple(trained)))
        if len(objectives) != len(decls):
            return None, loss_inputs, ()
        call = ast.Call("loss_sum", [], decls[0].span, decls[0].span)
        loss = self._make_node(OPS["loss_sum"], {"weights": tuple(1.0 for _ in totals)}, totals, call, top, "loss")
        return loss, loss_inputs, tuple(objectives)

    def _param_names(self) -> list:
        """Every trainable parameter's full name (`disc.conv1.weight`), the owners' only."""
        out = []
        for n in self.g.nodes:
            node = self._node(n)
            if not node.shares:
                out += [f"{n}.{k}" for k, p in node.params.items() if p.trainable]
        return out

    def _reaches(self, total, trained: set) -> bool:
        """Whether a gradient from `total` reaches a parameter in `trained`: back along edges that
        pass gradients (stop_gradient's do not)."""
        todo, seen = [total], {total}
        while todo:
            node = self._node(todo.pop())
            if any(node.param_name(k) in trained for k, p in node.params.items() if p.trainable):
                return True
            if node.op == "input" or not OPS[node.op].grad_inputs(node.attrs, [self._node(i).type
                                                                               for i in node.inputs]):
                continue
            for i in node.inputs:
                if i not in seen:
                    seen.add(i)
                    todo.append(i)
        return False

    def _alternate(self, items, objectives):
        """`alternate a, b`: the order objectives are stepped in per batch (default: as declared)."""
        names = [o.name for o in objectives]
        if not items:
            return tuple(names)
        for extra in items[1:]:
            self.d.error("`alternate` is given twice", extra.span, label="again here",
                         notes=[f"first given at {items[0].span.where}"], help="keep one")
        order = []
        for name, span in items[0].value:
            if name not in names:
                if objectives or not self.d.items:
                    self.d.error(f"`alternate` names `{name}`, which is not an objective", span, label="unknown",
                                 notes=["objectives: " + (", ".join(f"`{n}`" for n in names) or "none")],
                                 help=did_you_mean(name, names) or "name objectives declared with `loss NAME: ...`")
                continue
            order.append(name)
        left = [n for n in names if n not in order]
        if left and len(order) == len(items[0].value):
            self.d.error(f"`alternate` leaves out objective{'s' * (len(left) > 1)} "
                         f"{', '.join(f'`{n}`' for n in left)}", items[0].span, label="never stepped",
                         notes=["an objective that is never stepped trains nothing"],
                         help=f"add it, e.g. `alternate {', '.join(names)}`")
        return tuple(order)

    def _outputs(self, items, top, loss_inputs, assigns):
        outs = []
        for it in items:
            if isinstance(it, ast.OutputDecl):
                for name, span in it.names:
                    if name not in top.tensors:
                        self.d.error(f"unknown tensor `{name}`", span, label="not defined",
                                     help=did_you_mean(name, top.tensors) or "outputs name tensors assigned with `=`")
                    elif top.tensors[name] is not None:
                        outs.append(top.tensors[name])
                        self.used.add(top.tensors[name])
        if not outs:
            outs = [n for n in dict.fromkeys(loss_inputs) if not self._node(n).is_input]
        if not outs and assigns and top.tensors.get(assigns[-1].name):
            outs = [top.tensors[assigns[-1].name]]
        return outs

    def _train(self, sections, top):
        """The `train { }` settings, each checked so a bad value is reported at its place."""
        return check_section(sections, top.env, self.d)

    def _unused(self, assigns, top, outputs):
        warnings = []
        for a in assigns:
            node = top.tensors.get(a.name)
            if node is not None and node not in self.used and node not in outputs:
                warnings.append(self.d.warn(f"tensor `{a.name}` is computed but never used", a.name_span,
                                            label="unused", help="use it, list it in `output`, or remove it"))
        return warnings


def _tensor_refs(chain: ast.Chain):
    """Every name a chain may read as a tensor: calls without arguments, positional name
    arguments, and the tensors that size functions (`channels(x)`) read."""
    out = []

    def visit_expr(e):
        if isinstance(e, ast.CallExpr):
            if e.name in SHAPE_FUNCTIONS and e.args and isinstance(e.args[0].value, ast.Name):
                out.append(e.args[0].value.id)
            for a in e.args:
                visit_expr(a.value)
        elif isinstance(e, ast.BinOp):
            visit_expr(e.left)
            visit_expr(e.right)
        elif isinstance(e, (ast.Neg, ast.Not)):
            visit_expr(e.operand)
        elif isinstance(e, (ast.Compare, ast.BoolOp)):
            visit_expr(e.left)
            visit_expr(e.right)
        elif isinstance(e, ast.TupleExpr):
            for item in e.items:
                visit_expr(item)

    def visit(x):
        if isinstance(x, ast.Call):
            if not x.args:
                out.append(x.name)
            for a in x.args:
                if a.name is None and isinstance(a.value, ast.Name):
                    out.append(a.value.id)
                visit_expr(a.value)
        elif isinstance(x, ast.Chain):
            for t in x.terms:
                visit(t)
        elif isinstance(x, (ast.Repeat, ast.Labelled)):
            visit(x.term)
        elif isinstance(x, ast.Group):
            visit(x.chain)
        elif isinstance(x, ast.Residual):
            for s in x.body:
                visit(s.chain if isinstance(s, ast.Assign) else s)
            if isinstance(x.shortcut, list):
                for s in x.shortcut:
                    visit(s.chain if isinstance(s, ast.Assign) else s)
        elif isinstance(x, ast.Branches):
            for c in x.branches:
                visit(c)
        elif isinstance(x, ast.If):
            visit_expr(x.cond)
            for s in x.then + (x.orelse or []):
                visit(s.chain if isinstance(s, ast.Assign) else s)
    visit(chain)
    return out


def _labels(chain: ast.Chain):
    """The labels a chain gives its steps (`disc: discriminator()`), groups included."""
    out = []

    def visit(x):
        if isinstance(x, ast.Labelled):
            out.append(x.label)
            visit(x.term)
        elif isinstance(x, ast.Chain):
            for t in x.terms:
                visit(t)
        elif isinstance(x, ast.Group):
            visit(x.chain)
        elif isinstance(x, ast.Repeat):
            visit(x.term)
    visit(chain)
    return out


def _defaults(op) -> dict:
    """Canonical default attributes of an op used by sugar (shortcuts, branches)."""
    return {a.name: coerce(a.kind, a.default, a.choices) for a in op.attrs if not a.required}


def op_signature(op) -> str:
    """How an op is called, with its defaults: `conv(channels, kernel, stride = 1, ...)`."""
    parts = []
    for a in op.attrs:
        parts.append(a.name if a.required else f"{a.name} = {_show_default(a.default)}")
    return f"{op.name}({', '.join(parts)})"


def _signature(op) -> str:
    return f"signature: {op_signature(op)}"


def _show_default(v):
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "x".join(map(str, v)) if v and all(isinstance(x, int) for x in v) else str(v)
    return str(v)


def _block_signature(b: ast.BlockDef) -> str:
    params = [p.name if p.default is None else f"{p.name} = {_source_text(p.default.span)}" for p in b.params]
    return f"signature: block {b.name}({', '.join(params)})"


def _source_text(span: Span) -> str:
    """The text a span covers as the user wrote it, lines joined by a space."""
    lines = [span.source.line(n) for n in range(span.line, span.end_line + 1)]
    lines[-1] = lines[-1][:span.end_col - 1]
    lines[0] = lines[0][span.col - 1:]
    return " ".join(line.strip() for line in lines)


def elaborate(program: ast.Program, overrides=None, diags=None) -> Network:
    return Elaborator(program, overrides, diags).run()
