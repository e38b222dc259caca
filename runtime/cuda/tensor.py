"""CUDA kernels of the tensor family: identity, flatten, reshape, concat, add.

Every buffer the plan hands a kernel is C-contiguous, so reshaping one is a view and the
copies below are device-to-device copies of whole buffers or of column blocks.
"""
import numpy as np
from numba import cuda

from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register


@register("cuda", "identity", "flatten", "reshape")
class Copy(Kernel):
    """identity, flatten and reshape: the output holds the input's elements in the same order."""

    def forward(self, ctx, xs, params, out, ws):
        out.ravel().copy_to_device(xs[0].ravel())

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            gxs[0].ravel().copy_to_device(gout.ravel())


@cuda.jit
def _copy_columns(src, src_col0, dst, dst_col0):
    """dst[:, dst_col0 + j] = src[:, src_col0 + j] for the columns j the narrower of the two spans."""
    i = cuda.grid(1)
    width = min(src.shape[1] - src_col0, dst.shape[1] - dst_col0)
    if i < src.shape[0] * width:
        r = i // width
        j = i % width
        dst[r, dst_col0 + j] = src[r, src_col0 + j]


@register("cuda", "concat")
class Concat(Kernel):
    """Seen as (outer, axis * inner) matrices, each input is a block of columns of the output."""

    def __init__(self, spec):
        super().__init__(spec)
        axis = spec.attrs["axis"]
        self.outer = int(np.prod(spec.out_shape[:axis], dtype=np.int64))
        self.widths = [int(np.prod(s[axis:], dtype=np.int64)) for s in spec.in_shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).tolist()

    def forward(self, ctx, xs, params, out, ws):
        out2d = out.reshape(self.outer, -1)
        for x, width, offset in zip(xs, self.widths, self.offsets):
            _copy_columns[blocks_1d(self.outer * width), THREADS_1D](
                x.reshape(self.outer, width), 0, out2d, offset)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gout2d = gout.reshape(self.outer, -1)
        for gx, width, offset in zip(gxs, self.widths, self.offsets):
            if gx is not None:
                _copy_columns[blocks_1d(self.outer * width), THREADS_1D](
                    gout2d, offset, gx.reshape(self.outer, width), 0)


@cuda.jit
def _add(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


@register("cuda", "add")
class Add(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        flat = out.ravel()
        if len(xs) == 1:
            flat.copy_to_device(xs[0].ravel())
            return
        # Summed pairwise into `out`: one pass over memory per extra input.
        grid = blocks_1d(flat.size)
        _add[grid, THREADS_1D](xs[0].ravel(), xs[1].ravel(), flat)
        for x in xs[2:]:
            _add[grid, THREADS_1D](flat, x.ravel(), flat)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for gx in gxs:
            if gx is not None:
                gx.ravel().copy_to_device(gout.ravel())
