"""`dslc run FILE --lr-find [PLOT.png]` (and `dslc lr-find`): the learning-rate range test."""
from __future__ import annotations

import sys

from .cli_inputs import _check_output_path, _log, _pyplot, _save
from .compiler import UsageError, compile_file


def lr_find_command(args, overrides) -> int:
    """`dslc run FILE --lr-find [PLOT.png]`: the learning-rate range test (runtime/lr_find.py) on
    the run's data and optimizer; prints loss against rate and the suggested rate, draws them
    with a path, and writes no checkpoint."""
    from .cli_train import _datasets
    from .runtime.lr_find import lr_range_test
    from .runtime.model import Model
    from .runtime.train import TrainConfig
    net, warnings = compile_file(args.file, overrides)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    cfg = TrainConfig.from_network(net, epochs=args.epochs, batch=args.batch, lr=args.lr, optimizer=args.optimizer,
                                   seed=args.seed, ema=args.ema)
    plot = args.lr_find if isinstance(args.lr_find, str) else None
    if plot:
        _check_output_path(plot, ".png", [args.file])
    for flag, given in (("--resume", args.resume), ("--checkpoint", args.checkpoint), ("--metrics", args.metrics),
                        ("--early-stopping", args.early_stopping), ("--overwrite", args.overwrite)):
        if given:
            raise UsageError(f"--lr-find trains nothing to keep: {flag} does not go with it",
                             f"drop {flag}, or drop --lr-find to train")
    steps = args.lr_find_steps
    if steps < 5:
        flag = "--steps" if args.command == "lr-find" else "--lr-find-steps"
        raise UsageError(f"{flag} {steps}: give 5 or more", f"e.g. {flag} 100")
    model = Model(net, device=args.device, seed=cfg.seed)
    if args.weights:
        _log(str(model.load_params(args.weights)))
    freeze = list(args.freeze or [])
    if getattr(args, "freeze_all_but", None):
        from .cli_train import _all_but
        freeze += _all_but(net, args.freeze_all_but)
    if freeze:
        model.freeze(*freeze)
    train, _, _, _ = _datasets(net, args.data, cfg, args.limit, _log, args.val, getattr(args, "label_column", None))
    _log(f"learning-rate range test: {net.name} on {train.name} ({len(train)} samples), {cfg.optimizer} "
         f"with the rate rising from 1e-07 to 10 over {steps} batches of {cfg.batch}; nothing is saved")
    r = lr_range_test(model, cfg, train, 1e-7, 10.0, steps)
    print(f"{'lr':>10}  {'loss':>8}  {'smoothed':>8}")
    every = max(1, len(r["lr"]) // 20)
    for i in range(0, len(r["lr"]), every):
        print(f"{r['lr'][i]:10.3g}  {r['loss'][i]:8.4f}  {r['smoothed'][i]:8.4f}")
    if r["stopped"]:
        print(f"stopped after {len(r['lr'])} steps: {r['stopped']}")
    print(f"suggested lr {r['suggested']:.3g} (steepest fall of the smoothed loss); lowest loss at "
          f"{r['lowest']:.3g} (a tenth of it: {r['lowest'] / 10:.3g})")
    if plot:
        plt = _pyplot("run --lr-find")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(r["lr"], r["loss"], alpha=0.3, label="loss")
        ax.plot(r["lr"], r["smoothed"], label="smoothed")
        ax.axvline(r["suggested"], color="red", linestyle="--", linewidth=1, label=f"suggested {r['suggested']:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"{net.name}: learning-rate range test", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(plt, fig, plot)
        print(f"wrote {plot}")
    return 0
