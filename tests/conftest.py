"""Test-wide setup. Run the CUDA kernels in Numba's simulator unless a real GPU is there.

The variable must be set before numba is first imported, hence in the top-level conftest.
"""
import os
import subprocess


def _has_nvidia_gpu():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


if not _has_nvidia_gpu():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

# Plans fork no compile-ahead helper in the test processes (runtime/compile_ahead.py): they
# compile every kernel in one process anyway. tests/runtime/test_compile_ahead.py turns it on.
os.environ.setdefault("DSLC_COMPILE_AHEAD", "0")
