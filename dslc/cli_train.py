"""`dslc run` and `dslc eval`: the command-line side of training.

Kept apart from dslc/cli.py so that `dslc compile` / `dslc viz` never import Numba: cli.py
imports this module only when one of these commands runs.

Where the weights go: `--checkpoint DIR`, or else a new numbered directory runs/NETWORK/N
(N = 1, 2, ... one past the highest there; created atomically, so runs side by side never share
one). Either way DIR/last.ckpt is written after every epoch and DIR/best.ckpt after each epoch
that lowers the validation loss. A default directory that ends up holding no checkpoint (the
run failed before its first epoch ended) is removed again.

What a checkpoint records for later commands (metadata, besides the trainer's own): `set`, the
--set values as given ({"hidden": "64"}), `vocab`, a text model's characters (id i is vocab[i]),
and under `data` the --data, --limit and --val of the run. `dslc eval` applies the recorded
--set values (see `recorded_overrides`) and, without --data, scores what the run validated on.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zipfile
from dataclasses import replace

from .compiler import CompileError, UsageError, compile_file, parse_override
from .diagnostics import did_you_mean
from .ops import OPS
from .runtime.box_batches import row_groups
from .runtime.checkpoint import load_checkpoint
from .runtime.data import BUILTIN_DATASETS, InputSpec, load_dataset, load_inputs, mnist_test_set
from .runtime.distributed import MissingMPI, world
from .runtime.errors import CheckpointError, RuntimeUserError
from .runtime.model import Model
from .runtime.plan import concrete
from .runtime.train import (
    BEST_NAME,
    CHECKPOINT_NAME,
    LOCK_NAME,
    CheckpointDir,
    Interrupted,
    TrainConfig,
    Trainer,
    check_output_file,
    data_roles,
    loss_terms,
)
from .runtime.weights import is_foreign
from .summary import totals

DEFAULT_SEQUENCE_LENGTH = 64
RUNS_DIR = "runs"
# Above this many classes the text report gives the lowest per-class accuracies, not the matrix.
MAX_PRINTED_CLASSES = 20


def _log(line):
    print(line, file=sys.stderr)


class _DataSpec:
    """What a network's data must be. `inputs`: each input's InputSpec, for data named by input
    (load_inputs). `classic`: load_dataset's keyword arguments for the x/y sources (digits,
    MNIST, text, x/y .npz), where the network has one data input (`x`) and at most one label
    (`y`); else None. `classes`: the class count of the label, when a loss classifies it."""

    def __init__(self, net, log=lambda s: None, label_column=None):
        self.x, self.y = data_roles(net)
        self._log = log
        self.label_column = label_column
        symbols = dict(net.symbols)
        # A sequence length nobody set: generated data and text windows need a number (said when
        # used); arrays named by input bring their own.
        self.rows = row_groups(net)       # unbatched inputs: their row counts come with the data
        self.unset = [k for k, v in symbols.items() if v is None and k not in {g.axis for g in self.rows}]
        for k in self.unset:
            symbols[k] = DEFAULT_SEQUENCE_LENGTH
        # An integer input holds class labels (a classifying loss's target: below its class count)
        # or ids an embedding looks up (below the smallest vocabulary).
        classes_of, targets = {}, set()
        for t in loss_terms(net):
            term = net.node(t)
            if len(term.inputs) > 1:
                targets.add(term.inputs[1])
            if OPS[term.op].classifies:
                logits = net.node(term.inputs[0]).type
                classes_of.setdefault(term.inputs[1], logits.shape[term.attrs.get("class_axis", 1)])
        for d in net.nodes():
            if d.op == "embed":
                for i in d.inputs:
                    if i in net.inputs:
                        classes_of[i] = min(classes_of.get(i, d.attrs["vocab"]), d.attrs["vocab"])
        self.label = self.y if self.y is not None else next(
            (i for i in net.inputs if i in classes_of and i in targets), None)
        self.classes = classes_of.get(self.label) if self.label is not None and self.label in targets else None
        self.inputs = {}
        for name in net.inputs:
            t = net.node(name).type
            self.inputs[name] = InputSpec(concrete(t.shape[1:], 1, symbols), t.dtype,
                                          classes_of.get(name) if t.dtype == "int64" else None, name in targets)
        # for .npz data: the unset lengths are whatever the arrays hold (None: any size)
        self.free_inputs = {name: replace(spec, shape=tuple(None if d in self.unset else s for d, s in
                                                            zip(net.node(name).type.shape[1:], spec.shape)))
                            for name, spec in self.inputs.items()}
        self.classic = None
        if self.x is not None and not self.rows:
            xs = self.inputs[self.x]
            # without a label input (an autoencoder) the source's labels are read and not used
            ys = self.inputs[self.y] if self.y is not None else InputSpec((), "int64")
            self.classic = dict(x_shape=xs.shape, x_dtype=xs.dtype, y_shape=ys.shape, y_dtype=ys.dtype,
                                classes=self.classes, x_classes=xs.classes)

    def load(self, source, *, val_fraction, seed, limit, vocab=None, class_names=None):
        """(train, validation) from `source`, as load_dataset / load_inputs split it. `class_names`:
        the classes a trained model's labels number (an image folder's or a CSV's)."""
        classic = self.classic is not None and not self._named_npz(source)
        if classic or source == "synthetic":
            for k in self.unset:
                self._log(f"{k} is not set; using {k} = {DEFAULT_SEQUENCE_LENGTH} (change it with --set {k}=...)")
            self.unset = []         # said once
        if classic:
            return load_dataset(source, val_fraction=val_fraction, seed=seed, limit=limit, vocab=vocab,
                                class_names=class_names, label_column=self.label_column, **self.classic)
        inputs = self.inputs if source == "synthetic" else self.free_inputs
        return load_inputs(source, inputs, val_fraction=val_fraction, seed=seed, limit=limit,
                           shorthand=(self.x, self.y), classes_of=self.label, rows=self.rows)

    def _named_npz(self, source) -> bool:
        """Whether `source` is an .npz whose arrays are named like the network's inputs (or, for
        a network without a label, holds `x` only), rather than an x/y pair."""
        if not source.endswith(".npz") or not os.path.isfile(source):
            return False
        try:
            with zipfile.ZipFile(source) as z:
                names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
        except (OSError, zipfile.BadZipFile):
            return False            # load_dataset says what is wrong with it
        return bool(names & set(self.inputs)) or self.y is None


def _check_vocab(train, spec):
    classes = spec.classes
    if train.classes is not None and classes is not None and train.vocab is not None and train.classes > classes:
        raise RuntimeUserError(f"the text has {train.classes} distinct characters but the network predicts {classes}",
                               f"compile with --set vocab={train.classes}")


def _datasets(net, source, cfg, limit, log=lambda s: None, val_source=None, label_column=None):
    """(train, validation, where the validation data comes from, the validation source or None).

    With `val_source` the whole of `source` trains and the whole of `val_source` validates; a
    --data directory holding MNIST's train and t10k pairs validates on t10k; otherwise
    cfg.val_fraction of `source` is held out; an image folder with train/ and val/ gives those."""
    spec = _DataSpec(net, log, label_column)
    auto = None
    if val_source is None:
        auto = val_source = mnist_test_set(source)
    else:
        val_source = mnist_test_set(val_source) or val_source
    if val_source is None:
        train, val = spec.load(source, val_fraction=cfg.val_fraction, seed=cfg.seed, limit=limit)
        _check_vocab(train, spec)
        for note in train.notes:
            log(note)
        if val.origin is not None:
            return train, val, f"{val.origin}, the val folder beside train", None
        if not len(val):
            return train, val, "no validation", None
        how = "the end" if train.vocab is not None else "random"
        return train, val, f"{cfg.val_fraction:.0%} of {train.name} held out, {how}", None
    train, _ = spec.load(source, val_fraction=0, seed=cfg.seed, limit=limit)
    _check_vocab(train, spec)
    val, _ = spec.load(val_source, val_fraction=0, seed=cfg.seed, limit=limit, vocab=train.vocab,
                       class_names=train.class_names)
    for note in train.notes + val.notes:
        log(note)
    where = f"{val.name}, the test set beside the training set" if auto else val_source
    return train, val, where, val_source


def _given_sets(pairs) -> dict:
    """The --set flags as given, {name: value text}; a later flag for the same name wins."""
    out = {}
    for p in pairs or []:
        k, _ = parse_override(p)
        out[k] = p.split("=", 1)[1].strip()
    return out


def default_run_dir(network: str) -> str:
    """A new directory runs/NETWORK/N, N one past the highest number there (made with mkdir, which
    fails if another run took that number first: then the next is tried)."""
    parent = os.path.join(RUNS_DIR, network)
    try:
        os.makedirs(parent, exist_ok=True)
        taken = [int(n) for n in os.listdir(parent) if n.isdigit()]
    except OSError as e:
        raise RuntimeUserError(f"cannot create {parent} for this run's weights: {e.strerror or e}",
                               "run from a directory you can write to, or give --checkpoint DIR") from None
    n = max(taken, default=0) + 1
    while True:
        path = os.path.join(parent, str(n))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1
        except OSError as e:
            raise RuntimeUserError(f"cannot create {path} for this run's weights: {e.strerror or e}",
                                   "run from a directory you can write to, or give --checkpoint DIR") from None


def _remove_if_unused(path: str) -> None:
    """Take back a default run directory in which no checkpoint was written."""
    try:
        names = set(os.listdir(path))
        if names - {LOCK_NAME}:
            return
        if LOCK_NAME in names:
            os.unlink(os.path.join(path, LOCK_NAME))
        os.rmdir(path)
    except OSError:
        pass


def run_command(args, overrides) -> int:
    """Train. Under an MPI launcher (mpiexec -n K, srun) every rank runs this; rank 0 alone
    claims the checkpoint directory, logs and writes."""
    return _on_every_rank(_run_command, args, overrides)


def _on_every_rank(command, args, overrides) -> int:
    """command(args, overrides, comm) in this process, one rank of the job. A failure on any rank
    ends the whole job (MPI abort) with `rank R: <message>`, so the other ranks do not wait for
    it forever."""
    try:
        comm = world()
    except MissingMPI as e:
        raise UsageError(e.message, help=e.hint) from None
    if comm.size == 1:
        return command(args, overrides, comm)
    try:
        return command(args, overrides, comm)
    except Exception as e:  # noqa: BLE001 - any rank's failure ends the job, said with its rank
        _abort_job(comm, e)
        raise


def _abort_job(comm, e) -> None:
    if isinstance(e, CompileError):
        text, code = "\n".join(d.render() for d in e.diagnostics), 1
    elif isinstance(e, UsageError):
        text, code = f"error: {e.message}" + (f"\n  = help: {e.help}" if e.help else ""), 2
    elif isinstance(e, RuntimeUserError):
        text, code = f"error: {e}", 1
    else:
        text, code = (f"internal error: {type(e).__name__}: {e}\n  = help: this is a bug in dslc; rerun with "
                      "DSLC_DEBUG=1 for the traceback and report it"), 3
        if os.environ.get("DSLC_DEBUG"):
            import traceback
            traceback.print_exc()
    sys.stderr.write(f"rank {comm.rank}: {text}\n")     # one write: the ranks share the terminal
    sys.stderr.flush()
    comm.abort(code)
    os._exit(code)      # MPICH's abort may return to the caller once the launcher has been told


def _command_digest(args) -> dict:
    """{what: digest} of the command this rank runs, compared across ranks by the trainer."""
    def digest(value):
        return hashlib.sha256(value if isinstance(value, bytes) else
                              json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    try:
        with open(args.file, "rb") as f:
            source = f.read()
    except OSError:
        source = b""
    local = {"func", "quiet", "threads", "set", "metrics"}     # may differ per rank, or only rank 0 uses them
    return {".net source": digest(source), "--set values": digest(sorted(_given_sets(args.set).items())),
            "flags": digest({k: v for k, v in vars(args).items() if k not in local})}


def _set_threads(args, comm) -> int:
    """Numba's threads for this process: --threads, else NUMBA_NUM_THREADS, else (several
    processes) the node's cores divided among the ranks on the node. Returns the count."""
    import numba
    most = numba.config.NUMBA_NUM_THREADS
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: give a number of threads >= 1", help="e.g. --threads 2")
        if args.threads > most:
            raise UsageError(f"--threads {args.threads} is more than the {most} threads Numba started with",
                             help=f"also set NUMBA_NUM_THREADS={args.threads} in the environment")
        numba.set_num_threads(args.threads)
    elif comm.size > 1 and not os.environ.get("NUMBA_NUM_THREADS", "").strip():
        numba.set_num_threads(max(1, min(most, (os.cpu_count() or 1) // comm.local_size())))
    return numba.get_num_threads()


def _run_command(args, overrides, comm) -> int:
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint DIR (where the checkpoint is)",
                         help=f"e.g. --checkpoint {os.path.join(RUNS_DIR, 'NETWORK', '1')} for a run that saved "
                              "into the default directory")
    if args.overwrite and not args.checkpoint:
        raise UsageError("--overwrite needs --checkpoint DIR (the checkpoint it replaces)")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the checkpoint and --overwrite replaces it: give one of them")
    if args.early_stopping is not None and args.early_stopping < 1:
        raise UsageError(f"--early-stopping {args.early_stopping}: give a number of epochs >= 1",
                         help="e.g. --early-stopping 3")
    net, warnings = compile_file(args.file, overrides)
    lead = comm.rank == 0       # the rank that speaks and writes for the job
    for w in warnings if lead else ():
        print(w.render(), file=sys.stderr)
    if args.freeze_all_but:     # as --freeze flags: the model freezes prefixes, and the line names them
        args.freeze = [*(args.freeze or []), *_all_but(net, args.freeze_all_but)]
        if lead:
            _log(f"--freeze-all-but {' '.join(args.freeze_all_but)}: freezing {', '.join(args.freeze)}")
    cfg = TrainConfig.from_network(net, epochs=args.epochs, batch=args.batch, lr=args.lr, optimizer=args.optimizer,
                                   seed=args.seed, ema=args.ema)
    threads = _set_threads(args, comm)
    # Output paths first: a path that cannot be written fails now, not after an epoch of training.
    default_dir = None if args.checkpoint or not lead else default_run_dir(net.name)
    directory = comm.bcast(args.checkpoint or default_dir)
    try:
        claim = CheckpointDir(directory, resume=args.resume, overwrite=args.overwrite) if lead else None
        try:
            if args.metrics and lead:
                check_output_file(args.metrics, "--metrics")
            return _train(args, net, cfg, directory, comm, threads)
        finally:
            if claim is not None:
                claim.release()
    finally:
        if default_dir is not None:
            _remove_if_unused(default_dir)


def _all_but(net, keep: list[str]) -> list[str]:
    """The --freeze prefixes that leave only the parameters under `keep` trained: the shortest
    names (layers, blocks) whose parameters are all outside `keep`, in the network's order."""
    names = [f"{n.name}.{k}" for n in net.nodes() if not n.shares for k, p in n.params.items() if p.trainable]

    def under(name, prefix):
        return name == prefix or name.startswith(prefix + ".")
    for k in keep:
        if not any(under(name, k) for name in names):
            layers = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in names))
            raise UsageError(f"--freeze-all-but {k}: the network has no trained parameters under `{k}`",
                             help=did_you_mean(k, layers) or "names look like " + ", ".join(layers[-4:]))
    prefixes: list[str] = []
    for name in names:
        if any(under(name, k) for k in keep) or any(under(name, p) for p in prefixes):
            continue
        parts = name.split(".")
        # the first prefix of the name that holds no kept parameter
        prefix = next(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                      if not any(under(k, ".".join(parts[:i])) for k in keep))
        prefixes.append(prefix)
    return prefixes


def _train(args, net, cfg, directory, comm, threads) -> int:
    t0 = time.perf_counter()
    lead = comm.rank == 0
    log = _log if lead else (lambda line: None)
    model = Model(net, device=args.device, seed=cfg.seed)
    if args.weights:
        report = model.load_params(args.weights)
        if lead:
            print(report, file=sys.stderr)
    if args.freeze:
        model.freeze(*args.freeze)
    train, val, val_where, val_source = _datasets(net, args.data, cfg, args.limit, log, args.val,
                                                  args.label_column)
    if args.early_stopping and not len(val):
        raise UsageError("--early-stopping watches the validation loss, but this run has no validation data",
                         help="give a validation set with --val PATH, or keep a validation split (val_fraction > 0)")
    extra = {"set": _given_sets(args.set)}
    if train.vocab is not None:
        extra["vocab"] = train.vocab
    if train.class_names is not None:
        extra["class_names"] = list(train.class_names)
    if args.label_column is not None:
        extra["label_column"] = args.label_column
    trainer = Trainer(model, cfg, train, val, progress=not args.quiet, metrics_path=args.metrics,
                      checkpoint_dir=directory, log=_log,
                      data_info={"data": args.data, "limit": args.limit, "val": val_source},
                      early_stopping=args.early_stopping, extra_meta=extra,
                      resume_hint="--resume" if args.checkpoint else f"--checkpoint {directory} --resume",
                      comm=comm, config_digest=_command_digest(args) if comm.size > 1 else None,
                      sync_batchnorm=args.sync_batchnorm)
    if args.resume:
        meta = trainer.resume()
        log(f"resuming {net.name} at epoch {meta['epoch'] + 1}, step {meta['step_in_epoch']}")
    n_params = totals(net, frozen=model.frozen)["trainable_parameters"]
    stopping = f", early stopping after {args.early_stopping} epochs without improvement" if args.early_stopping else ""
    procs = f", {comm.describe(threads)} (--batch {cfg.batch} split {cfg.batch // comm.size} per process)" \
        if comm.size > 1 else ""
    log(f"training {net.name} ({n_params:,} trainable parameters) on {train.name}: {len(train)} train / "
        f"{len(val)} validation samples ({val_where}), {cfg.describe()}{stopping}, device {model.device.name}{procs}")
    try:
        history = trainer.fit()
    except Interrupted as e:    # the trainer has said what it saved
        if comm.size > 1 and trainer._agreed_signal is None:   # a second signal on this rank alone
            comm.abort(e.exit_code)
        return e.exit_code
    if not lead:
        return 0
    dt = time.perf_counter() - t0
    last = history[-1] if history else None
    if last:
        acc = f", validation accuracy {last['val_accuracy']:.4f}" if last.get("val_accuracy") is not None else ""
        vl = f"validation loss {last['val_loss']:.4f}" if last.get("val_loss") is not None else \
            f"train loss {last['train_loss']:.4f}"
        print(f"done: {len(history)} epochs in {dt:.1f} s; {vl}{acc}")
    print(f"checkpoint: {os.path.join(directory, CHECKPOINT_NAME)}")
    best = trainer.best_epoch()
    if best is not None:
        loss = next(r["val_loss"] for r in history if r["epoch"] == best)
        print(f"best: {os.path.join(directory, BEST_NAME)} (epoch {best}, validation loss {loss:.4f})")
    return 0


# ---- eval ------------------------------------------------------------------------------------
def recorded_overrides(meta: dict, given_pairs, weights: str) -> tuple[dict, list[str]]:
    """The --set values to compile with: those given, and those the checkpoint records that were
    not given. Returns (overrides, the recorded ones applied as "k=v"). A value given that
    differs from the recorded one is a UsageError: the weights were trained for the other."""
    given = _given_sets(given_pairs)
    overrides = {k: parse_override(f"{k}={v}")[1] for k, v in given.items()}
    recorded = meta.get("set") if isinstance(meta.get("set"), dict) else {}
    applied = []
    for k, v in recorded.items():
        if not isinstance(v, (str, int, float)):
            raise CheckpointError(f"{weights} records a --set value for {k} that is not a value ({v!r})",
                                  "give a checkpoint written by `dslc run`")
        value = parse_override(f"{k}={v}")[1]
        if k in given:
            if overrides[k] != value:
                raise UsageError(f"--set {k}={given[k]} does not match {weights}, which was trained with --set {k}={v}",
                                 help=f"drop --set {k}=... (the recorded value is used), or give the weights of a "
                                      f"run with --set {k}={given[k]}")
            continue
        overrides[k] = value
        applied.append(f"{k}={v}")
    return overrides, applied


def averaged_params(arrays: dict, weights: str, log) -> dict | None:
    """A checkpoint's parameters with its exponential-moving-average weights (`--ema`) in place
    of the trained ones, said in a line; None when it holds none."""
    from .runtime.ema import averaged_params as averaged
    params = averaged(arrays)
    if params is not None:
        log(f"using the exponential-moving-average (--ema) weights {weights} holds, not the last step's")
    return params


def recorded_class_names(meta: dict) -> list[str] | None:
    """The class names a checkpoint records (an image folder's or a CSV's classes), or None."""
    names = meta.get("class_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return None


def _eval_data(args, meta, net, cfg, weights):
    """(dataset to score, its source, what part of it): a file or directory given is scored
    whole (an MNIST directory: its t10k test pair); a built-in dataset by its validation split.
    Without --data, what the checkpoint's run validated on: its --val set, or the split it held out."""
    # Metadata is JSON the checkpoint's digest vouches for, but not necessarily dslc's own: use
    # only values of the expected types.
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    recorded = {k: data[k] for k in ("data", "val") if isinstance(data.get(k), str)}
    if isinstance(data.get("limit"), int) and not isinstance(data.get("limit"), bool) and data["limit"] > 0:
        recorded["limit"] = data["limit"]
    if args.data is not None:
        source = mnist_test_set(args.data) or args.data
        whole = source not in BUILTIN_DATASETS
    elif recorded.get("val"):
        source, whole = recorded["val"], True
        _log(f"scoring {source}, the validation set {weights} was trained with (give --data for another)")
    elif recorded.get("data"):
        source, whole = recorded["data"], False
        _log(f"scoring the validation split of {source} that {weights} was trained with (give --data for another)")
    else:
        source, whole = "digits", False
    column = meta.get("label_column") if isinstance(meta.get("label_column"), str) else None
    spec = _DataSpec(net, label_column=getattr(args, "label_column", None) or column)
    vocab = meta.get("vocab") if isinstance(meta.get("vocab"), str) else None
    names = recorded_class_names(meta)
    limit = args.limit
    if limit is None and args.data is None:     # the samples the run drew (--limit) decide what it validated on
        limit = recorded.get("limit")
    if whole and args.data is not None and args.data == recorded.get("data"):
        _log(f"note: {weights} was trained on {args.data}: scoring all of it includes its training samples "
             "(leave --data out to score the validation split the run held out)")
    if whole:
        ds, separate = spec.load(source, val_fraction=0, seed=cfg.seed, limit=limit, vocab=vocab, class_names=names)
        if separate.origin is not None:         # an image folder's val/: what it holds out for scoring
            ds, source = separate, separate.origin
        what = f"all {len(ds)} samples" if limit is None else f"{len(ds)} samples, --limit {limit}"
        return ds, source, what
    # The split the run held out, when the checkpoint was trained on this source: the same seed
    # and fraction (from its settings) and the same --limit, which decides which samples were drawn.
    if args.limit is None and recorded.get("data") == source:
        limit = recorded.get("limit")
    _, ds = spec.load(source, val_fraction=cfg.val_fraction, seed=cfg.seed, limit=limit, vocab=vocab,
                      class_names=names)
    if getattr(ds, "origin", None) is not None:     # an image folder's val/, not a split of its images
        return ds, ds.origin, f"validation folder, {len(ds)} samples"
    return ds, source, f"validation split, {len(ds)} samples"


def eval_command(args, overrides) -> int:
    """Evaluate. Under an MPI launcher every rank scores its contiguous part of the data and
    the sums are reduced (the trainer's sharded evaluation); rank 0 alone prints."""
    return _on_every_rank(_eval_command, args, overrides)


def _eval_command(args, overrides, comm) -> int:
    lead = comm.rank == 0
    log = _log if lead else (lambda s: None)
    foreign = is_foreign(args.weights)      # PyTorch's formats: no training record, names mapped on load
    arrays, meta = ({}, {}) if foreign else load_checkpoint(args.weights)
    if not isinstance(meta, dict):
        meta = {}
    overrides, applied = recorded_overrides(meta, args.set, args.weights)
    if applied:
        log(f"using the --set values recorded in {args.weights}: {' '.join(applied)}")
    net, _ = compile_file(args.file, overrides)
    saved_cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    split = {k: saved_cfg[k] for k in ("seed", "val_fraction") if k in saved_cfg}
    cfg = TrainConfig.from_network(net, batch=args.batch, **split)
    model = Model(net, device=args.device)
    if foreign:
        report = model.load_params(args.weights)
        log(str(report))
    else:
        params = averaged_params(arrays, args.weights, log) \
            or {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")} or arrays
        report = model.load_params(params)
    if report.missing or report.mismatched:
        raise CheckpointError(f"{args.weights} does not hold this network's parameters:\n{report}",
                              "evaluate with the .net file and --set values the weights were trained with")
    ds, source, what = _eval_data(args, meta, net, cfg, args.weights)
    if not len(ds):
        raise RuntimeUserError(f"{source} gives no samples to evaluate on", "give --data a larger dataset")
    if comm.size > 1:
        if cfg.batch % comm.size:
            k = comm.size
            raise UsageError(f"--batch {cfg.batch} is the global batch, split evenly over {k} processes, "
                             f"but it is not a multiple of {k}",
                             help=f"give a multiple of {k}, e.g. --batch {cfg.batch - cfg.batch % k or k}")
        if len(ds) < cfg.batch:     # the batch only sizes the work: it changes no figure
            cfg = replace(cfg, batch=max(comm.size, len(ds) - len(ds) % comm.size))
        if len(ds) < comm.size:
            raise RuntimeUserError(f"{source} gives {len(ds)} samples to evaluate, fewer than the {comm.size} "
                                   "processes", "evaluate in one process (without mpiexec)")
    trainer = Trainer(model, cfg, ds, ds, log=log, comm=comm)
    classes = None
    if trainer.classify:
        classes = net.node(trainer.pred_node).type.shape[trainer.class_axis]
    topk = (1, 5) if classes and isinstance(classes, int) and classes > 5 else (1,)
    with trainer.reporting_compiles(None, "evaluation"):
        res = trainer.evaluate(ds, topk=topk, confusion=True)
    if not lead:
        return 0
    names = recorded_class_names(meta) or ds.class_names     # the checkpoint's, else a folder's or CSV's given
    if args.format == "json":
        print(json.dumps({"network": net.name, "weights": args.weights, "data": source,
                          "split": "validation" if what.startswith("validation") else "all",
                          "samples": len(ds), "loss": res["loss"], "accuracy": res["accuracy"],
                          "top5": res.get("top5"), "terms": res.get("terms"), "per_class": res.get("per_class"),
                          "confusion": res.get("confusion"),
                          "class_names": names}))
        return 0
    line = f"{net.name} on {source} ({what}): loss {res['loss']:.4f}"
    if res.get("terms"):
        line += " (" + ", ".join(f"{k} {v:.4f}" for k, v in res["terms"].items()) + ")"
    if res["accuracy"] is not None:
        line += f", top-1 accuracy {res['accuracy']:.4f}"
    if res.get("top5") is not None:
        line += f", top-5 accuracy {res['top5']:.4f}"
    print(line)
    if res.get("confusion") is not None:
        print(_confusion_text(res["confusion"], res["per_class"], names))
    return 0


def _confusion_text(confusion, per_class, names=None) -> str:
    """Per-class accuracy beside the confusion matrix (rows: true class, columns: predicted),
    or, for many classes, the classes predicted worst. `names`: the class names (an image
    folder's or a CSV's) shown beside each row's number; the columns keep the numbers."""
    k = len(confusion)
    counts = [sum(row) for row in confusion]
    label = [f"{c} {names[c]}" if names is not None and len(names) == k else str(c) for c in range(k)]
    if k > MAX_PRINTED_CLASSES:
        seen = sorted((acc, c) for c, acc in enumerate(per_class) if acc is not None)[:5]
        worst = ", ".join(f"{label[c]} {acc:.3f} ({counts[c]})" for acc, c in seen)
        return (f"lowest per-class accuracy (class, accuracy, samples): {worst}; "
                f"the {k}x{k} confusion matrix: --format json")
    width = max(3, len(str(max(max(row) for row in confusion))), len(str(k - 1)))
    named = max(len(s) for s in label) > 5
    cw = max(5, *(len(s) for s in label))
    head = (f"{'class':<{cw}}" if named else f"{'class':>5}") + f" {'n':>5} {'acc':>5}   predicted " \
        + " ".join(f"{c:>{width}}" for c in range(k))
    lines = [head]
    for c, row in enumerate(confusion):
        acc = f"{per_class[c]:.3f}" if per_class[c] is not None else "-"
        lines.append((f"{label[c]:<{cw}}" if named else f"{label[c]:>5}") + f" {counts[c]:>5} {acc:>5}             "
                     + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
