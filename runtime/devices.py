"""Devices: array storage and everything else that differs between a CPU and a GPU.

Kernels do the math; the plan only allocates buffers, moves input batches in and metrics
out, accumulates gradients where a tensor fans out, and fills seeds. The model keeps its
parameters where the device wants them, and the trainer makes its optimizer and clips
gradients through the device. Keeping all of it behind the methods of `Device` means the
plan, the model and the trainer never test which device they run on.

Numba and the CUDA modules are imported inside the methods that need them, so that importing
this module (as `dslc compile` does, through the model) loads neither.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict

import numpy as np

from . import compile_ahead, optim
from .errors import RuntimeUserError


class Device:
    """What the plan, the model and the trainer may ask of a device. `name` is the key its
    kernels are registered under (runtime/kernel_api.py) and what messages call it."""
    name: str = ""
    # synchronised batchnorm swaps in host-side batchnorm kernels that reduce statistics over MPI
    supports_sync_batchnorm: bool = False

    # ---- storage ------------------------------------------------------------------------------
    def empty(self, shape, dtype):
        raise NotImplementedError

    def zeros(self, shape, dtype):
        raise NotImplementedError

    def from_host(self, a, out=None):
        """A device array holding numpy array `a` (copied into `out` when given)."""
        raise NotImplementedError

    def to_host(self, a):
        """A numpy array with the contents of device array `a` (maybe `a` itself)."""
        raise NotImplementedError

    def accumulate(self, dst, src):
        """dst += src, in place."""
        raise NotImplementedError

    def fill(self, a, value):
        raise NotImplementedError

    def scalar(self, a) -> float:
        raise NotImplementedError

    def params_from_host(self, host: dict) -> dict:
        """The device's copy of the parameters `host` (name -> numpy array), updated in place
        by training; on a device that computes in host memory, `host` itself."""
        return OrderedDict((k, self.from_host(v)) for k, v in host.items())

    def params_to_host(self, params: dict) -> dict:
        """name -> numpy array of the device parameters `params` (copies where they differ)."""
        return OrderedDict((k, self.to_host(v)) for k, v in params.items())

    def memory_limit(self) -> int | None:
        """The bytes a plan may allocate: $DSLC_MEMORY_LIMIT when set (bytes, or a number
        with K, M, G or T), else what the device reports free; None where neither is known
        (nothing is checked then)."""
        setting = os.environ.get("DSLC_MEMORY_LIMIT", "").strip()
        if setting:
            return parse_bytes(setting, "DSLC_MEMORY_LIMIT")
        return self.available_memory()

    def available_memory(self) -> int | None:
        """Bytes free for new allocations now, or None where the device cannot say."""
        return None

    # ---- planning -----------------------------------------------------------------------------
    def prepare_kernels(self):
        """Called by every plan before it makes its kernels. Default: nothing."""

    def start_compile_helper(self, plan):
        """A helper that compiles `plan`'s kernels ahead of its first step, or None (the
        default). Called once the plan's calls are bound; the plan stops it after a step."""
        return None

    # ---- training -----------------------------------------------------------------------------
    def make_optimizer(self, name: str, params: dict, **settings):
        """The optimizer `name` over the device arrays `params`, with runtime/optim.py's
        arguments and checks (ValueError/TypeError for a bad setting)."""
        raise NotImplementedError

    def clip_grad_norm(self, grads: dict, max_norm: float):
        """Scale the gradients in place so that their joint L2 norm is at most `max_norm`."""
        raise NotImplementedError

    def clip_grad_value(self, grads: dict, value: float):
        """Clamp every gradient element into [-value, value] in place."""
        raise NotImplementedError


class CPU(Device):
    name = "cpu"
    supports_sync_batchnorm = True

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

    def available_memory(self):
        # Linux's estimate of what can be allocated without swapping; unknown elsewhere
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def params_from_host(self, host):
        return host

    def params_to_host(self, params):
        return params

    def prepare_kernels(self):
        # The kernels parallelise with Numba's threads; OpenBLAS's own threads on top of
        # them would oversubscribe the cores.
        from .jit import use_serial_blas  # imports Numba
        use_serial_blas()

    def start_compile_helper(self, plan):
        # With an empty kernel cache, a helper process compiles from the far end of the first
        # step while this one compiles from its start (runtime/compile_ahead.py).
        return compile_ahead.start(plan)

    def make_optimizer(self, name, params, **settings):
        return optim.make_optimizer(name, params, **settings)

    def clip_grad_norm(self, grads, max_norm):
        return optim.clip_grad_norm(grads, max_norm)

    def clip_grad_value(self, grads, value):
        optim.clip_grad_value(grads, value)


class CUDA(Device):
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

    def available_memory(self):
        try:
            free, _total = self.cuda.current_context().get_memory_info()
        except Exception:   # some drivers cannot tell
            return None
        return int(free) if free < float("inf") else None    # the simulator says infinity

    def make_optimizer(self, name, params, **settings):
        from .cuda.optim import make_cuda_optimizer
        return make_cuda_optimizer(name, params, **settings)

    def clip_grad_norm(self, grads, max_norm):
        from .cuda.optim import clip_grad_norm
        return clip_grad_norm(grads, max_norm)

    def clip_grad_value(self, grads, value):
        for g in grads.values():
            self._k.clamp(g, -value, value)


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_bytes(text: str, what: str) -> int:
    """A size such as 8G, 512M or 1048576 (bytes; K, M, G, T are powers of 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if m is None:
        raise RuntimeUserError(f"{what}={text!r} is not a size",
                               "give a number of bytes, or a number with K, M, G or T (e.g. 8G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


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
