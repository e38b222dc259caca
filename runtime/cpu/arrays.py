"""Copies between array slices in jitted kernels, as explicit loops (and the row updates of
the conv family's kernels: their epilogue, their bias gradient).

Numba compiles `dst[a:b] = src[c:d]` (an array assigned to a slice) with a shape check whose
error message is built by f-strings, and compiling that message machinery costs seconds on the
first kernel that needs it, in every cold start. These loops do the same copies (the callers
size the slices equal) and vectorise the same way. `dst[a:b] += src[c:d]` would also
allocate a temporary for the sum; add_into does not.

Inside a `parallel=True` kernel, an array expression (`a[:] = 0`, `a += b`, `np.sum(a)`)
becomes a parallel loop of its own, compiled as a separate function, a large share of the
kernel's compile time (docs/CPU-BACKEND.md, "Measurements behind the kernels' choices"). Parallel
kernels call these helpers (compiled once, serially) instead.
"""
import numpy as np

from dslc.runtime.jit import njit


@njit
def copy_into(dst, src):
    """dst[i] = src[i] for two 1-d slices of one length."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@njit
def fill(dst, value):
    """dst[i] = value for a 1-d slice."""
    for i in range(dst.shape[0]):
        dst[i] = value


@njit
def row_sum(src):
    """The sum of a 1-d slice (np.sum inside a parallel kernel becomes a parallel loop)."""
    result = src[0] * 0
    for i in range(src.shape[0]):
        result += src[i]
    return result


@njit
def part_bounds(total, parts, part):
    """[lo, hi) of part `part` of `total` items cut into `parts` near-equal runs: one worker's
    share of rows, channels or features."""
    return total * part // parts, total * (part + 1) // parts


@njit
def add_into(dst, src):
    """dst[i] += src[i] for two 1-d slices of one length."""
    for i in range(dst.shape[0]):
        dst[i] += src[i]


@njit
def copy_rows(dst, src):
    """dst[r, i] = src[r, i] for two 2-d slices of one shape."""
    for r in range(dst.shape[0]):
        copy_into(dst[r], src[r])


@njit
def scale_shift(dst, src, factor, offset, relu):
    """dst[i] = src[i] * factor + offset, then max(., 0) where `relu` (a NaN stays NaN, as
    in relu's kernel and torch's), for two 1-d slices of one length (dst may be src): a
    conv's per-feature output epilogue."""
    if relu:
        for i in range(dst.shape[0]):
            value = src[i] * factor + offset
            dst[i] = 0 if value < 0 else value
    else:
        for i in range(dst.shape[0]):
            dst[i] = src[i] * factor + offset


@njit
def epilogue_rows(scale, shift, g, relu, out, lo, hi):
    """Rows [lo, hi) of out (F, P) = out * scale[g] (F) + shift[g] (F) along rows, then relu
    where `relu`; scale and shift, (G, F) each, may be empty (left out: see
    conv.py's Conv._epilogue_operands). A conv's epilogue on one (sample, group g) block, or a
    worker's rows of it, right after its GEMM wrote them, while they are still in cache: a
    bias, a batchnorm folded in (inference, Conv.fuse_batchnorm) and a fused relu cost no
    pass of their own."""
    if scale.size == 0 and shift.size == 0 and not relu:
        return
    for f in range(lo, hi):
        scale_shift(out[f], out[f], scale[g, f] if scale.size else np.float32(1),
                    shift[g, f] if shift.size else np.float32(0), relu)


@njit
def accumulate_row_sums(src, dst):
    """dst (F) += src (F, P) summed along rows: a conv's bias gradient from its output gradient."""
    for f in range(src.shape[0]):
        dst[f] += np.sum(src[f])
