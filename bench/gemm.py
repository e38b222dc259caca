"""`python -m bench.gemm`: the matrix products the kernels run, dslc's BLAS against PyTorch's, shape by shape.

    python -m bench.gemm                                # the benchmark networks' hot products
    python -m bench.gemm --shapes 64x256x64,1024x1x256  # M x N x K of your own
    python -m bench.gemm --markdown                     # a table for bench/RESULTS-GEMM.md

Most of every benchmark network's time is matrix products (python -m bench.profile), so the
rate of one product bounds what the kernels can reach. Each row is C (M x N) = A (M x K) @ B
(K x N) in float32, on one thread for both sides, as each Numba worker runs its own BLAS call:

  * dslc: dslc.runtime.cpu.blas.gemm (OpenBLAS from scipy-openblas32; GEMV where N or M is 1),
    called from jitted code in a loop, as the kernels call it;
  * torch: torch.mm(A, B, out=C) in a Python loop, which adds its own call cost per product
    (printed; it matters only for the smallest rows).

Each side runs the product untimed until it is warm (the bench's warm-up rule), then --reps
timed batches of enough products to last about 2 ms each; the row gives each side's median
GFLOP/s and their ratio. Both sides' products are checked against float64 numpy before any
timing: a wrong result is an error, not a figure. Which kernels each side runs (OpenBLAS's
kernel set, OPENBLAS_CORETYPE, PyTorch's CPU capability) heads the output: on a machine whose
environment pins OpenBLAS to older kernels, dslc's figures are those kernels' (bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass

from .threads import set_env_before_import


@dataclass(frozen=True)
class Product:
    m: int
    n: int
    k: int
    where: str = ""             # which kernel of which benchmark network runs it

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k

    @property
    def label(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"


# The products that take most of the benchmark networks' time, at the bench's batch on 2 workers
# (python -m bench.profile): the Winograd widths are WinogradPlan's chunks, the im2col ones
# conv.py's (MIN_GEMM_COLUMNS), the LSTM's _step_gemm's blocks.
NETWORK_PRODUCTS = (
    Product(64, 256, 64, "resnet18_cifar layer1: a Winograd F(4x4) grid point, 64 -> 64"),
    Product(128, 256, 128, "resnet18_cifar layer2: Winograd F(4x4), 128 -> 128"),
    Product(256, 128, 256, "resnet18_cifar layer3: Winograd F(4x4), 256 -> 256"),
    Product(512, 128, 512, "resnet18_cifar layer4: Winograd F(2x2), 512 -> 512"),
    Product(12, 1088, 48, "densenet_cifar 3x3 conv 48 -> 12: one shifted tap of a sample"),
    Product(48, 1024, 84, "densenet_cifar 1x1 bottleneck 84 -> 48: a sample"),
    Product(256, 3136, 64, "resnet50_224 1x1 conv 64 -> 256 at 56x56: a sample"),
    Product(2048, 294, 512, "resnet50_224 1x1 conv 512 -> 2048 at 7x7: 6 samples"),
    Product(64, 32, 256, "lstm_lm step: a 64-row block of W_hh h"),
    Product(1024, 1, 256, "lstm_lm step at batch 1: W_hh h, a matrix-vector product"),
    Product(512, 512, 512, "square, for reference"),
)

TARGET_SECONDS = 2e-3           # one timed batch of products lasts about this long


def parse_shapes(text: str, parser) -> tuple[Product, ...]:
    products = []
    for item in (s.strip() for s in text.split(",")):
        parts = item.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            parser.error(f"--shapes: expected MxNxK with three positive integers (e.g. 64x256x64), got {item!r}")
        products.append(Product(*(int(p) for p in parts)))
    return tuple(products)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench.gemm",
        description="Time float32 matrix products on one thread through dslc's BLAS (the kernels' gemm) and "
                    "torch.mm side by side, at the shapes the benchmark networks run or at your own.")
    parser.add_argument("--shapes", help="comma-separated MxNxK products, C (MxN) = A (MxK) @ B (KxN) "
                        "(default: the benchmark networks' hot products)")
    parser.add_argument("--reps", type=int, default=20, help="timed batches per product and side; the median "
                        "is shown (default 20)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    args.products = parse_shapes(args.shapes, parser) if args.shapes is not None else NETWORK_PRODUCTS
    return args


def _dslc_driver():
    """A jitted loop of `count` products through the kernels' gemm, built on first use (Numba
    and the BLAS load only after the thread caps are set)."""
    from dslc.runtime.cpu.blas import gemm
    from dslc.runtime.jit import njit

    @njit
    def products(a, b, c, count):
        m, k = a.shape
        n = b.shape[1]
        for _ in range(count):
            gemm(False, False, m, n, k, a, 0, k, b, 0, n, 0.0, c, 0, n)
    return products


def _rate(run_batch, flops_per_product, reps, warmup) -> float:
    """Median GFLOP/s of `reps` timed batches, after warm-up; run_batch(count) runs `count` products."""
    from .measure import warm_up
    warm = warm_up(lambda: run_batch(1), warmup)
    count = max(1, int(TARGET_SECONDS / max(min(warm), 1e-9)))
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run_batch(count)
        rates.append(count * flops_per_product / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def _check(product, c, reference, side):
    import numpy as np
    scale = max(float(np.abs(reference).max()), 1.0)
    error = float(np.abs(c.astype(np.float64) - reference).max()) / scale
    if not error < 1e-4:
        raise ValueError(f"{side}'s {product.label} product differs from float64 numpy by {error:.2e} "
                         f"(relative to its largest value)")


def measure(products, reps: int, warmup) -> list[tuple[Product, float, float]]:
    """[(product, dslc GFLOP/s, torch GFLOP/s)], each product checked first."""
    import numpy as np
    import torch
    dslc_products = _dslc_driver()
    rng = np.random.default_rng(0)
    rows = []
    for p in products:
        a = rng.standard_normal((p.m, p.k), dtype=np.float32)
        b = rng.standard_normal((p.k, p.n), dtype=np.float32)
        reference = a.astype(np.float64) @ b.astype(np.float64)
        c = np.zeros((p.m, p.n), np.float32)
        dslc_products(a, b, c, 1)
        _check(p, c, reference, "dslc")
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.zeros((p.m, p.n))
        torch.mm(ta, tb, out=tc)
        _check(p, tc.numpy(), reference, "torch")

        def torch_products(count, ta=ta, tb=tb, tc=tc):
            for _ in range(count):
                torch.mm(ta, tb, out=tc)
        def dslc_batch(count, a=a, b=b, c=c):
            dslc_products(a, b, c, count)
        rows.append((p, _rate(dslc_batch, p.flops, reps, warmup),
                     _rate(torch_products, p.flops, reps, warmup)))
    return rows


def torch_call_cost(warmup, calls: int = 20_000) -> float:
    """Seconds torch.mm costs per call on a 1x1x1 product: its call overhead from Python (the
    median of 5 timed batches of `calls`, after warm-up)."""
    import torch

    from .measure import warm_up
    a, c = torch.ones((1, 1)), torch.zeros((1, 1))

    def batch():
        for _ in range(calls):
            torch.mm(a, a, out=c)
    warm_up(batch, warmup)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        batch()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def render(rows, markdown: bool) -> str:
    header = ("M x N x K", "dslc GFLOP/s", "torch GFLOP/s", "dslc / torch", "where")
    table = [(p.label, f"{d:.1f}", f"{t:.1f}", f"{d / t:.2f}x", p.where) for p, d, t in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|---|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table])
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(4)]
    return "\n".join("  ".join(f"{c:>{w}}" for c, w in zip(r[:4], widths)) + f"  {r[4]}" for r in [header, *table])


def kernels_line() -> str:
    """Which kernels each side runs."""
    import torch

    from dslc.runtime.cpu.blas import openblas_core
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    pinned = f"OPENBLAS_CORETYPE={coretype} in the environment" if coretype else "OPENBLAS_CORETYPE unset"
    return (f"dslc: OpenBLAS {openblas_core()} kernels ({pinned}); torch {torch.__version__}: CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, MKL {'on' if torch.backends.mkl.is_available() else 'off'}")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from .cli import WARMUP
    from .threads import limit_after_import
    pools = limit_after_import(threads=1, with_torch=True)
    try:
        rows = measure(args.products, args.reps, WARMUP)
    except MemoryError:
        print("error: the products' matrices do not fit in memory\n  = help: ask for smaller --shapes",
              file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}\n  = help: this is a bug in the BLAS binding or the library; report it with the "
              f"line below\n  {kernels_line()}", file=sys.stderr)
        return 1
    print(f"float32 products, one thread each ({'; '.join(pools[:2])}); median of {args.reps} timed batches "
          f"of ~{TARGET_SECONDS * 1e3:.0f} ms after warm-up")
    print(kernels_line())
    print(f"torch.mm's call from Python costs {torch_call_cost(WARMUP) * 1e6:.1f} us per product, counted in "
          f"its figures")
    print(render(rows, args.markdown))
    return 0


if __name__ == "__main__":
    set_env_before_import(1)
    raise SystemExit(main())
