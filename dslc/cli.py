"""The `dslc` command: compile, viz, run, eval, ops.

Exit codes: 0 ok, 1 errors in the program (or data, or a checkpoint), 2 bad usage
(missing file, bad flag). A Python traceback is never shown for user mistakes; an
unexpected internal failure prints one line saying so and exits 3.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager

from . import summary
from .artifact import save_artifact
from .compiler import UsageError, compile_file, parse_override
from .diagnostics import CompileError, did_you_mean
from .elaborate import op_signature
from .ops import OPS
from .train_section import DEFAULT_OPTIMIZER, OPTIMIZERS
from .viz import RANKDIRS, parse_fit, render

# The training, prediction and inspection commands import the runtime (and so Numba, ~0.3 s
# even with warm caches) inside the functions that run them, so `dslc compile`, `dslc viz` and
# `dslc ops` never pay for it (tests/test_structure.py checks that they do not).


FILE_HELP = "the .net file"
SET_HELP = "override a network parameter, e.g. --set classes=10 (repeatable)"
DEVICE_HELP = "cpu (default), cuda (an NVIDIA GPU via numba-cuda), or auto (cuda when one is usable)"


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage raises instead of exiting, so main() owns every exit code."""

    def error(self, message):
        raise UsageError(message, help=f"run `{self.prog} --help`")


def _overrides(pairs):
    out = {}
    for p in pairs or []:
        k, v = parse_override(p)
        out[k] = v
    return out


def _print_warnings(warnings):
    for w in warnings:
        print(w.render(), file=sys.stderr)
        print(file=sys.stderr)


def cmd_compile(args) -> int:
    net, warnings = compile_file(args.file, _overrides(args.set))
    if args.output:
        _refuse_to_overwrite_an_input(args.output, net.source_files)
    _print_warnings(warnings)
    if args.format == "json":
        print(json.dumps(summary.to_json(net), indent=1))
    else:
        print(summary.to_text(net))
    if args.output:
        try:
            save_artifact(net, args.output)
        except OSError as e:
            raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _refuse_to_overwrite_an_input(output: str, inputs: list[str]):
    """`-o` names a file the program was read from (the same file, by any path or link): writing
    there would replace the source with JSON."""
    for i, path in enumerate(inputs):
        try:
            same = os.path.samefile(output, path)
        except (OSError, ValueError):      # either does not exist (yet): not the same file
            continue
        if same:
            what = "the program's source" if i == 0 else f"imported by {inputs[0]}"
            raise UsageError(f"-o {output} would overwrite {path}, {what}",
                             help="write the compiled network to a new file, e.g. -o net.json")


def cmd_viz(args) -> int:
    net, warnings = compile_file(args.file, _overrides(args.set))
    _print_warnings(warnings)
    fit = parse_fit(args.fit) if args.fit else None
    msg = render(net, args.output, depth=args.depth, rankdir=args.rankdir, dpi=args.dpi, fit=fit)
    print(msg, file=sys.stderr)
    return 0


def cmd_ops(args) -> int:
    names = [args.name] if args.name else sorted(OPS)
    for n in names:
        if n not in OPS:
            raise UsageError(f"no op named `{n}`", help=did_you_mean(n, OPS) or "run `dslc ops` for the list")
        op = OPS[n]
        print(f"{op_signature(op):60s} [{op.family}] {op.doc}")
    return 0


def _one_process(command: str) -> None:
    """Only `dslc run` and `dslc eval` share their work among the processes of an MPI launcher;
    any other command would be done again, whole, by every rank (and write the same files)."""
    from .runtime.distributed import launched_processes
    k = launched_processes()
    if k > 1:
        raise UsageError(f"`dslc {command}` runs in one process, but it was started by an MPI launcher with "
                         f"{k} processes", help=f"run `dslc {command}` without mpiexec/srun; `dslc run` and "
                         "`dslc eval` (one set of weights) are the commands that use several processes")


def cmd_lr_find(args) -> int:
    args.lr_find = args.lr_find or True
    return cmd_run(args)


def cmd_run(args) -> int:
    if args.lr_find:        # the range test trains nothing to keep (dslc/cli_lr_find.py)
        _one_process("lr-find")
        from .cli_lr_find import lr_find_command
        return lr_find_command(args, _overrides(args.set))
    from .cli_train import run_command
    return run_command(args, _overrides(args.set))


def cmd_eval(args) -> int:
    if len(dict.fromkeys(args.weights)) > 1:      # an ensemble (dslc/cli_ensemble.py)
        _one_process("eval (an ensemble)")
        from .cli_ensemble import eval_ensemble_command
        return eval_ensemble_command(args)
    args.weights = args.weights[0]
    from .cli_train import eval_command
    return eval_command(args, _overrides(args.set))


def cmd_predict(args) -> int:
    _one_process("predict")
    from .cli_predict import predict_command
    return predict_command(args)


def cmd_inspect(args) -> int:
    _one_process("inspect")
    from .cli_inspect import inspect_command
    return inspect_command(args)


def cmd_plot(args) -> int:
    _one_process("plot")
    from .cli_plot import plot_command
    return plot_command(args)


def cmd_sample(args) -> int:
    _one_process("sample")
    from .cli_sample import sample_command
    return sample_command(args)


def cmd_export(args) -> int:
    _one_process("export")
    from .cli_export import export_command
    return export_command(args)


def _add_export_command(sub):
    """`dslc export` (dslc/cli_export.py): a format is a FORMATS entry there and a --format choice here."""
    x = sub.add_parser("export", help="write trained weights for other tools: an ONNX model (onnxruntime, Netron)")
    x.add_argument("file", help="the .net file the weights were trained with")
    x.add_argument("--weights", required=True, metavar="CKPT",
                   help="last.ckpt / best.ckpt of a run, a file net.save() wrote, or PyTorch weights "
                        "(.safetensors, .npz, .pt/.pth)")
    x.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write, e.g. model.onnx")
    x.add_argument("--format", choices=("onnx", "safetensors"), default="onnx",
                   help="what to write (default onnx; safetensors: the weights, torch-named)")
    x.add_argument("--opset", type=int, metavar="N", help="the ONNX opset the model states (default 17)")
    x.add_argument("--set", action="append", metavar="K=V",
                   help="override a network parameter (repeatable; the checkpoint's recorded values apply)")
    x.set_defaults(func=cmd_export)


def _add_use_commands(sub):
    """`dslc predict` and `dslc inspect` (dslc/cli_predict.py, dslc/cli_inspect.py)."""
    pr = sub.add_parser("predict", help="run trained weights on images or arrays: top-k classes, or outputs to .npz")
    pr.add_argument("file", help=FILE_HELP)
    pr.add_argument("--weights", required=True, nargs="+", action="extend", metavar="CKPT",
                    help="last.ckpt / best.ckpt of a run, net.save(), or PyTorch weights (.safetensors, .npz, "
                         ".pt/.pth); several: an ensemble, whose class "
                         "probabilities are averaged")
    pr.add_argument("inputs", nargs="*", metavar="INPUT", help="images (PNG, JPEG, ...), .npy or .npz files")
    pr.add_argument("--top", type=int, metavar="K", help="classes to list per sample (default 5, or fewer classes)")
    pr.add_argument("-o", "--output", metavar="OUT.npz", help="write every output here instead of printing")
    pr.add_argument("--masks", metavar="DIR", help="a per-pixel classifier (segmentation, e.g. unet.net): write a "
                                                   "palette PNG of each input's classes into DIR")
    pr.add_argument("--invert", action="store_true", help="invert images (dark ink on white -> light on dark)")
    pr.add_argument("--set", action="append", metavar="K=V", help=SET_HELP)
    pr.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help=DEVICE_HELP)
    pr.set_defaults(func=cmd_predict)

    i = sub.add_parser("inspect", help="draw what trained weights do: saliency, filters, activations, occlusion, "
                                       "t-SNE, top patches, class models, DeepDream")
    i.add_argument("file", help=FILE_HELP)
    i.add_argument("--weights", required=True, metavar="CKPT", help="last.ckpt / best.ckpt of a run, or net.save()")
    i.add_argument("kind", choices=("saliency", "filters", "activations", "occlusion", "tsne", "patches", "class",
                                    "dream"),
                   help="saliency: |d class score / d input| for --input; filters: the first conv layer's filters; "
                        "activations: --layer's maps for --input; occlusion: the class probability's drop under a "
                        "patch slid over --input; tsne: t-SNE of --layer's features over --data, by class; "
                        "patches: the --data patches that most activate --layer's channels; class: the input "
                        "maximising --class's score (L2-regularised gradient ascent); dream: --input changed to "
                        "raise the norm of --layer's activations (DeepDream)")
    i.add_argument("--layer", metavar="NAME", help="the layer to show (activations, tsne, patches, dream)")
    i.add_argument("--channel", type=int, metavar="C", help="patches: one channel of --layer (default: the first 8)")
    i.add_argument("--top", type=int, metavar="K", help="patches: samples per channel (9)")
    i.add_argument("--steps", type=int, metavar="N", help="class, dream: gradient-ascent steps (200, 20)")
    i.add_argument("--lr", type=float, metavar="R", help="class: the ascent's rate (0.1); dream: the mean change "
                                                         "per pixel per step (0.02)")
    i.add_argument("--l2", type=float, metavar="L", help="class: the weight of the ||input||^2 penalty (0.01)")
    i.add_argument("--patch", type=int, default=2, metavar="P", help="occlusion: the square's side in pixels (2)")
    i.add_argument("--stride", type=int, default=1, metavar="S", help="occlusion: its step in pixels (1)")
    i.add_argument("--fill", type=float, default=0.0, metavar="V",
                   help="occlusion: the value the square holds (0: the digits' background)")
    i.add_argument("--data", metavar="SOURCE", help="tsne, patches: the dataset (digits, mnist directory, .npz)")
    i.add_argument("--limit", type=int, metavar="N", help="tsne: samples to embed (300); patches: to search (1000)")
    i.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the picture to write")
    i.add_argument("--input", metavar="IMG", help="the image (or .npy/.npz sample) to explain")
    i.add_argument("--class", dest="cls", type=int, metavar="K", help="the class to explain (default: the predicted)")
    i.add_argument("--output-name", metavar="NAME", help="the network output holding the class scores")
    i.add_argument("--invert", action="store_true", help="invert images (dark ink on white -> light on dark)")
    i.add_argument("--set", action="append", metavar="K=V", help=SET_HELP)
    i.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help=DEVICE_HELP)
    i.set_defaults(func=cmd_inspect)

    pl = sub.add_parser("plot", help="draw training curves from a --metrics file: loss and accuracy per epoch")
    pl.add_argument("metrics", metavar="METRICS.jsonl", help="the file `dslc run --metrics` wrote")
    pl.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the picture to write")
    pl.set_defaults(func=cmd_plot)

    sa = sub.add_parser("sample", help="generate text from a trained character model",
                        description="Print --prime and then --length characters drawn one at a time. A chain of "
                                    "embed, recurrent, dense and elementwise layers is stepped one character at a "
                                    "time with its recurrent state carried; other models, or --window W, re-run "
                                    "the model over a sliding window of the last W characters per character.")
    sa.add_argument("file", help=FILE_HELP)
    sa.add_argument("--weights", required=True, metavar="CKPT", help="last.ckpt / best.ckpt of a text run")
    sa.add_argument("--prime", metavar="TEXT", help="the text to continue (default: a newline)")
    sa.add_argument("--length", type=int, default=200, metavar="N", help="characters to generate (default 200)")
    sa.add_argument("--temperature", type=float, default=1.0, metavar="T",
                    help="divides the scores before the softmax: below 1 safer, above 1 more varied, "
                         "0 always the likeliest (default 1)")
    sa.add_argument("--seed", type=int, default=0, help="the random draws' seed (default 0)")
    sa.add_argument("--window", type=int, metavar="W",
                    help="re-run the model over the last W characters per step instead of carrying the state "
                         "(default for models that cannot be stepped: the sequence length T it was trained with)")
    sa.add_argument("--set", action="append", metavar="K=V", help=SET_HELP)
    sa.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help=DEVICE_HELP)
    sa.set_defaults(func=cmd_sample)


def _version() -> str:
    """The installed distribution's version; the package's own where dslc runs from a source tree."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dslc")
    except PackageNotFoundError:
        from . import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dslc", description="Compile, check, draw and train neural networks written in the dslc language.")
    p.add_argument("--version", action="version", version=f"dslc {_version()}", help="print dslc's version and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    c = sub.add_parser("compile", help="check a .net file and print its summary")
    c.add_argument("file", help=FILE_HELP)
    c.add_argument("--set", action="append", metavar="K=V", help="override a network parameter (repeatable)")
    c.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: the layer table and totals (default); json: one object")
    c.add_argument("-o", "--output", metavar="OUT", help="write the compiled network (JSON) here")
    c.set_defaults(func=cmd_compile)

    v = sub.add_parser("viz", help="draw a .net file with Graphviz")
    v.add_argument("file", help=FILE_HELP)
    v.add_argument("-o", "--output", required=True, metavar="OUT", help="out.svg, out.png, out.pdf or out.dot")
    v.add_argument("--depth", type=int, default=None, metavar="N", help="collapse blocks nested deeper than N")
    v.add_argument("--rankdir", choices=RANKDIRS, default="TB", type=str.upper,
                   help="TB: top to bottom, like the source (default); LR: left to right, for wide slides")
    v.add_argument("--dpi", type=int, metavar="N", help="a PNG's resolution (default 120; 200-300 for print)")
    v.add_argument("--fit", metavar="W:H",
                   help="wrap a long chain into rows (LR) or columns (TB) so the picture's shape approaches "
                        "W:H, e.g. 16:9 for a slide")
    v.add_argument("--set", action="append", metavar="K=V", help="override a network parameter (repeatable)")
    v.set_defaults(func=cmd_viz)

    o = sub.add_parser("ops", help="list the built-in ops and their arguments")
    o.add_argument("name", nargs="?", help="one op to describe (default: every op)")
    o.set_defaults(func=cmd_ops)

    # `dslc lr-find FILE ...` is `dslc run FILE --lr-find ...`: one set of flags for both
    run = sub.add_parser("run", help="train a network")
    lr_find = sub.add_parser("lr-find", help="the learning-rate range test (Smith 2017): loss against a rate rising "
                             "from 1e-7 to 10, and the suggested rate; trains nothing to keep (dslc run --lr-find)")
    for r in (run, lr_find):
        r.add_argument("file", help=FILE_HELP)
        r.add_argument("--data", default="digits",
                       help="digits, synthetic, chars, or a path: .npz (x, y), .csv (a header, a label column), "
                            ".txt, MNIST idx, or an image folder DIR/ (a subfolder per class, or DIR/train and "
                            "DIR/val of them; streamed from disk when it is larger than a quarter of RAM)")
        r.add_argument("--label-column", metavar="NAME",
                       help="the label column of a --data .csv file (default: label)")
        r.add_argument("--val", metavar="PATH",
                       help="a separate validation set, in --data's formats (default: a split of --data, or the "
                            "MNIST t10k pair beside a train pair in a --data directory)")
        r.add_argument("--epochs", type=int, metavar="N",
                       help="passes over the training data (default: train { }, else 10)")
        r.add_argument("--batch", type=int, metavar="B", help="samples per step (default: train { }, else 32)")
        r.add_argument("--lr", type=float, help="learning rate (default: train { }, else the optimizer's)")
        r.add_argument("--optimizer", choices=tuple(OPTIMIZERS), metavar="NAME",
                       help=f"{', '.join(OPTIMIZERS)} (default: train {{ }}, else {DEFAULT_OPTIMIZER})")
        r.add_argument("--seed", type=int, help="seeds initialisation, shuffling, dropout and augmentation (default 0)")
        r.add_argument("--set", action="append", metavar="K=V", help=SET_HELP)
        r.add_argument("--checkpoint", metavar="DIR",
                       help="save last.ckpt (every epoch) and best.ckpt (lowest validation loss) here; "
                            "default: a new numbered directory runs/NETWORK/N")
        r.add_argument("--ema", type=float, metavar="DECAY",
                       help="also keep exponential-moving-average weights (e.g. 0.999): validated each epoch and saved "
                            "in the checkpoint, where eval and predict use them")
        r.add_argument("--early-stopping", type=int, metavar="N",
                       help="stop after N epochs without a lower validation loss")
        r.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint")
        r.add_argument("--overwrite", action="store_true",
                       help="start afresh even though --checkpoint DIR holds a checkpoint (it is replaced)")
        r.add_argument("--metrics", metavar="FILE.jsonl", help="append one JSON object per epoch")
        r.add_argument("--limit", type=int, help="use only the first N samples of the data")
        r.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help=DEVICE_HELP)
        r.add_argument("--weights", metavar="CKPT",
                       help="start from these parameters (transfer learning): a checkpoint, or PyTorch weights in "
                            ".safetensors, .npz or .pt/.pth (torchvision's names mapped to the zoo's)")
        r.add_argument("--freeze", action="append", metavar="PREFIX",
                       help="freeze parameters under this name, e.g. layer1 (repeatable)")
        r.add_argument("--freeze-all-but", action="append", metavar="PREFIX",
                       help="freeze every parameter not under this name, e.g. fc: train only a new head (repeatable)")
        r.add_argument("--quiet", action="store_true", help="no progress bar")
        r.add_argument("--threads", type=int, metavar="N",
                       help="Numba threads of this process (default: every core; under mpiexec, the node's cores "
                            "divided among its ranks)")
        r.add_argument("--sync-batchnorm", action="store_true",
                       help="under mpiexec: batchnorm statistics over the global batch, as in one process "
                            "(default: each process's own)")
    run.set_defaults(func=cmd_run)
    run.add_argument("--lr-find", nargs="?", const=True, default=None, metavar="PLOT.png",
                   help="instead of training, run the learning-rate range test (rate rising exponentially from "
                        "1e-7 to 10): print loss against rate and the suggested rate, draw them to PLOT.png if "
                        "given; saves nothing")
    run.add_argument("--lr-find-steps", type=int, default=100, metavar="N", help="--lr-find's batches (100)")
    lr_find.add_argument("-o", dest="lr_find", metavar="PLOT.png", help="draw loss against rate to this picture")
    lr_find.add_argument("--steps", dest="lr_find_steps", type=int, default=100, metavar="N",
                         help="batches of the test, each at a higher rate (100)")
    lr_find.set_defaults(func=cmd_lr_find)

    e = sub.add_parser("eval", help="evaluate trained weights")
    e.add_argument("file", help=FILE_HELP)
    e.add_argument("--weights", required=True, metavar="CKPT", nargs="+", action="extend",
                   help="last.ckpt / best.ckpt of a run, or PyTorch weights (.safetensors, .npz, .pt/.pth); "
                        "several: an ensemble, scored on its averaged class probabilities")
    e.add_argument("--data", help="a file or directory (scored whole), or a built-in dataset (its validation "
                                  "split); default: the data the checkpoint was validated on")
    e.add_argument("--label-column", metavar="NAME",
                   help="the label column of a --data .csv file (default: the one the run used, or label)")
    e.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: a summary line and, for classifiers, the confusion matrix (default); json: one object")
    e.add_argument("--batch", type=int, metavar="B", help="samples per forward pass (memory, not results)")
    e.add_argument("--set", action="append", metavar="K=V", help=SET_HELP)
    e.add_argument("--limit", type=int, metavar="N", help="score only the first N samples")
    e.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help=DEVICE_HELP)
    e.set_defaults(func=cmd_eval)
    _add_use_commands(sub)
    _add_export_command(sub)
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job) outside training: handled like Ctrl-C."""
    signum = signal.SIGTERM


def _on_sigterm(signum, frame):
    raise _Terminated()


@contextmanager
def _sigterm_like_ctrl_c():
    """SIGTERM raises like SIGINT while a command runs (training defers both to its step
    boundary, runtime/train.py), unless the process was started with it ignored; the previous
    handler comes back afterwards (main may run inside another program, or a test)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if previous[signal.SIGTERM] is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        for s, handler in previous.items():     # _interrupted may have set them to ignore
            if handler is not None:
                signal.signal(s, handler)


def _interrupted(e: KeyboardInterrupt) -> int:
    """Exit code 130 (SIGINT) or 143 (SIGTERM). A run that saved or stopped has said so; otherwise
    one line. A further signal while exiting must not print a traceback, so it is ignored from here."""
    signum = getattr(e, "signum", signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    if not getattr(e, "message", None):
        print("interrupted" if signum == signal.SIGINT else "terminated", file=sys.stderr)
    return 128 + int(signum)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        with _sigterm_like_ctrl_c():
            try:
                return _main(parser, argv)
            except KeyboardInterrupt as e:  # one raised while handling another error, too
                return _interrupted(e)
    finally:
        if argv is None and threading.current_thread() is threading.main_thread():
            # The program (argv from the command line) exits with the command's code now: a
            # signal landing from here on would kill it by the signal or print a traceback from
            # the interpreter's shutdown, after everything was done and said.
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)


def _main(parser, argv) -> int:
    try:
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:   # reported here rather than by argparse, whose help names `dslc --help`
                where = f"dslc {args.command}" if getattr(args, "command", None) else "dslc"
                raise UsageError(f"unrecognized arguments: {' '.join(extra)}", help=f"run `{where} --help`")
        except SystemExit as e:   # `--help` prints and exits 0 inside argparse; return it like any command
            return e.code or 0
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except CompileError as e:
        for d in e.diagnostics:
            print(d.render(), file=sys.stderr)
            print(file=sys.stderr)
        n = len(e.diagnostics)
        print(f"{n} error{'s' * (n != 1)}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.help:
            print(f"  = help: {e.help}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback for the user
        from dslc.runtime.errors import RuntimeUserError
        if isinstance(e, RuntimeUserError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if os.environ.get("DSLC_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e}\n  = help: this is a bug in dslc; "
              f"rerun with DSLC_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
