"""CPU kernels of the tensor family: identity, flatten, reshape, concat, add.

These ops move data without arithmetic (add aside), so they are plain copies of contiguous
buffers: every buffer the plan hands a kernel is C-contiguous, so reshaping one is a view.
None of their backward passes reads an input or the output, which lets the plan release those
buffers after forward.
"""
import numpy as np

from runtime.cpu.activation import relu_backward
from runtime.jit import parallel_elementwise, pnjit, prange
from runtime.kernel_api import FusesRelu, Kernel, register


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


@register("cpu", "concat")
class Concat(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False
    def _slices(self):
        """The index of each input's block inside the output."""
        axis = self.spec.attrs["axis"]
        start = 0
        for shape in self.spec.in_shapes:
            yield (slice(None),) * axis + (slice(start, start + shape[axis]),)
            start += shape[axis]

    def forward(self, ctx, xs, params, out, ws):
        for x, block in zip(xs, self._slices()):
            out[block] = x

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for gx, block in zip(gxs, self._slices()):
            if gx is not None:
                gx[...] = gout[block]


@pnjit
def _add(a, b, out, relu, parallel):
    """out = a + b, relu'd if `relu` (a fused activation)."""
    if parallel:
        for i in prange(out.size):
            v = a[i] + b[i]
            out[i] = 0 if relu and not v > 0 else v
    else:
        for i in range(out.size):
            v = a[i] + b[i]
            out[i] = 0 if relu and not v > 0 else v
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
