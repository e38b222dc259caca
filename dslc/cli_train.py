"""`dslc run` and `dslc eval`: the command-line side of training.

Kept apart from dslc/cli.py so that `dslc compile` / `dslc viz` never import Numba: cli.py
imports this module only when one of these commands runs.
"""
from __future__ import annotations

import os
import sys
import time

from .compiler import UsageError, compile_file
from .ops import OPS
from .runtime.data import load_dataset
from .runtime.errors import CheckpointError, RuntimeUserError
from .runtime.model import Model
from .runtime.plan import concrete
from .runtime.train import (CHECKPOINT_NAME, CheckpointDir, Interrupted, TrainConfig, Trainer,
                            check_output_file, data_roles)
from .summary import totals

DEFAULT_SEQUENCE_LENGTH = 64


def _datasets(net, source, cfg, limit, log=lambda s: None):
    x_name, y_name = data_roles(net)
    symbols = dict(net.symbols)
    for k, v in symbols.items():
        if v is None:      # a sequence length nobody set: data windows need a number
            symbols[k] = DEFAULT_SEQUENCE_LENGTH
            log(f"{k} is not set; using {k} = {DEFAULT_SEQUENCE_LENGTH} (change it with --set {k}=...)")
    xt, yt = net.node(x_name).type, net.node(y_name).type
    classes = None
    loss_term = net.node(net.node(net.loss).inputs[0])
    if OPS[loss_term.op].classifies:
        logits = net.node(loss_term.inputs[0]).type
        classes = logits.shape[loss_term.attrs.get("class_axis", 1)]
    # integer inputs are ids that embeddings look up: data ids must be below the smallest vocabulary
    vocabs = [d.attrs["vocab"] for d in net.nodes() if d.op == "embed" and x_name in d.inputs]
    train, val = load_dataset(source, x_shape=concrete(xt.shape[1:], 1, symbols), x_dtype=xt.dtype,
                              y_shape=concrete(yt.shape[1:], 1, symbols), y_dtype=yt.dtype,
                              val_fraction=cfg.val_fraction, seed=cfg.seed, limit=limit, classes=classes,
                              x_classes=min(vocabs, default=None))
    if train.classes is not None and classes is not None and train.vocab is not None and train.classes > classes:
        raise RuntimeUserError(f"the text has {train.classes} distinct characters but the network predicts {classes}",
                               f"compile with --set vocab={train.classes}")
    return train, val


def run_command(args, overrides) -> int:
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint DIR (where the checkpoint is)")
    if args.overwrite and not args.checkpoint:
        raise UsageError("--overwrite needs --checkpoint DIR (the checkpoint it replaces)")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the checkpoint and --overwrite replaces it: give one of them")
    net, warnings = compile_file(args.file, overrides)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    cfg = TrainConfig.from_network(net, epochs=args.epochs, batch=args.batch, lr=args.lr, optimizer=args.optimizer,
                                   seed=args.seed)
    # Output paths first: a path that cannot be written fails now, not after an epoch of training.
    claim = CheckpointDir(args.checkpoint, resume=args.resume, overwrite=args.overwrite) if args.checkpoint else None
    try:
        if args.metrics:
            check_output_file(args.metrics, "--metrics")
        return _train(args, net, cfg)
    finally:
        if claim is not None:
            claim.release()


def _train(args, net, cfg) -> int:
    t0 = time.perf_counter()
    model = Model(net, device=args.device, seed=cfg.seed)
    if args.weights:
        print(model.load_params(args.weights), file=sys.stderr)
    if args.freeze:
        model.freeze(*args.freeze)
    log = (lambda s: print(s, file=sys.stderr))
    train, val = _datasets(net, args.data, cfg, args.limit, log)
    trainer = Trainer(model, cfg, train, val, progress=not args.quiet, metrics_path=args.metrics,
                      checkpoint_dir=args.checkpoint, log=log, data_info={"data": args.data, "limit": args.limit})
    if args.resume:
        meta = trainer.resume()
        log(f"resuming {net.name} at epoch {meta['epoch'] + 1}, step {meta['step_in_epoch']}")
    n_params = totals(net, frozen=model.frozen)["trainable_parameters"]
    log(f"training {net.name} ({n_params:,} trainable parameters) on {train.name}: {len(train)} train / {len(val)} validation "
        f"samples, {cfg.describe()}, device {model.device.name}")
    try:
        history = trainer.fit()
    except Interrupted as e:    # the trainer has said what it saved
        return e.exit_code
    dt = time.perf_counter() - t0
    last = history[-1] if history else None
    if last:
        acc = f", validation accuracy {last['val_accuracy']:.4f}" if last.get("val_accuracy") is not None else ""
        vl = f"validation loss {last['val_loss']:.4f}" if last.get("val_loss") is not None else \
            f"train loss {last['train_loss']:.4f}"
        print(f"done: {len(history)} epochs in {dt:.1f} s; {vl}{acc}")
    if args.checkpoint:
        print(f"checkpoint: {os.path.join(args.checkpoint, CHECKPOINT_NAME)}")
    return 0


def eval_command(args, overrides) -> int:
    net, _ = compile_file(args.file, overrides)
    cfg = TrainConfig.from_network(net, batch=args.batch)
    model = Model(net, device=args.device)
    report = model.load_params(args.weights)
    if report.missing or report.mismatched:
        raise CheckpointError(f"{args.weights} does not hold this network's parameters:\n{report}",
                              "evaluate with the .net file and --set values the weights were trained with")
    train, val = _datasets(net, args.data, cfg, args.limit)
    trainer = Trainer(model, cfg, train, val, log=lambda s: print(s, file=sys.stderr))
    classes = None
    if trainer.classify:
        classes = net.node(trainer.pred_node).type.shape[trainer.class_axis]
    topk = (1, 5) if classes and isinstance(classes, int) and classes > 5 else (1,)
    with trainer.reporting_compiles(None, "evaluation"):
        res = trainer.evaluate(val if len(val) else train, topk=topk)
    line = f"{net.name} on {args.data} (validation split, {len(val)} samples): loss {res['loss']:.4f}"
    if res["accuracy"] is not None:
        line += f", top-1 accuracy {res['accuracy']:.4f}"
    if "top5" in res and res["top5"] is not None:
        line += f", top-5 accuracy {res['top5']:.4f}"
    print(line)
    return 0
