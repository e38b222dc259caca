"""CPU kernels of the tensor family: identity, flatten, reshape, concat, add.

These ops move data without arithmetic (add aside), so they are plain copies of contiguous
buffers: every buffer the plan hands a kernel is C-contiguous, so reshaping one is a view.
None of their backward passes reads an input or the output, which lets the plan release those
buffers after forward.
"""
import numpy as np

from dslc.runtime.cpu.activation import relu_backward
from dslc.runtime.cpu.arrays import copy_into
from dslc.runtime.jit import parallel_elementwise, pnjit, prange
from dslc.runtime.kernel_api import FusesRelu, Kernel, register


@register("cpu", "identity", "flatten", "reshape")
class Copy(Kernel):
    """identity, flatten and reshape: the output holds the input's elements in the same order.

    The plan may give the output the input's own storage (`output_is_input_view`); forward
    then has nothing to copy and is skipped."""
    backward_reads_inputs = False
    backward_reads_out = False
    output_is_input_view = True

    def forward(self, ctx, xs, params, out, ws):
        np.copyto(out.reshape(-1), xs[0].reshape(-1))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            np.copyto(gxs[0].reshape(-1), gout.reshape(-1))


@pnjit
def _copy_columns(src, dst, src_at, dst_at, width, parallel):
    """dst[r, dst_at:dst_at + width] = src[r, src_at:src_at + width] for every row r, the rows
    split between the workers when `parallel` (one thread leaves a 2-core machine's memory
    bandwidth half used)."""
    if parallel:
        for r in prange(src.shape[0]):
            copy_into(dst[r, dst_at:dst_at + width], src[r, src_at:src_at + width])
    else:
        for r in range(src.shape[0]):
            copy_into(dst[r, dst_at:dst_at + width], src[r, src_at:src_at + width])
    return


@register("cpu", "concat")
class Concat(Kernel):
    """Each input is a block of columns of the output viewed as (rows, columns), rows being
    the dims before the concat axis: forward copies the blocks in, backward copies them out."""
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        axis = spec.attrs["axis"]
        out_shape = spec.out_shape
        self.rows = int(np.prod(out_shape[:axis], dtype=np.int64))
        inner = int(np.prod(out_shape[axis + 1:], dtype=np.int64))
        self.blocks = []            # (first column, columns) of each input in the output
        start = 0
        for shape in spec.in_shapes:
            self.blocks.append((start * inner, shape[axis] * inner))
            start += shape[axis]
        self.parallel = parallel_elementwise(int(np.prod(out_shape, dtype=np.int64)))

    def forward(self, ctx, xs, params, out, ws):
        out = out.reshape(self.rows, -1)
        for x, (first, width) in zip(xs, self.blocks):
            _copy_columns(x.reshape(self.rows, width), out, 0, first, width, self.parallel)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        gout = gout.reshape(self.rows, -1)
        for gx, (first, width) in zip(gxs, self.blocks):
            if gx is not None:
                _copy_columns(gout, gx.reshape(self.rows, width), first, 0, width, self.parallel)


@pnjit
def _add(a, b, out, relu, parallel):
    """out = a + b, relu'd if `relu` (a fused activation)."""
    if parallel:
        for i in prange(out.size):
            v = a[i] + b[i]
            out[i] = 0 if relu and v < 0 else v
    else:
        for i in range(out.size):
            v = a[i] + b[i]
            out[i] = 0 if relu and v < 0 else v
    return


@register("cpu", "add")
class Add(FusesRelu, Kernel):
    """A following relu can be fused (`fuse_activation`, e.g. a residual block's add -> relu):
    the sum is relu'd as it is written, and backward masks the gradient by the output it then
    reads, instead of a relu pass each way."""
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(int(np.prod(spec.out_shape, dtype=np.int64)))

    def can_fuse_relu(self) -> bool:
        return len(self.spec.in_shapes) >= 2       # one input is a copy, written by numpy

    def forward(self, ctx, xs, params, out, ws):
        flat = out.reshape(-1)
        if len(xs) == 1:
            np.copyto(flat, xs[0].reshape(-1))
            return
        # Summed pairwise into `out`: one pass over memory per extra input, the last one relu'd.
        last = len(xs) - 2
        _add(xs[0].reshape(-1), xs[1].reshape(-1), flat, self.relu and last == 0, self.parallel)
        for k, x in enumerate(xs[2:], start=1):
            _add(flat, x.reshape(-1), flat, self.relu and k == last, self.parallel)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        wanted = [gx for gx in gxs if gx is not None]
        if not wanted:
            return
        if self.relu:
            # the relu kernel's own backward loop (it reads only out and gout)
            flat_out = out.reshape(-1)
            relu_backward(flat_out, flat_out, gout.reshape(-1), wanted[0].reshape(-1), 0.0, self.parallel)
            gout = wanted[0]
        for gx in wanted:
            if gx is not gout:
                np.copyto(gx, gout)
