"""A fresh process that builds one network, trains a few steps and reports what it cost.

    python -m bench.worker --framework dslc --model lenet5_relu --batch 64 --steps 3

Prints one JSON object on its last stdout line:
  first_step_end: wall-clock time (time.time()) at the end of the first training step; the
                  parent subtracts its own time.time() from just before the launch, so the
                  figure covers interpreter start, imports, compilation (dslc: Numba kernels,
                  cold or from the cache in NUMBA_CACHE_DIR) and the first step;
  later_step_s:   the median duration of the steps after the first (null with one step): what
                  the first step costs once everything is loaded, so the parent can tell the
                  start-up from the step's own work;
  max_rss_mib:    peak resident memory of the process after all the steps: VmHWM of
                  /proc/self/status. Not getrusage's ru_maxrss: Linux carries that across
                  execve, so a worker launched from the (large) benchmark process would report
                  the parent's peak instead of its own.
Each framework runs in its own process so that neither's libraries count in the other's memory:
a dslc worker never imports torch.
"""
from .threads import set_env_before_import

set_env_before_import()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def peak_rss_mib() -> float:
    """The peak resident memory of this process image (see the module docstring)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024          # the line reads "VmHWM:   123456 kB"
    except OSError:
        pass
    # no procfs (macOS): ru_maxrss, in bytes there
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--framework", choices=("dslc", "torch"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True, help="training steps in all, the first included")
    parser.add_argument("--length", type=int, help="sequence length T of a sequence network (default: its own)")
    args = parser.parse_args(argv)

    from .suite import MODELS
    from .threads import limit_after_import
    if args.framework == "dslc":
        from .dslc_runner import DslcRunner as Runner
    else:
        from .torch_runner import TorchRunner as Runner
    limit_after_import(with_torch=args.framework == "torch")
    spec = MODELS[args.model]
    if args.length is not None:
        spec = spec.with_length(args.length)
    runner = Runner(spec, args.batch)
    runner.train_step()
    first_step_end = time.time()
    later = []
    for _ in range(args.steps - 1):
        t0 = time.perf_counter()
        runner.train_step()
        later.append(time.perf_counter() - t0)
    later_step_s = sorted(later)[len(later) // 2] if later else None
    print(json.dumps({"first_step_end": first_step_end, "later_step_s": later_step_s,
                      "max_rss_mib": peak_rss_mib()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
