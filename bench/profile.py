"""`python -m bench.profile`: where one benchmark network's step goes, kernel call by kernel call.

    python -m bench.profile resnet18_cifar                    # inference at the bench's batch
    python -m bench.profile resnet18_cifar --batch 1          # latency
    python -m bench.profile densenet_cifar --train --top 20   # a training step, forward and backward
    python -m bench.profile lstm_lm --by kernel               # summed per kind of call

dslc only, 2 threads (bench/threads.py). After the bench's warm-up (no compile falls in a
timed pass), every kernel call of the plan (Plan.kernel_calls) is timed on its own with
time.perf_counter, in order, over --reps passes; the table gives each call's median, its share
of the summed medians, the nodes it computes (a fused call names the nodes it absorbed) and how
its kernel computes them (Kernel.describe: a conv's lowering, what it fused). An untimed pass's
median is printed beside the sum: the difference is the per-call timer and Python's loop. A
training step here is the plan's forward and backward, without the optimizer.

docs/CPU-BACKEND.md's per-kernel figures come from this command.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from .threads import set_env_before_import

BY = ("call", "kernel")


def parse_args(argv):
    from .cli import parse_names
    from .suite import MODELS
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description="Time each kernel call of one benchmark network's dslc plan (inference, or a training "
                    "step's forward and backward), 2 threads, after warm-up; print the calls that take longest.")
    parser.add_argument("model", help=f"one of: {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, help="samples per pass (default: the benchmark's batch for the model)")
    parser.add_argument("--train", action="store_true", help="profile a training step's forward and backward "
                        "(default: an inference pass)")
    parser.add_argument("--reps", type=int, default=20, help="timed passes; each call's median is shown (default 20)")
    parser.add_argument("--top", type=int, default=25, help="rows shown, longest first (default 25; 0: all)")
    parser.add_argument("--by", choices=BY, default="call",
                        help="call: one row per kernel call; kernel: calls summed per pass and kind of kernel "
                             "(Kernel.describe)")
    args = parser.parse_args(argv)
    names = parse_names(args.model, list(MODELS), "model", "model", parser)     # python -m bench's check
    if len(names) != 1:
        parser.error(f"one model at a time, got {', '.join(names)}")
    args.model = names[0]
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    if args.top < 0:
        parser.error(f"--top must be 0 (all) or more, got {args.top}")
    return args


def _label(step) -> str:
    """The nodes a call computes: its own, or the first and last of those it absorbed (the
    nodes feeding it first, then those after it)."""
    nodes = [*([step.absorbed_input] if step.absorbed_input else []), *step.absorbed_input_chain, step.node,
             *step.absorbed]
    return nodes[0] if len(nodes) == 1 else f"{nodes[0]} .. {nodes[-1]}"


def profile(runner, train: bool, reps: int) -> tuple[list[tuple], list[float]]:
    """[(pass, label, kernel description, median seconds)] per call, and the untimed passes' times."""
    step = runner.train_step if train else runner.infer_step
    plan = runner.model.last_plan
    ctx = runner.model.ctx
    ctx.training = train
    calls = plan.kernel_calls(ctx, backward=train)
    times = [[] for _ in calls]
    clock = time.perf_counter
    for _ in range(reps):
        for i, (_pass, _step, run) in enumerate(calls):
            t0 = clock()
            run()
            times[i].append(clock() - t0)
    untimed = []
    for _ in range(reps):
        t0 = clock()
        step()
        untimed.append(clock() - t0)
    rows = [(p, _label(s), s.kernel.describe(), statistics.median(t)) for (p, s, _run), t in zip(calls, times)]
    return rows, untimed


def by_kernel(rows):
    """The rows summed per (pass, kernel description), with the calls counted in the label."""
    sums, counts = {}, {}
    for p, _label, kind, seconds in rows:
        sums[(p, kind)] = sums.get((p, kind), 0.0) + seconds
        counts[(p, kind)] = counts.get((p, kind), 0) + 1
    return [(p, f"{counts[p, kind]} call{'s' * (counts[p, kind] > 1)}", kind, seconds)
            for (p, kind), seconds in sums.items()]


def render(rows, top: int) -> str:
    total = sum(r[3] for r in rows) or 1.0
    shown = sorted(rows, key=lambda r: -r[3])[:top or None]
    width = max([len(r[1]) for r in shown] + [5])
    lines = [f"{'ms':>8}  {'share':>6}  {'pass':<8}  {'nodes':<{width}}  kernel"]
    for p, label, kind, seconds in shown:
        lines.append(f"{seconds * 1e3:8.3f}  {seconds / total:6.1%}  {p:<8}  {label:<{width}}  {kind}")
    if len(shown) < len(rows):
        rest = sum(r[3] for r in sorted(rows, key=lambda r: -r[3])[len(shown):])
        lines.append(f"{rest * 1e3:8.3f}  {rest / total:6.1%}  {'':<8}  {f'{len(rows) - len(shown)} more':<{width}}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from dslc.runtime.errors import RuntimeUserError

    from .cli import WARMUP
    from .dslc_runner import DslcRunner
    from .measure import warm_up
    from .suite import MODELS
    from .threads import limit_after_import

    spec = MODELS[args.model]
    batch = args.batch or spec.batch
    pools = limit_after_import()
    try:
        runner = DslcRunner(spec, batch)
        step = runner.train_step if args.train else runner.infer_step
        warm = warm_up(step, WARMUP, runner.busy)       # builds the plan
    except RuntimeUserError as e:           # e.g. a plan larger than the memory, with the figure
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MemoryError:                     # the batch of random data itself
        print(f"error: {spec.name}'s batch of {batch} does not fit in memory\n  = help: use a smaller --batch",
              file=sys.stderr)
        return 1
    rows, untimed = profile(runner, args.train, args.reps)
    if args.by == "kernel":
        rows = by_kernel(rows)
    what = "training step (forward and backward)" if args.train else "inference pass"
    print(f"{spec.name}, batch {batch}, {what}; {'; '.join(pools[:1])}; {len(warm)} warm-up passes, "
          f"{args.reps} timed")
    print(render(rows, args.top))
    summed = sum(r[3] for r in rows)
    print(f"sum of the calls' medians {summed * 1e3:.3f} ms; an untimed {'step' if args.train else 'pass'}: "
          f"median {statistics.median(untimed) * 1e3:.3f} ms"
          + (" (with the optimizer's update)" if args.train else ""))
    return 0


if __name__ == "__main__":
    set_env_before_import()
    raise SystemExit(main())
