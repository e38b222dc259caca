"""Array storage per device: the few whole-buffer operations the plan itself performs.

Kernels do the math; the plan only allocates buffers, moves input batches in and metrics
out, accumulates gradients where a tensor fans out, and fills seeds. Keeping these here
means plan.py never branches on the device.
"""
from __future__ import annotations

import numpy as np

from .errors import RuntimeUserError


class CPU:
    name = "cpu"

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def from_host(self, a, out=None):
        if out is None:
            return np.ascontiguousarray(a)
        np.copyto(out, a)
        return out

    def to_host(self, a):
        return a

    def accumulate(self, dst, src):
        np.add(dst, src, out=dst)

    def fill(self, a, value):
        a.fill(value)

    def scalar(self, a) -> float:
        return float(a)


class CUDA:
    """numba.cuda device arrays. Accumulate and fill run as device kernels (no host round trip)."""
    name = "cuda"

    def __init__(self):
        try:
            from numba import cuda
        except ImportError as e:   # numba without its CUDA target
            raise RuntimeUserError(f"the CUDA backend is not installed ({e})",
                                   "install it with `pip install .[cuda]` (NVIDIA's numba-cuda package)") from None
        if not cuda.is_available():
            raise RuntimeUserError("no usable NVIDIA GPU found (numba.cuda.is_available() is False)",
                                   "check `nvidia-smi` and the CUDA driver, or use --device cpu")
        self.cuda = cuda
        from .cuda import devicekernels
        self._k = devicekernels

    def empty(self, shape, dtype):
        return self.cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        a = self.cuda.device_array(shape, dtype=dtype)
        self.fill(a, 0)
        return a

    def from_host(self, a, out=None):
        a = np.ascontiguousarray(a)
        if out is None:
            return self.cuda.to_device(a)
        out.copy_to_device(a)
        return out

    def to_host(self, a):
        return a.copy_to_host()

    def accumulate(self, dst, src):
        self._k.accumulate(dst, src)

    def fill(self, a, value):
        self._k.fill(a, value)

    def scalar(self, a) -> float:
        return float(a.copy_to_host())


def get_device(name: str):
    if name == "cpu":
        return CPU()
    if name == "cuda":
        return CUDA()
    if name == "auto":
        try:
            return CUDA()
        except RuntimeUserError:
            return CPU()
    raise RuntimeUserError(f"unknown device `{name}`", "use cpu, cuda or auto")
