"""python -m bench.profile: per-kernel timing of one benchmark network (bench/profile.py); its usage
errors are among tests/test_bench.py's."""
import subprocess
import sys

import pytest

from bench import profile

from .test_bench import REPO_ROOT


def _profile(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench.profile", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_profile_names_every_call_and_sums_them():
    done = _profile("lenet5_relu", "--batch", "16", "--reps", "2", "--top", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("lenet5_relu, batch 16, inference pass; numba parallel loops: 2 threads")
    rows = [line for line in lines if " forward " in line]
    assert len(rows) == 7                       # conv1, conv2, two pools, three dense calls
    assert any("conv1 .. relu1" in r and "conv im2col +relu" in r for r in rows)
    assert lines[-1].startswith("sum of the calls' medians")
    done = _profile("lenet5_relu", "--batch", "16", "--reps", "2", "--train", "--by", "kernel")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training step (forward and backward)" in done.stdout
    assert " backward " in done.stdout and "(with the optimizer's update)" in done.stdout


def test_rows_sum_per_kind_and_render_longest_first():
    rows = [("forward", "a", "conv im2col", 0.002), ("forward", "b", "conv im2col", 0.001),
            ("backward", "a", "conv im2col", 0.004), ("forward", "c", "maxpool", 0.0005)]
    summed = sorted(profile.by_kernel(rows))
    assert summed == [("backward", "1 call", "conv im2col", 0.004), ("forward", "1 call", "maxpool", 0.0005),
                      ("forward", "2 calls", "conv im2col", 0.003)]
    text = profile.render(rows, top=2).splitlines()
    assert text[1].split()[:3] == ["4.000", "53.3%", "backward"]
    assert text[2].split()[:3] == ["2.000", "26.7%", "forward"]
    assert text[3].split()[:3] == ["1.500", "20.0%", "2"]        # the rest: "2 more"


def test_a_batch_too_large_is_an_error_not_a_traceback():
    done = _profile("lenet5_relu", "--batch", "1000000000", "--reps", "1", timeout=120)
    assert done.returncode == 1
    assert "error: lenet5_relu's batch of 1000000000 does not fit in memory" in done.stderr
    assert "use a smaller --batch" in done.stderr and "Traceback" not in done.stderr
