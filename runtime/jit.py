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
from numba.core import caching, types
from numba.core.registry import CPUDispatcher

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


def _as_argument(arg_type):
    """The type a kernel-to-kernel call compiles its callee for: a literal int or bool as the
    plain int64 or bool a call from Python passes, an unsigned int (a prange index is one) as
    int64. Numba types a constant argument as a literal of its value and compiles the callee
    for it, so `gemm(..., 0, ...)` beside `gemm(..., offset, ...)`, or `_moments(x, c)` from a
    prange loop beside a range loop, compiled a second copy of the callee each (0.3-2.8 s
    apiece; 13 of the README's digits run's callees were such copies, docs/CPU-BACKEND.md)."""
    if isinstance(arg_type, types.Literal) and isinstance(arg_type, (types.Integer, types.Boolean)):
        arg_type = types.unliteral(arg_type)
    if isinstance(arg_type, types.Integer) and not arg_type.signed:
        return types.int64
    return arg_type


def compile_key(dispatcher, signature: tuple) -> str:
    """A name for one compile of one kernel, the same in every process: its function and
    argument types."""
    return f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__qualname__}{signature}"


# Called as before_compile(dispatcher, signature) ahead of each compile this process is about
# to start (a signature not compiled here yet), so that runtime/compile_ahead.py can wait for
# its helper process to finish that very kernel rather than compile it a second time. Set
# through set_before_compile only.
before_compile = None


def set_before_compile(hook) -> None:
    """Have hook(dispatcher, signature) called ahead of each compile from now on (None: none)."""
    global before_compile
    before_compile = hook


class KernelDispatcher(CPUDispatcher):
    """Numba's CPU dispatcher, except that a call from another jitted function compiles the
    callee for plain argument types (_as_argument); the call site casts its arguments to them.
    And `before_compile` hears of each compile before it starts."""

    def get_call_template(self, args, kws):
        return super().get_call_template(tuple(_as_argument(a) for a in args),
                                         {k: _as_argument(v) for k, v in kws.items()})

    def compile(self, sig):
        if before_compile is not None and isinstance(sig, tuple) and sig not in self.overloads:
            before_compile(self, sig)
        return super().compile(sig)


def _kernel_decorator(**options):
    def jit(func):
        dispatcher = KernelDispatcher(py_func=func, locals={}, targetoptions={"nopython": True, **options})
        dispatcher._cache = KernelCache(dispatcher.py_func)   # what cache=True would set, keyed by content
        return dispatcher
    return jit


njit = _kernel_decorator(nogil=True)
pnjit = _kernel_decorator(nogil=True, parallel=True)
prange = numba.prange

# Elementwise loops stream memory: one thread nearly saturates what two cores can draw until
# the arrays leave the caches, so only large arrays are split (4 MiB of float32).
PARALLEL_MIN_ELEMENTS = 1 << 20
# A GEMM this large runs long enough on one core (~0.1 ms, more for a conv, whose column copies
# come on top) to be worth a worker wake-up (~6 us): LeNet's first conv (15 MFLOP at batch 64)
# went from 0.75 ms on one worker to 0.40 ms on two when this fell from 2^24.
PARALLEL_MIN_FLOPS = 1 << 22

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
