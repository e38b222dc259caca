"""`python -m bench`: dslc against PyTorch (eager and torch.compile) and onnxruntime, as a markdown table.

    python -m bench                                   # the full run: every network and the scaling table
    python -m bench --models lenet5_relu,lstm_lm --steps 10 --out /tmp/b.md
    python -m bench --imagenet --no-compile           # the ImageNet rows only, without torch.compile
    python -m bench --scaling length --steps 5        # one scaling series only
    python -m bench --quick --out /tmp/results.md     # the smallest setting, to prove the bench works (CI)

Per network: two subprocesses for dslc (an empty Numba cache: cold start; the filled cache:
warm start and peak memory), one for PyTorch (peak memory), then every framework in this
process, alternating, for training and inference throughput: dslc, eager PyTorch,
torch.compile (unless --no-compile) and, for inference, onnxruntime on dslc's ONNX export. A
measurement that fails is reported in the table's notes and the exit status is 1; the other
figures are still written. A column that cannot be measured on this machine (no C++ compiler
for inductor, no ONNX export) says why, and is not a failure.
"""
from __future__ import annotations

import argparse
import difflib
import gc
import os
import shutil
import sys
import tempfile
import traceback

from .measure import BenchError, WarmupRule, one_off_cost, run_worker, samples_per_s, time_alternating, warm_up
from .report import COMPILED, ONNX, ModelResult, ScalingResult, git_commit, kept_sections, machine_lines, render
from .suite import CIFAR_MODELS, IMAGENET_MODELS, MODELS, SCALING

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
QUICK_MODEL, QUICK_STEPS, QUICK_BATCH = "lenet5_relu", 3, 16
ROUNDS = 4                  # alternations of the frameworks' blocks per measurement
WARMUP = WarmupRule(min_steps=2, max_steps=20, tolerance=0.10)
QUICK_WARMUP = WarmupRule(min_steps=2, max_steps=5, tolerance=0.10)


def parse_names(text: str, known: list, what: str, option: str, parser, plural: str = "") -> list[str]:
    """The comma-separated names of `text`, each one of `known` (a usage error with a did-you-mean if not)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            parser.error(f"unknown {what} {name!r}; {hint}known {plural or what + 's'}: {', '.join(known)}")
    if not names:
        parser.error(f"{option} names no {what}")
    return names


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Train and run the benchmark networks in dslc, eager PyTorch and torch.compile side by side, "
                    "and run inference in onnxruntime on dslc's ONNX export (2 threads each); write a markdown "
                    "table of throughput, peak memory and compile times. With none of --models, --imagenet and "
                    "--scaling, every network and the scaling table (the full run); with any of them, just what "
                    "they name.")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--imagenet", action="store_true",
                        help=f"the ImageNet-sized rows ({', '.join(IMAGENET_MODELS)}, 3x224x224, batch 16)")
    parser.add_argument("--scaling", nargs="?", const="all", metavar="SERIES",
                        help="the scaling table: samples/s and peak memory as the work grows; SERIES is "
                             "all (default) or a comma-separated subset of: "
                             + ", ".join(f"{s.name} ({s.model}, {s.dimension} {s.values[0]} -> {s.values[-1]})"
                                         for s in SCALING.values()))
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the torch.compile column (inductor takes minutes to compile on 2 cores)")
    parser.add_argument("--steps", type=int, help="timed steps per framework and measurement (default 20; --quick: "
                                                  f"{QUICK_STEPS})")
    parser.add_argument("--batch", type=int, help="one batch size for every network (default: each network's "
                                                  f"own batch; --quick: {QUICK_BATCH}); not the scaling table's")
    parser.add_argument("--quick", action="store_true",
                        help=f"the smallest setting, to prove the bench works: {QUICK_MODEL} only, "
                             f"{QUICK_STEPS} steps, batch {QUICK_BATCH}, no torch.compile")
    parser.add_argument("--out", default=DEFAULT_OUT, help="markdown file to write (default: bench/RESULTS.md)")
    args = parser.parse_args(argv)
    selected = args.models is not None or args.imagenet or args.scaling is not None
    names = parse_names(args.models, list(MODELS), "model", "--models", parser) if args.models is not None else []
    if args.imagenet:
        names += [n for n in IMAGENET_MODELS if n not in names]
    if not selected:
        names = [QUICK_MODEL] if args.quick else list(CIFAR_MODELS) + list(IMAGENET_MODELS)
    args.models = names
    if args.scaling is None:
        args.scaling = [] if (selected or args.quick) else list(SCALING)
    elif args.scaling == "all":
        args.scaling = list(SCALING)
    else:
        args.scaling = parse_names(args.scaling, list(SCALING), "scaling series", "--scaling", parser, "series")
    args.steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else 20)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.batch is None and args.quick:
        args.batch = QUICK_BATCH
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be at least 1")
    args.compile = not (args.no_compile or args.quick)
    args.warmup = QUICK_WARMUP if args.quick else WARMUP
    args.memory_steps = 2 if args.quick else 3
    return args


class _Recorder:
    """Runs one measurement of one network, keeping its error (and going on) if it fails."""

    def __init__(self, result: ModelResult, write):
        self.result, self.write = result, write

    def __call__(self, what: str, measure):
        try:
            return measure()
        except Exception as e:           # noqa: BLE001 -- one failed measurement must not lose the others
            message = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            self.result.errors.append(f"{what}: {message}")
            self.write(f"{self.result.name}: {what} failed: {message}")
            if not isinstance(e, BenchError):
                traceback.print_exc(file=sys.stderr)
            return None


def bench_model(spec, args, bar) -> ModelResult:
    batch = args.batch or spec.batch
    result = ModelResult(spec.name, batch)

    def write(line):              # above the bar, on stderr with it: stdout carries only the table
        bar.write(line, file=sys.stderr)

    def phase(text):
        if bar.disable:           # not a terminal: a plain line per phase keeps logs readable
            write(f"{spec.name}: {text} ...")
        bar.set_description(f"{spec.name}: {text}")

    record = _Recorder(result, write)

    cache_dir = tempfile.mkdtemp(prefix="dslc-bench-numba-cache-")
    try:
        phase("dslc cold start")
        cold = record("dslc cold start", lambda: run_worker("dslc", spec.name, batch, 1, cache_dir))
        bar.update(1)
        phase("dslc warm start")
        warm = record("dslc warm start", lambda: run_worker("dslc", spec.name, batch, args.memory_steps, cache_dir))
        bar.update(1)
        # this process reads its kernels from args.kernel_cache: what the cold run compiled is not compiled again
        shutil.copytree(cache_dir, args.kernel_cache, dirs_exist_ok=True)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    phase("torch memory")
    torch_run = record("torch memory", lambda: run_worker("torch", spec.name, batch, args.memory_steps))
    bar.update(1)
    if cold:
        result.cold_start_s = cold["first_step_s"]
    if warm:
        result.warm_start_s = warm["first_step_s"]
        result.warm_step_s = warm.get("later_step_s")
        result.peak_rss_mib["dslc"] = warm["max_rss_mib"]
    if torch_run:
        result.peak_rss_mib["torch"] = torch_run["max_rss_mib"]

    phase("building both")
    _time_in_process(spec, batch, args, result, record, phase, tick=lambda: bar.update(1))
    gc.collect()                  # the runners' buffers go before the next network is built
    write(_summary_line(result))
    return result


def _short(e: Exception, limit: int = 160) -> str:
    """An exception as a table cell: its type and the first line of its message, cut to `limit`."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _optional_runner(result, framework, build):
    """A runner for a column that may be unavailable: built, or None with the reason noted."""
    try:
        return build()
    except Exception as e:           # noqa: BLE001 -- an unavailable column must not stop the others
        result.unavailable[framework] = _short(e)
        return None


def _time_in_process(spec, batch, args, result, record, phase, tick):
    """Throughput of every framework in this process, alternating, for training then inference."""
    from dslc.summary import totals

    from .dslc_runner import DslcRunner
    from .onnx_runner import OnnxRunner, onnx_unavailable
    from .torch_runner import TorchCompiledRunner, TorchRunner, compile_unavailable
    runners = record("build", lambda: [DslcRunner(spec, batch), TorchRunner(spec, batch)])
    if not runners:
        return
    dslc_side, torch_side = runners
    result.parameters = dslc_side.parameter_count()
    if result.parameters != torch_side.parameter_count():
        result.errors.append(f"parameter counts differ: dslc {result.parameters:,}, "
                             f"torch {torch_side.parameter_count():,}")
    result.macs_per_sample = totals(dslc_side.model.net)["macs"]
    compiled = None
    if not args.compile:
        result.unavailable[COMPILED] = "skipped (" + ("--quick" if args.quick else "--no-compile") + ")"
    elif compile_unavailable():
        result.unavailable[COMPILED] = compile_unavailable()
    else:
        compiled = _optional_runner(result, COMPILED, lambda: TorchCompiledRunner(spec, batch))
    for kind, method, figures in (("train", "train_step", result.train), ("infer", "infer_step", result.infer)):
        phase(kind)
        present = runners + ([compiled] if compiled is not None and COMPILED not in result.unavailable else [])
        if kind == "infer":
            # exported now, after training, so that it carries the weights dslc infers with
            reason = onnx_unavailable()
            if reason:
                result.unavailable[ONNX] = reason
            else:
                onnx = _optional_runner(result, ONNX, lambda: OnnxRunner(dslc_side))
                present += [onnx] if onnx is not None else []
        warm = {}
        for runner in present:
            def warm_runner(runner=runner, method=method):
                return warm_up(getattr(runner, method), args.warmup, getattr(runner, "busy", None))
            if runner.framework in (COMPILED, ONNX):
                try:
                    warm[runner.framework] = warm_runner()
                except Exception as e:   # noqa: BLE001 -- inductor failing on this network: its column says why
                    result.unavailable[runner.framework] = _short(e)
            else:
                taken = record(f"{kind} warm-up ({runner.framework})", warm_runner)
                if taken is not None:
                    warm[runner.framework] = taken
        present = [r for r in present if r.framework in warm]
        times = record(kind, lambda method=method, present=present: time_alternating(present, method, args.steps,
                                                                                    ROUNDS, tick))
        if not times:
            continue
        figures.update({fw: samples_per_s(batch, t) for fw, t in times.items()})
        for fw, taken in warm.items():
            result.warmup_steps[(kind, fw)] = len(taken)
        if COMPILED in times:
            result.compile_s[kind] = one_off_cost(warm[COMPILED], times[COMPILED])
        onnx = next((r for r in present if r.framework == ONNX), None)
        if onnx is not None:
            result.onnx_max_difference = record("onnx check", lambda onnx=onnx: onnx.max_difference(
                dslc_side.model.forward(training=False, **{dslc_side.x_name: dslc_side.x})))
    if compiled is not None:
        import torch
        torch._dynamo.reset()     # the compiled graphs and their guards go with this network


def bench_scaling(series, args, bar) -> list[ScalingResult]:
    """One scaling series, point by point."""
    return [_scaling_point(series, value, args, bar) for value in series.values]


def _scaling_point(series, value, args, bar) -> ScalingResult:
    """Training samples/s of dslc and eager PyTorch alternating in this process, then each one's
    peak memory in a fresh process."""
    from .dslc_runner import DslcRunner
    from .torch_runner import TorchRunner

    def write(line):
        bar.write(line, file=sys.stderr)

    spec, batch = series.point(value)
    length = value if series.dimension == "T" else None
    point = ScalingResult(series.name, series.model, batch, length)
    record = _Recorder(point, write)
    if bar.disable:
        write(f"scaling {point.name} ...")
    bar.set_description(f"scaling {point.name}")
    runners = record("build", lambda: [DslcRunner(spec, batch), TorchRunner(spec, batch)])
    if runners:
        def measure():
            for runner in runners:
                warm_up(runner.train_step, args.warmup, getattr(runner, "busy", None))
            return time_alternating(runners, "train_step", args.steps, ROUNDS, lambda: bar.update(1))
        times = record("train", measure)
        if times:
            point.train.update({fw: samples_per_s(batch, t) for fw, t in times.items()})
    runners = None            # the buffers go before the workers run and the next point is built
    gc.collect()
    for framework in ("dslc", "torch"):
        # After the timing, which compiled this point's kernels into this process's kernel cache: the dslc
        # worker loads them from there, so that its peak is the training's, not the LLVM compiler's.
        cache = args.kernel_cache if framework == "dslc" else None
        report = record(f"{framework} memory", lambda framework=framework, cache=cache: run_worker(
            framework, spec.name, batch, args.memory_steps, cache, length))
        if report:
            point.peak_rss_mib[framework] = report["max_rss_mib"]
    write(f"scaling {point.name}: train " + ", ".join(f"{fw} {v:,.1f}" for fw, v in point.train.items())
          + " samples/s; peak RSS " + ", ".join(f"{fw} {v:,.0f}" for fw, v in point.peak_rss_mib.items()) + " MiB")
    return point


def _summary_line(r: ModelResult) -> str:
    parts = [f"{r.name} (batch {r.batch}):"]
    for kind, figures in (("train", r.train), ("infer", r.infer)):
        if figures.get("dslc") and figures.get("torch"):
            parts.append(f"{kind} {figures['dslc']:,.1f} vs {figures['torch']:,.1f} samples/s "
                         f"({figures['dslc'] / figures['torch']:.2f}x)"
                         + "".join(f", {fw} {figures[fw]:,.1f} ({figures['dslc'] / figures[fw]:.2f}x)"
                                   for fw in (COMPILED, ONNX) if figures.get(fw)) + ";")
    if r.compile_s:
        parts.append("torch.compile " + ", ".join(f"{k} {v:.1f} s" for k, v in r.compile_s.items()) + ";")
    if r.peak_rss_mib:
        parts.append("peak RSS " + ", ".join(f"{fw} {v:,.0f}" for fw, v in r.peak_rss_mib.items()) + " MiB;")
    if r.cold_start_s is not None and r.warm_start_s is not None:
        parts.append(f"cold {r.cold_start_s:.1f} s, warm {r.warm_start_s:.1f} s")
    return " ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Numba reads NUMBA_CACHE_DIR when a kernel module is imported, so this is set before any is: the
    # cold-start workers' caches are copied here (bench_model), and the user's own kernel cache is left alone.
    # Inductor's cache likewise starts empty, so that torch.compile's compile time is a first compile's.
    args.kernel_cache = tempfile.mkdtemp(prefix="dslc-bench-kernels-")
    inductor_cache = tempfile.mkdtemp(prefix="dslc-bench-inductor-")
    os.environ["NUMBA_CACHE_DIR"] = args.kernel_cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache
    try:
        return _run(args)
    finally:
        shutil.rmtree(args.kernel_cache, ignore_errors=True)
        shutil.rmtree(inductor_cache, ignore_errors=True)


def settings_line(args) -> str:
    columns = "dslc, eager PyTorch, " + ("torch.compile" if args.compile else "no torch.compile") + \
        ", onnxruntime (inference)"
    return (f"{args.steps} timed steps per framework and measurement in {min(ROUNDS, args.steps)} alternating "
            f"rounds ({columns}); peak memory after {args.memory_steps} training steps"
            + ("; --quick" if args.quick else ""))


def _run(args) -> int:
    from tqdm import tqdm

    # every runner's library must be loaded before the thread caps are applied to them
    from . import dslc_runner, onnx_runner, torch_runner  # noqa: F401 (imported for their libraries)
    from .threads import limit_after_import
    pools = limit_after_import(with_torch=True)
    load_before = os.getloadavg()
    commit = git_commit()
    # 3 subprocesses, then the timed steps: train and infer for dslc, torch (and torch.compile), onnxruntime
    ticks_per_model = 3 + args.steps * (2 * (2 + args.compile) + 1)
    ticks = ticks_per_model * len(args.models) + sum(len(SCALING[s].values) * args.steps for s in args.scaling)
    settings = settings_line(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    kept = kept_sections(args.out)      # python -m bench.ranks's section stays
    results, scaling = [], []
    planned = len(args.models) + len(args.scaling)

    def write_out():
        # rewritten after every network and series, so that an interrupted run keeps what it measured
        done = len(results) + len(set(p.series for p in scaling))
        partial = "" if done == planned else f"; partial: {done} of {planned} networks and series measured so far"
        text = render(results, machine_lines(pools, load_before, os.getloadavg(), commit), settings + partial,
                      scaling, args.warmup.describe())
        with open(args.out, "w") as f:
            f.write(text + ("\n" + kept if kept else ""))
        return text

    with tqdm(total=ticks, unit="step", file=sys.stderr, dynamic_ncols=True,
              disable=None) as bar:          # None: a bar on a terminal only
        for name in args.models:
            results.append(bench_model(MODELS[name], args, bar))
            text = write_out()
        for name in args.scaling:
            scaling += bench_scaling(SCALING[name], args, bar)
            text = write_out()
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 1 if any(r.errors for r in results) or any(p.errors for p in scaling) else 0
