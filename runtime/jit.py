"""One place that decides how CPU kernels are compiled and who owns the cores.

Compilation: every CPU kernel uses these decorators instead of calling numba directly.
Kernels are cached on disk (cache=True) because compile time is a user-facing cost (see
PERF-NOTES: 1.6-4.8 s per kernel family cold, ~0.3 s warm).

Threading policy. Three thread pools could compete for the cores: Numba's OpenMP workers
(`prange`), numpy's OpenBLAS (`@`, np.matmul) and SciPy's OpenBLAS (np.dot inside `@njit`).
An OpenBLAS worker keeps spinning long after its GEMM, so a step that alternates between the
two BLAS libraries and Numba's loops makes each small op wait for a time slice: measured on
the 2-core machine, relu + a (32, 512) x (512, 64) GEMM through each library took 100-200 ms
per round with every pool at 2 threads, 0.1-0.3 ms with BLAS at one thread. Hence:
  * Numba's workers own the cores. `use_serial_blas()` (called when a CPU plan is built) holds
    every OpenBLAS to the calling thread; a kernel that wants both cores for its GEMMs splits
    them over `prange` itself, one single-threaded GEMM per worker (dense.py, conv.py,
    recurrent.py).
  * A parallel region costs a wake-up of the other worker and, when the machine is busy, a
    wait for its time slice (measured: a 131k-element relu took ~15 us serial, ~25 us with
    both workers on a busy machine, and milliseconds when the machine was oversubscribed).
    So kernels go parallel only above a size: PARALLEL_MIN_ELEMENTS for memory-bound
    elementwise loops, PARALLEL_MIN_FLOPS for GEMMs. Kernels decide once, when built, and
    pass the choice to their jitted loops as an argument (`parallel`), so both paths live in
    one cached function and a test can drive each.
"""
import numba

njit = numba.njit(cache=True, nogil=True)
pnjit = numba.njit(cache=True, nogil=True, parallel=True)
prange = numba.prange

# Elementwise loops stream memory: one thread nearly saturates what two cores can draw until
# the arrays leave the caches, so only large arrays are split (4 MiB of float32).
PARALLEL_MIN_ELEMENTS = 1 << 20
# A GEMM of this many flops runs ~100 us on one core: worth one worker wake-up.
PARALLEL_MIN_FLOPS = 1 << 24

_serial_blas = None


def parallel_elementwise(size: int) -> bool:
    """Whether an elementwise loop over `size` elements should use every worker."""
    return size >= PARALLEL_MIN_ELEMENTS


def parallel_gemm(flops: int) -> bool:
    """Whether GEMMs totalling `flops` should be split over the workers."""
    return flops >= PARALLEL_MIN_FLOPS and numba.get_num_threads() > 1


def use_serial_blas() -> None:
    """Hold numpy's and SciPy's OpenBLAS to one thread for the rest of the process.

    SciPy's library is loaded first (Numba's np.dot calls it; it loads lazily otherwise) so
    that threadpoolctl finds it. Later calls do nothing."""
    global _serial_blas
    if _serial_blas is not None:
        return
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's OpenBLAS so it can be limited)
    from threadpoolctl import ThreadpoolController
    # The limiter object restores the old counts only when asked; keeping it documents that.
    _serial_blas = ThreadpoolController().select(user_api="blas").limit(limits=1)
