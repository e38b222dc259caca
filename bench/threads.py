"""The benchmark's thread budget: 2 threads for dslc and PyTorch alike.

Three pools compete for the cores: PyTorch's intra-op pool (OpenMP), Numba's parallel
loops, and the BLAS libraries (numpy's OpenBLAS, and SciPy's OpenBLAS that `np.dot` inside
`@njit` calls). Each is capped at THREADS:
  * environment variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
    NUMBA_NUM_THREADS), set by the entry points before numpy is imported: the only control
    that also reaches a library loaded later (SciPy's BLAS loads on Numba's first `np.dot`);
  * after import, torch.set_num_threads, numba.set_num_threads and, when threadpoolctl is
    installed (scikit-learn depends on it), threadpoolctl's limit on every BLAS/OpenMP library
    loaded by then; its report of the pools goes into the results.
"""
from __future__ import annotations

import importlib.util
import os

THREADS = 2
_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _threads(count: int) -> str:
    return f"{count} thread{'s' * (count != 1)}"


def set_env_before_import(threads: int = THREADS) -> None:
    """Cap every pool through the environment; call before numpy, numba or torch is imported."""
    for var in _ENV_VARS:
        os.environ[var] = str(threads)


def limit_after_import(threads: int = THREADS, with_torch: bool = False) -> list[str]:
    """Apply the cap to the libraries now loaded; returns one line per thread pool, for the report."""
    import numba

    # load SciPy's BLAS now (Numba's np.dot calls it) and the kernels' own (dslc's gemm), so
    # that threadpoolctl sees, caps and reports them too
    import scipy.linalg.cython_blas  # noqa: F401

    import dslc.runtime.cpu.blas  # noqa: F401
    numba.set_num_threads(threads)
    pools = [f"numba parallel loops: {_threads(numba.get_num_threads())}"]
    if with_torch:
        import torch
        torch.set_num_threads(threads)
        pools.append(f"torch intra-op: {_threads(torch.get_num_threads())}")
    if importlib.util.find_spec("threadpoolctl") is None:
        pools.append("BLAS/OpenMP: capped by environment variables only (threadpoolctl not installed)")
        return pools
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(threads)
    for pool in threadpool_info():
        kernels = f", {pool['architecture']} kernels" if pool.get("architecture") else ""
        pools.append(f"{pool['internal_api']} {os.path.basename(pool['filepath'])}: {_threads(pool['num_threads'])}"
                     f"{kernels} (threadpoolctl)")
    if "OPENBLAS_CORETYPE" in os.environ:
        pools.append(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} in the environment (OpenBLAS's kernel "
                     "choice)")
    return pools

