"""`python -m bench.onednn`: how much of eager PyTorch's speed on a benchmark network is oneDNN's.

    python -m bench.onednn                       # the LSTM language model
    python -m bench.onednn --models lstm_lm,resnet18_cifar --steps 10

PyTorch runs its convolutions and its LSTM through oneDNN, which generates code for the CPU it
finds (AVX-512 where there is one), and its matrix products through MKL (bench/RESULTS-GEMM.md).
This times eager PyTorch's inference pass of each network at the bench's batch, 2 threads,
with oneDNN on and with `torch.backends.mkldnn.flags(enabled=False)`, alternating, after the
bench's warm-up, and prints each median.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

from .threads import set_env_before_import


def parse_args(argv):
    from .cli import parse_names
    from .suite import MODELS
    parser = argparse.ArgumentParser(
        prog="python -m bench.onednn",
        description="Time eager PyTorch's inference on benchmark networks with oneDNN on and off (2 threads).")
    parser.add_argument("--models", default="lstm_lm", help=f"comma-separated subset of: {', '.join(MODELS)} "
                        "(default: lstm_lm)")
    parser.add_argument("--steps", type=int, default=20, help="timed passes per setting (default 20)")
    args = parser.parse_args(argv)
    args.models = parse_names(args.models, list(MODELS), "model", "--models", parser)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def median_ms(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from .cli import WARMUP
    from .measure import warm_up
    from .suite import MODELS
    from .threads import limit_after_import
    from .torch_runner import TorchRunner
    pools = limit_after_import(with_torch=True)
    # torch warns on every flags() call that TF32 on oneDNN is for Intel GPUs, which is not our case
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
    print(f"eager PyTorch {torch.__version__}, inference, {'; '.join(pools[:2])}; CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; median of {args.steps} passes per setting")
    for name in args.models:
        spec = MODELS[name]
        runner = TorchRunner(spec, spec.batch)
        with_onednn, without = [], []
        for _ in range(2):                      # alternating, so a change in load hits both
            warm_up(runner.infer_step, WARMUP)
            with_onednn.append(median_ms(runner.infer_step, args.steps))
            with torch.backends.mkldnn.flags(enabled=False):
                warm_up(runner.infer_step, WARMUP)
                without.append(median_ms(runner.infer_step, args.steps))
        on, off = statistics.median(with_onednn), statistics.median(without)
        print(f"{name} (batch {spec.batch}): oneDNN on {on:.1f} ms, off {off:.1f} ms ({off / on:.2f}x)")
    return 0


if __name__ == "__main__":
    set_env_before_import()
    raise SystemExit(main())
