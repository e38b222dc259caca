"""One place that decides how CPU kernels are compiled.

Every CPU kernel uses these decorators instead of calling numba directly, so caching and
parallelism are decided here: kernels are cached on disk (cache=True) because compile time
is a user-facing cost (see PERF-NOTES: 1.6-4.8 s per kernel family cold, ~0.3 s warm).
"""
import numba

njit = numba.njit(cache=True, nogil=True)
pnjit = numba.njit(cache=True, nogil=True, parallel=True)
prange = numba.prange
