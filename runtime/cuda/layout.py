"""CUDA kernels of the layout family: slice, transpose, permute, stop_gradient (detach).

One thread per element written; every buffer the plan hands a kernel is C-contiguous, so each
kernel sees its tensors flat, or as (outer, axis, inner) around the axis it works on.
"""
import numpy as np
from numba import cuda

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register


def _around(shape, axis):
    """(outer, size, inner): the shape seen as the axis between everything before and after it."""
    return (int(np.prod(shape[:axis], dtype=np.int64)), shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64)))


@cuda.jit
def _slice_forward(x, out, start, step):
    """out[o, j, k] = x[o, start + j * step, k]."""
    i = cuda.grid(1)
    outer, count, inner = out.shape
    if i < outer * count * inner:
        o = i // (count * inner)
        j = (i // inner) % count
        k = i % inner
        out[o, j, k] = x[o, start + j * step, k]


@cuda.jit
def _slice_backward(gout, gx, start, step):
    """gx[o, p, k] = gout[o, (p - start) / step, k] where p is a kept index, else 0 (one pass, no fill)."""
    i = cuda.grid(1)
    outer, size, inner = gx.shape
    count = gout.shape[1]
    if i < outer * size * inner:
        o = i // (size * inner)
        p = (i // inner) % size
        k = i % inner
        d = p - start
        if d >= 0 and d % step == 0 and d // step < count:
            gx[o, p, k] = gout[o, d // step, k]
        else:
            gx[o, p, k] = 0


@register("cuda", "slice")
class Slice(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        a = spec.attrs
        self.x3 = _around(spec.in_shapes[0], a["axis"])
        self.out3 = _around(spec.out_shape, a["axis"])
        self.start, self.step = a["start"], a["step"]

    def forward(self, ctx, xs, params, out, ws):
        _slice_forward[blocks_1d(out.size), THREADS_1D](xs[0].reshape(self.x3), out.reshape(self.out3),
                                                         self.start, self.step)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _slice_backward[blocks_1d(gxs[0].size), THREADS_1D](gout.reshape(self.out3), gxs[0].reshape(self.x3),
                                                                 self.start, self.step)


@cuda.jit
def _permute(src, dst, dst_shape, src_strides):
    """dst (flat, C order, shape dst_shape) = src (flat) with dst's axis d walking src_strides[d]."""
    i = cuda.grid(1)
    if i < dst.size:
        rest = i
        at = 0
        for d in range(dst_shape.size - 1, -1, -1):
            at += (rest % dst_shape[d]) * src_strides[d]
            rest //= dst_shape[d]
        dst[i] = src[at]


def _walk(in_shape, perm):
    """(the permuted shape, the input's element stride along each of its axes) as int64 arrays."""
    strides = [1] * len(in_shape)
    for d in range(len(in_shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * in_shape[d + 1]
    return (np.array([in_shape[p] for p in perm], dtype=np.int64),
            np.array([strides[p] for p in perm], dtype=np.int64))


@register("cuda", "transpose", "permute")
class Permute(Kernel):
    """One thread per output element gathers its input element; backward gathers with the inverse order."""
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        perm = _permutation(spec)
        inverse = tuple(int(i) for i in np.argsort(perm))
        self.host = {"forward": _walk(spec.in_shapes[0], perm), "backward": _walk(spec.out_shape, inverse)}
        self.dev = None

    def _on_device(self):
        if self.dev is None:        # copied once, on the first call (the plan builds kernels before any launch)
            self.dev = {k: tuple(cuda.to_device(v) for v in pair) for k, pair in self.host.items()}
        return self.dev

    def forward(self, ctx, xs, params, out, ws):
        shape, strides = self._on_device()["forward"]
        _permute[blocks_1d(out.size), THREADS_1D](xs[0].ravel(), out.ravel(), shape, strides)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            shape, strides = self._on_device()["backward"]
            _permute[blocks_1d(gout.size), THREADS_1D](gout.ravel(), gxs[0].ravel(), shape, strides)


def _permutation(spec):
    a, rank = spec.attrs, len(spec.out_shape)
    if spec.op == "permute":
        return (0, *a["order"])
    perm = list(range(rank))
    perm[a["axis0"]], perm[a["axis1"]] = perm[a["axis1"]], perm[a["axis0"]]
    return tuple(perm)


@cuda.jit
def _zero(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] = 0


@register("cuda", "stop_gradient", "detach")
class StopGradient(Kernel):
    """A copy forward; no gradient backward (zero, where one is asked for at all)."""
    backward_reads_inputs = False
    backward_reads_out = False

    def forward(self, ctx, xs, params, out, ws):
        out.ravel().copy_to_device(xs[0].ravel())

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            _zero[blocks_1d(gxs[0].size), THREADS_1D](gxs[0].ravel())
