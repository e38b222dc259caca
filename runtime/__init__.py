"""dslc's runtime: kernels, execution plans, optimizers, data, checkpoints, training."""

import os as _os


def _check_numba_threads() -> None:
    """Numba reads NUMBA_NUM_THREADS when it is first imported and fails with a bare ValueError
    on 0 or less (and ignores other garbage with a warning); checked here, before any runtime
    module imports Numba, so that the user gets an error naming the variable."""
    value = _os.environ.get("NUMBA_NUM_THREADS")
    if value is None or not value.strip():
        return
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        from .errors import RuntimeUserError
        raise RuntimeUserError(f"NUMBA_NUM_THREADS={value!r} in the environment is not a number of threads "
                               "(1 or more)",
                               "unset it (Numba then uses every core) or set a whole number, e.g. NUMBA_NUM_THREADS=2")


_check_numba_threads()
