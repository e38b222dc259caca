"""CPU kernels of the layout family: slice, transpose, permute, stop_gradient (detach).

They move elements without arithmetic, so they are numpy copies between strided views of the
C-contiguous buffers the plan hands them; no backward pass reads an input or the output, which
lets the plan release those buffers after forward.
"""
import numpy as np

from dslc.runtime.kernel_api import Kernel, register


def _around(shape, axis):
    """(outer, size, inner): the shape seen as the axis between everything before and after it."""
    return (int(np.prod(shape[:axis], dtype=np.int64)), shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64)))


@register("cpu", "slice")
class Slice(Kernel):
    """out = x[:, ..., start:end:step, ...]; backward writes gout into those places of a zeroed gx."""
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        a = spec.attrs
        self.x3 = _around(spec.in_shapes[0], a["axis"])
        self.out3 = _around(spec.out_shape, a["axis"])
        self.cut = slice(a["start"], a["end"], a["step"])

    def forward(self, ctx, xs, params, out, ws):
        np.copyto(out.reshape(self.out3), xs[0].reshape(self.x3)[:, self.cut, :])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is None:
            return
        gx = gxs[0].reshape(self.x3)
        gx.fill(0)
        np.copyto(gx[:, self.cut, :], gout.reshape(self.out3))


def permutation(spec):
    """The full permutation of the axes (batch included) that a transpose or permute node applies."""
    a, rank = spec.attrs, len(spec.out_shape)
    if spec.op == "permute":
        return (0, *a["order"])
    perm = list(range(rank))
    perm[a["axis0"]], perm[a["axis1"]] = perm[a["axis1"]], perm[a["axis0"]]
    return tuple(perm)


@register("cpu", "transpose", "permute")
class Permute(Kernel):
    """out = x with its axes reordered; backward applies the inverse order to gout."""
    backward_reads_inputs = False
    backward_reads_out = False

    def __init__(self, spec):
        super().__init__(spec)
        self.perm = permutation(spec)
        self.inverse = tuple(int(i) for i in np.argsort(self.perm))

    def forward(self, ctx, xs, params, out, ws):
        np.copyto(out, xs[0].transpose(self.perm))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            np.copyto(gxs[0], gout.transpose(self.inverse))


@register("cpu", "stop_gradient", "detach")
class StopGradient(Kernel):
    """The output is the input itself (a view: forward is skipped). The plan never asks for its
    backward (the op gives its input no gradient); asked all the same, the gradient is zero."""
    backward_reads_inputs = False
    backward_reads_out = False
    output_is_input_view = True

    def forward(self, ctx, xs, params, out, ws):
        np.copyto(out.reshape(-1), xs[0].reshape(-1))

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if gxs[0] is not None:
            gxs[0].fill(0)
