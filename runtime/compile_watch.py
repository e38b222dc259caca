"""Telling the user what a cold first step is doing: compiling.

The first training step of a network on an empty kernel cache compiles its kernels, 10-30 s
on the benchmark's networks (bench/RESULTS.md, "cold start"), and a progress bar that sits at
0% all that time looks hung. `CompileWatch` listens to Numba's compile events (the public
`numba.core.event` API, "numba:compile"), which fire for each function actually compiled,
not for one loaded from the disk cache, so on a warm cache it never fires. The trainer shows
the function being compiled on the bar while it happens, and says afterwards how many were
compiled and that later runs load them from the cache (runtime/train.py).
"""
from __future__ import annotations

from contextlib import contextmanager

from numba.core import event


class CompileWatch(event.Listener):
    """Counts the functions Numba compiles while installed (`installed()`), and calls
    `on_start(name, compiled_so_far)` as each of dslc's own starts. Compiling a kernel compiles
    the jitted functions it calls, each one event, Numba's implementations of numpy functions
    among them (named `impl`, `<lambda>`, ...): those count, but are not named."""

    def __init__(self, on_start=None):
        self.compiled = 0
        self._on_start = on_start

    def on_start(self, ev):
        func = getattr(ev.data["dispatcher"], "py_func", None)
        if self._on_start is not None and func is not None and not func.__module__.startswith("numba"):
            self._on_start(func.__name__, self.compiled)

    def on_end(self, ev):
        self.compiled += 1

    @contextmanager
    def installed(self):
        with event.install_listener("numba:compile", self):
            yield self
