"""CPU kernels of the tensor family: identity, flatten, reshape, concat, add.

These ops move data without arithmetic (add aside), so they are plain copies of contiguous
buffers: every buffer the plan hands a kernel is C-contiguous, so reshaping one is a view.
None of their backward passes reads an input or the output, which lets the plan release those
buffers after forward.
"""
import numpy as np

from runtime.jit import parallel_elementwise, pnjit, prange
from runtime.kernel_api import Kernel, register


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
def _add(a, b, out, parallel):
    if parallel:
        for i in prange(out.size):
            out[i] = a[i] + b[i]
    else:
        for i in range(out.size):
            out[i] = a[i] + b[i]
    return


@register("cpu", "add")
class Add(Kernel):
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.parallel = parallel_elementwise(int(np.prod(spec.out_shape, dtype=np.int64)))

    def forward(self, ctx, xs, params, out, ws):
        flat = out.reshape(-1)
        if len(xs) == 1:
            np.copyto(flat, xs[0].reshape(-1))
            return
        # Summed pairwise into `out`: one pass over memory per extra input.
        _add(xs[0].reshape(-1), xs[1].reshape(-1), flat, self.parallel)
        for x in xs[2:]:
            _add(flat, x.reshape(-1), flat, self.parallel)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        for gx in gxs:
            if gx is not None:
                np.copyto(gx, gout)
