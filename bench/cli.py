"""`python -m bench`: dslc against PyTorch on the six networks of issue 5, as a markdown table.

    python -m bench                                   # all six, 20 timed steps each, -> bench/RESULTS.md
    python -m bench --models lenet5_relu,lstm_lm --steps 10
    python -m bench --quick --out /tmp/results.md     # the smallest setting, to prove the bench works (CI)

Per network: two subprocesses for dslc (an empty Numba cache: cold start; the filled cache:
warm start and peak memory), one for PyTorch (peak memory), then both frameworks in this
process, alternating, for training and inference throughput. A measurement that fails is
reported in the table's notes and the exit status is 1; the other figures are still written.
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

from .measure import BenchError, run_worker, samples_per_s, time_alternating
from .report import ModelResult, git_commit, machine_lines, render
from .suite import MODELS

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
QUICK_MODEL, QUICK_STEPS, QUICK_BATCH = "lenet5_relu", 3, 16
ROUNDS = 4                  # alternations of dslc and torch blocks per measurement


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Train and run the benchmark networks in dslc and in PyTorch side by side (2 threads each) "
                    "and write a markdown table of throughput, peak memory and dslc's compile times.")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)} (default: all)")
    parser.add_argument("--steps", type=int, help="timed steps per framework and measurement (default 20; --quick: "
                                                  f"{QUICK_STEPS})")
    parser.add_argument("--batch", type=int, help="one batch size for every network (default: each network's "
                                                  f"batch from the issue's table; --quick: {QUICK_BATCH})")
    parser.add_argument("--quick", action="store_true",
                        help=f"the smallest setting, to prove the bench works: {QUICK_MODEL} only, "
                             f"{QUICK_STEPS} steps, batch {QUICK_BATCH}")
    parser.add_argument("--out", default=DEFAULT_OUT, help="markdown file to write (default: bench/RESULTS.md)")
    args = parser.parse_args(argv)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    else:
        names = [QUICK_MODEL] if args.quick else list(MODELS)
    for name in names:
        if name not in MODELS:
            close = difflib.get_close_matches(name, MODELS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            parser.error(f"unknown model {name!r}; {hint}known models: {', '.join(MODELS)}")
    if not names:
        parser.error("--models names no model")
    args.models = names
    args.steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else 20)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.batch is None and args.quick:
        args.batch = QUICK_BATCH
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be at least 1")
    args.warmup = 1 if args.quick else 2
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


def _time_in_process(spec, batch, args, result, record, phase, tick):
    """Throughput of both frameworks in this process, alternating, for training then inference."""
    from dslc.summary import totals

    from .dslc_runner import DslcRunner
    from .torch_runner import TorchRunner
    runners = record("build", lambda: [DslcRunner(spec, batch), TorchRunner(spec, batch)])
    if not runners:
        return
    dslc_side, torch_side = runners
    result.parameters = dslc_side.parameter_count()
    if result.parameters != torch_side.parameter_count():
        result.errors.append(f"parameter counts differ: dslc {result.parameters:,}, "
                             f"torch {torch_side.parameter_count():,}")
    result.macs_per_sample = totals(dslc_side.model.net)["macs"]
    for kind, method, figures in (("train", "train_step", result.train), ("infer", "infer_step", result.infer)):
        phase(kind)
        times = record(kind, lambda method=method: time_alternating(runners, method, args.steps, args.warmup,
                                                                    ROUNDS, tick))
        if times:
            figures.update({fw: samples_per_s(batch, t) for fw, t in times.items()})


def _summary_line(r: ModelResult) -> str:
    parts = [f"{r.name} (batch {r.batch}):"]
    for kind, figures in (("train", r.train), ("infer", r.infer)):
        if figures.get("dslc") and figures.get("torch"):
            parts.append(f"{kind} {figures['dslc']:,.1f} vs {figures['torch']:,.1f} samples/s "
                         f"({figures['dslc'] / figures['torch']:.2f}x);")
    if r.peak_rss_mib:
        parts.append("peak RSS " + ", ".join(f"{fw} {v:,.0f}" for fw, v in r.peak_rss_mib.items()) + " MiB;")
    if r.cold_start_s is not None and r.warm_start_s is not None:
        parts.append(f"cold {r.cold_start_s:.1f} s, warm {r.warm_start_s:.1f} s")
    return " ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Numba reads NUMBA_CACHE_DIR when a kernel module is imported, so this is set before any is: the
    # cold-start workers' caches are copied here (bench_model), and the user's own kernel cache is left alone.
    args.kernel_cache = tempfile.mkdtemp(prefix="dslc-bench-kernels-")
    os.environ["NUMBA_CACHE_DIR"] = args.kernel_cache
    try:
        return _run(args)
    finally:
        shutil.rmtree(args.kernel_cache, ignore_errors=True)


def _run(args) -> int:
    from tqdm import tqdm

    # both runners' libraries must be loaded before the thread caps are applied to them
    from . import dslc_runner, torch_runner  # noqa: F401 (imported for their libraries)
    from .threads import limit_after_import
    pools = limit_after_import(with_torch=True)
    load_before = os.getloadavg()
    commit = git_commit()
    ticks_per_model = 3 + 2 * 2 * args.steps          # 3 subprocesses, then train and infer for two frameworks
    settings = (f"{args.steps} timed steps per framework and measurement in {min(ROUNDS, args.steps)} alternating "
                f"rounds after {args.warmup} warm-up step(s); peak memory after {args.memory_steps} training steps"
                + ("; --quick" if args.quick else ""))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    results = []
    with tqdm(total=ticks_per_model * len(args.models), unit="step", file=sys.stderr, dynamic_ncols=True,
              disable=None) as bar:          # None: a bar on a terminal only
        for name in args.models:
            results.append(bench_model(MODELS[name], args, bar))
            # rewritten after every network, so that an interrupted run keeps what it measured
            done = "" if len(results) == len(args.models) else \
                f"; partial: {len(results)} of {len(args.models)} networks measured so far"
            text = render(results, machine_lines(pools, load_before, os.getloadavg(), commit), settings + done)
            with open(args.out, "w") as f:
                f.write(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0
