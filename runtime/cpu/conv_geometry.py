"""Index tables of the conv family's sliding windows, shared by its lowerings.

A conv's geometry is the 12-tuple (image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h,
grid_w) of conv.py: the kernel window slides over a zero-padded image with a stride, and each
window position is one point of the grid.
"""
import numpy as np


def window_offsets(geometry) -> np.ndarray:
    """(kh*kw, grid_h*grid_w) int64: the flat offset in an image (one channel) that tap
    i*kw + j of the window at grid position oh*grid_w + ow reads, position
    (oh*sh - ph + i*dh, ow*sw - pw + j*dw), or -1 where that lies in the padding.

    im2col's gather reads its columns through it (conv.py, gather_pays), and Winograd's tiles
    are such windows too: each tile's input window (a x a, stride m) and its outputs (m x m)."""
    image_h, image_w, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w = geometry
    rows = (np.arange(grid_h) * sh - ph)[None, None, :, None] + (np.arange(kh) * dh)[:, None, None, None]
    cols = (np.arange(grid_w) * sw - pw)[None, None, None, :] + (np.arange(kw) * dw)[None, :, None, None]
    inside = (rows >= 0) & (rows < image_h) & (cols >= 0) & (cols < image_w)        # (kh, kw, gh, gw)
    return np.where(inside, rows * image_w + cols, -1).reshape(kh * kw, grid_h * grid_w).astype(np.int64)
