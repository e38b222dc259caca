"""python -m bench.gemm: dslc's BLAS against torch.mm, product by product (bench/gemm.py); its usage
errors are among tests/test_bench.py's."""
import subprocess
import sys

import numpy as np
import pytest

from bench import gemm

from .test_bench import REPO_ROOT


def test_times_every_product_on_both_sides():
    done = subprocess.run([sys.executable, "-m", "bench.gemm", "--shapes", "8x8x8,16x1x8,1x16x8", "--reps", "2"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("float32 products, one thread each (numba parallel loops: 1 thread; "
                               "torch intra-op: 1 thread)")
    assert lines[1].startswith("dslc: OpenBLAS ") and "torch 2.13.0" in lines[1]
    rows = [line.split() for line in lines[4:]]
    assert [r[0] for r in rows] == ["8x8x8", "16x1x8", "1x16x8"]      # GEMM, and GEMV both ways
    for row in rows:
        assert float(row[1]) > 0 and float(row[2]) > 0 and row[3].endswith("x")


def test_products_too_large_for_memory_are_an_error_not_a_traceback():
    done = subprocess.run([sys.executable, "-m", "bench.gemm", "--shapes", "400000x400000x400000", "--reps", "1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "error: the products' matrices do not fit in memory" in done.stderr and "Traceback" not in done.stderr


def test_onednn_times_torch_with_and_without_it():
    """python -m bench.onednn (bench/onednn.py): the figure behind RESULTS-GEMM.md's LSTM sentence."""
    done = subprocess.run([sys.executable, "-m", "bench.onednn", "--steps", "2"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("lstm_lm (batch 32): oneDNN on ")
    assert "off" in done.stdout and "Warning" not in done.stderr


def test_default_products_name_where_they_run():
    args = gemm.parse_args([])
    assert args.products == gemm.NETWORK_PRODUCTS
    assert all(p.where for p in args.products)
    assert gemm.parse_args(["--shapes", " 2x3x4 ,5x6x7"]).products == (gemm.Product(2, 3, 4), gemm.Product(5, 6, 7))


def test_a_wrong_product_is_an_error_not_a_figure():
    reference = np.eye(3)
    gemm._check(gemm.Product(3, 3, 3), np.eye(3, dtype=np.float32), reference, "dslc")
    wrong = np.eye(3, dtype=np.float32)
    wrong[1, 2] = 0.01
    with pytest.raises(ValueError, match=r"dslc's 3x3x3 product differs from float64 numpy by 1.00e-02"):
        gemm._check(gemm.Product(3, 3, 3), wrong, reference, "dslc")
    wrong[1, 2] = np.nan
    with pytest.raises(ValueError, match="differs"):
        gemm._check(gemm.Product(3, 3, 3), wrong, reference, "dslc")


def test_render_as_text_and_markdown():
    rows = [(gemm.Product(64, 256, 64, "somewhere"), 120.0, 100.0)]
    text = gemm.render(rows, markdown=False).splitlines()
    assert text[1].split()[:4] == ["64x256x64", "120.0", "100.0", "1.20x"] and text[1].endswith("somewhere")
    table = gemm.render(rows, markdown=True).splitlines()
    assert table[0].startswith("| M x N x K |") and table[2] == "| 64x256x64 | 120.0 | 100.0 | 1.20x | somewhere |"


def test_network_products_are_the_kernels_shapes():
    """The default rows are the products the kernels run at the bench's batch on 2 workers."""
    from dslc.runtime.cpu.conv import MIN_GEMM_COLUMNS
    from dslc.runtime.cpu.conv_winograd import WinogradPlan
    from dslc.runtime.cpu.recurrent import _SMALL_GEMM_MACS
    products = gemm.NETWORK_PRODUCTS
    for (width, grid), p in zip(((64, 32), (128, 16), (256, 8), (512, 4)), products[:4]):
        plan = WinogradPlan(64, width, width, grid, grid, 1, 1, grid, grid, 2)
        assert (p.m, p.n, p.k) == (width, plan.forward.width, width)
    samples = min(16 // 2, -(-MIN_GEMM_COLUMNS // 49))            # resnet50's 7x7 1x1 conv: a chunk
    assert (products[7].n, products[7].where.endswith(f"{samples} samples")) == (samples * 49, True)
    assert products[8].m == _SMALL_GEMM_MACS // (32 * 256)         # lstm_lm's step blocks
