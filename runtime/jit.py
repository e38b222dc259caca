"""One place that decides how CPU kernels are compiled and who owns the cores.

Compilation: every CPU kernel uses these decorators instead of calling numba directly.
Kernels are cached on disk (cache=True) because compile time is a user-facing cost: seconds per
kernel family cold, a fraction of a second warm (docs/CPU-BACKEND.md).

Threading policy. Three thread pools could compete for the cores: Numba's OpenMP workers
(`prange`), numpy's OpenBLAS (`@`, np.matmul) and SciPy's OpenBLAS (np.dot inside `@njit`).
An OpenBLAS worker keeps spinning long after its GEMM, so a step that alternates between the
two BLAS libraries and Numba's loops makes each small op wait for a time slice, orders of
magnitude longer than the op itself (figures in docs/CPU-BACKEND.md). Hence:
  * Numba's workers own the cores. `use_serial_blas()` (called when a CPU plan is built) holds
    every OpenBLAS to the calling thread; a kernel that wants both cores for its GEMMs splits
    them over `prange` itself, one single-threaded GEMM per worker (dense.py, conv.py,
    recurrent.py).
  * A parallel region costs a wake-up of the other worker and, when the machine is busy, a
    wait for its time slice, which on a small op costs more than the split saves. So kernels go
    parallel only above a size: PARALLEL_MIN_ELEMENTS for memory-bound
    elementwise loops, PARALLEL_MIN_FLOPS for GEMMs. Kernels decide once, when built, and
    pass the choice to their jitted loops as an argument (`parallel`), so both paths live in
    one cached function and a test can drive each.

Cache validity. Numba keeps with each cached function the stamp (mtime, size) of the file
that defines it, and recompiles when that file changes, but not when a jitted function it
calls from another file does: after an edit to arrays.scale_shift, conv.py's kernels, which
inline it, would keep loading the old code from the cache (seen while changing it). So every
kernel's stamp here also holds a digest of the contents of all kernel sources (KERNEL_SOURCES:
this file and runtime/cpu/), and changing any of them recompiles every kernel, once. The
caches stay where Numba puts them (next to the sources, or NUMBA_CACHE_DIR).
"""
import hashlib
from pathlib import Path

import numba
from numba.core import caching

_RUNTIME = Path(__file__).resolve().parent
KERNEL_SOURCES = (Path(__file__).resolve(), _RUNTIME / "cpu")


def sources_digest(sources=KERNEL_SOURCES) -> str:
    """sha256 over the names and contents of the .py files in `sources` (files or folders)."""
    digest = hashlib.sha256()
    files = sorted(f for s in sources for f in (sorted(s.glob("*.py")) if s.is_dir() else [s]))
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


KERNEL_SOURCES_DIGEST = sources_digest()


class _ContentStamp:
    """A locator mixin: the source stamp Numba stores in a cache index and compares when it
    loads one is the defining file's (mtime, size) and KERNEL_SOURCES_DIGEST."""

    def get_source_stamp(self):
        return super().get_source_stamp(), KERNEL_SOURCES_DIGEST


def _caching_class(name):
    """A locator class of numba.core.caching, which older Numba versions (0.60 among them)
    name with a leading underscore."""
    return getattr(caching, name, None) or getattr(caching, "_" + name)


class _UserProvidedLocator(_ContentStamp, _caching_class("UserProvidedCacheLocator")):
    pass


class _InTreeLocator(_ContentStamp, _caching_class("InTreeCacheLocator")):
    pass


class _UserWideLocator(_ContentStamp, _caching_class("UserWideCacheLocator")):
    pass


class _KernelCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_UserProvidedLocator, _InTreeLocator, _UserWideLocator]


class KernelCache(caching.FunctionCache):
    """Numba's disk cache of compiled functions, with the content-keyed stamp (see above)."""
    _impl_class = _KernelCacheImpl


def _cached(decorator):
    def jit(func):
        dispatcher = decorator(func)
        dispatcher._cache = KernelCache(dispatcher.py_func)   # what cache=True would set, keyed by content
        return dispatcher
    return jit


njit = _cached(numba.njit(nogil=True))
pnjit = _cached(numba.njit(nogil=True, parallel=True))
prange = numba.prange

# Elementwise loops stream memory: one thread nearly saturates what two cores can draw until
# the arrays leave the caches, so only large arrays are split (4 MiB of float32).
PARALLEL_MIN_ELEMENTS = 1 << 20
# A GEMM this large runs long enough on one core to be worth one worker wake-up.
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
