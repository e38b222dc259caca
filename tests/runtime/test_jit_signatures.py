"""Kernel-to-kernel calls compile their callee for plain argument types (runtime/jit.py,
KernelDispatcher): a constant argument or a prange index must not compile a second copy of the
callee, each copy seconds of a cold start."""
import numba
import numpy as np
from numba.core import types

from dslc.runtime import jit


def _dispatcher(func, **options):
    # no disk cache: these functions are made for the test
    return jit.KernelDispatcher(py_func=func, locals={}, targetoptions={"nopython": True, **options})


def test_a_constant_a_variable_and_a_prange_index_share_one_compile_of_the_callee():
    def pick(a, i, flag):
        return a[i] if flag else -a[i]

    callee = _dispatcher(pick)

    def literal_and_variable(a, n):
        total = callee(a, 0, True)          # literal int, literal bool
        for i in range(n):
            total += callee(a, i, n > 0)    # int64, bool
        return total

    def prange_index(a, n):
        total = 0.0
        for i in numba.prange(n):           # an unsigned index under parallel=True
            total += callee(a, i, True)
        return total

    serial = _dispatcher(literal_and_variable)
    parallel = _dispatcher(prange_index, parallel=True)
    a = np.arange(4.0)
    assert serial(a, 4) == 0.0 + 6.0
    assert parallel(a, 4) == 6.0
    assert list(callee.overloads) == [(types.Array(types.float64, 1, "C"), types.int64, types.boolean)]


def test_calls_from_python_are_unchanged():
    """Only kernel-to-kernel calls are rewritten: from Python a float stays a float."""
    def double(x):
        return 2 * x

    kernel = _dispatcher(double)
    assert kernel(3) == 6 and kernel(1.5) == 3.0
    assert sorted(map(str, kernel.overloads)) == ["(float64,)", "(int64,)"]


def test_before_compile_hears_of_each_new_compile(monkeypatch):
    heard = []
    monkeypatch.setattr(jit, "before_compile", lambda dispatcher, signature: heard.append(signature))

    def inc(x):
        return x + 1

    kernel = _dispatcher(inc)
    kernel(1)
    kernel(2)           # compiled already: not heard again
    assert heard == [(types.int64,)]
    assert jit.compile_key(kernel, heard[0]).endswith("inc(int64,)")
