"""Grid-size helpers shared by every CUDA kernel family.

Most CUDA kernels here are elementwise-style: one thread per output element on a 1-D grid
of THREADS_1D-thread blocks, each thread checking `i < n` itself.
"""

import os

# Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, the test suite's device) runs every thread of
# a block as a Python thread, so a 256-thread block over a test's few dozen elements spends its
# time starting idle threads; there a block is one warp. The kernels read THREADS_1D (launch
# sizes and the reductions' shared scratch alike), so they are the same code at either size.
THREADS_1D = 32 if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else 256


def blocks_1d(n, threads=THREADS_1D):
    """Number of `threads`-thread blocks covering n elements (at least one, so a launch is valid)."""
    return max(1, (n + threads - 1) // threads)
