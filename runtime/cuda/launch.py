"""Grid-size helpers shared by every CUDA kernel family.

Most CUDA kernels here are elementwise-style: one thread per output element on a 1-D grid
of THREADS_1D-thread blocks, each thread checking `i < n` itself.
"""

THREADS_1D = 256


def blocks_1d(n, threads=THREADS_1D):
    """Number of `threads`-thread blocks covering n elements (at least one, so a launch is valid)."""
    return max(1, (n + threads - 1) // threads)
