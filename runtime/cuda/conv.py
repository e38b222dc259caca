"""CUDA kernels of the conv family: `conv` and `deconv` (transposed convolution), as im2col + GEMM.

Both ops relate an "image" tensor, which a kh x kw window slides over, to a "matrix" tensor with
one value per window position:
    conv:   image = x (N, C, H, W),   matrix = out (N, F, Ho, Wo)
    deconv: image = out (N, F, Ho, Wo), matrix = x (N, C, H, W)
and both GEMMs run over a column buffer, cols = im2col(image), with one row per
(image channel, kernel row, kernel col) and one column per (sample, window position). The
matrix side is kept channel-major, mat (channels, samples * positions), so that one batched
GEMM per group covers a whole chunk of samples and the weight gradient's sum over samples is
the GEMM's own K loop: race-free, no atomics, no per-sample launches.

    conv   forward:  cols = im2col(x);   mat = W @ cols;    out = mat (+ bias)
    deconv forward:  mat = x;            cols = W.T @ mat;  out = col2im(cols) (+ bias)
    backward, both:  gW (+)= mat_grad @ cols.T   and the input gradient through the other GEMM.

Groups are a batch of the GEMM: the weight viewed as (G, matrix channels / G, image channels / G
* kh * kw) pairs with the G row blocks of cols and of mat. Samples are processed in chunks sized
so the column buffer stays under COLS_BUDGET elements; with a single chunk, the buffers that
forward filled are still valid in backward and are reused instead of recomputed.
"""
from numba import cuda

from dslc.runtime.cuda.gemm import add_channel_bias, gemm, sum_channels
from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.kernel_api import Kernel, register

COLS_BUDGET = 1 << 24     # elements of a node's column buffer (64 MiB in float32)


@cuda.jit
def _im2col_kernel(image, n0, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, cols):
    """cols[(c*kh + i)*kw + j, s*grid_h*grid_w + oh*grid_w + ow]
    = image[n0 + s, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], 0 in the padding."""
    idx = cuda.grid(1)
    if idx < cols.size:
        width = cols.shape[1]
        row = idx // width
        col = idx % width
        positions = grid_h * grid_w
        s = col // positions
        oh = (col % positions) // grid_w
        ow = col % grid_w
        c = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        ih = oh * sh - ph + i * dh
        iw = ow * sw - pw + j * dw
        if 0 <= ih < image.shape[2] and 0 <= iw < image.shape[3]:
            cols[row, col] = image[n0 + s, c, ih, iw]
        else:
            cols[row, col] = 0


@cuda.jit
def _col2im_kernel(cols, n0, kh, kw, sh, sw, ph, pw, dh, dw, grid_h, grid_w, image):
    """The adjoint of _im2col_kernel, as a gather: one thread per image element sums every
    column entry im2col would read from it (race-free), for the samples cols covers."""
    idx = cuda.grid(1)
    channels = image.shape[1]
    height = image.shape[2]
    width = image.shape[3]
    samples = cols.shape[1] // (grid_h * grid_w)
    if idx < samples * channels * height * width:
        iw = idx % width
        ih = (idx // width) % height
        c = (idx // (width * height)) % channels
        s = idx // (width * height * channels)
        base = s * grid_h * grid_w
        total = cols.dtype.type(0)
        for i in range(kh):
            th = ih + ph - i * dh
            if th >= 0 and th % sh == 0 and th // sh < grid_h:
                for j in range(kw):
                    tw = iw + pw - j * dw
                    if tw >= 0 and tw % sw == 0 and tw // sw < grid_w:
                        total += cols[(c * kh + i) * kw + j, base + (th // sh) * grid_w + tw // sw]
        image[n0 + s, c, ih, iw] = total


@cuda.jit
def _to_channel_major_kernel(t, n0, mat):
    """mat[c, s*L + p] = t[n0 + s, c, p] for t viewed as (N, C, L)."""
    idx = cuda.grid(1)
    if idx < mat.size:
        positions = t.shape[2]
        c = idx // mat.shape[1]
        col = idx % mat.shape[1]
        mat[c, col] = t[n0 + col // positions, c, col % positions]


@cuda.jit
def _from_channel_major_kernel(mat, n0, t):
    """t[n0 + s, c, p] = mat[c, s*L + p]: the inverse of _to_channel_major_kernel."""
    idx = cuda.grid(1)
    if idx < mat.size:
        positions = t.shape[2]
        c = idx // mat.shape[1]
        col = idx % mat.shape[1]
        t[n0 + col // positions, c, col % positions] = mat[c, col]


class _ConvBase(Kernel):
    """Geometry, chunking and the image/matrix plumbing shared by conv and deconv."""
    is_deconv = False

    def __init__(self, spec):
        super().__init__(spec)
        a = spec.attrs
        n, c, h, w = spec.in_shapes[0]
        _, f, ho, wo = spec.out_shape
        self.kh, self.kw = a["kernel"]
        self.sh, self.sw = a["stride"]
        self.ph, self.pw = a["pad"]
        self.dh, self.dw = a.get("dilation", (1, 1))
        self.groups = a["groups"]
        self.batch = n
        if self.is_deconv:
            self.image_channels, self.mat_channels, self.grid_h, self.grid_w = f, c, h, w
        else:
            self.image_channels, self.mat_channels, self.grid_h, self.grid_w = c, f, ho, wo
        self.positions = self.grid_h * self.grid_w
        self.col_rows = self.image_channels * self.kh * self.kw
        self.chunk = max(1, min(n, COLS_BUDGET // max(1, self.col_rows * self.positions)))

    def workspace(self):
        width = self.chunk * self.positions
        return {"cols": ((self.col_rows * width,), "float32"),
                "mat": ((self.mat_channels * width,), "float32")}

    def _chunks(self):
        for n0 in range(0, self.batch, self.chunk):
            yield n0, min(self.chunk, self.batch - n0)

    def _cols(self, ws, samples):
        """The column buffer for `samples` samples, as a matrix and as per-group matrices."""
        width = samples * self.positions
        flat = ws["cols"][:self.col_rows * width]
        return flat.reshape(self.col_rows, width), flat.reshape(self.groups, self.col_rows // self.groups, width)

    def _mat(self, ws, samples):
        width = samples * self.positions
        flat = ws["mat"][:self.mat_channels * width]
        per_group = self.mat_channels // self.groups
        return flat.reshape(self.mat_channels, width), flat.reshape(self.groups, per_group, width)

    def _grouped_weight(self, weight):
        return weight.reshape(self.groups, weight.shape[0] // self.groups, -1)

    def _geometry(self):
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.dh, self.dw, self.grid_h, self.grid_w)

    def _image_to_cols(self, image, n0, cols):
        _im2col_kernel[blocks_1d(cols.size), THREADS_1D](image, n0, *self._geometry(), cols)

    def _cols_to_image(self, cols, n0, image):
        samples = cols.shape[1] // self.positions
        size = samples * image.shape[1] * image.shape[2] * image.shape[3]
        _col2im_kernel[blocks_1d(size), THREADS_1D](cols, n0, *self._geometry(), image)

    def _to_mat(self, t, n0, mat):
        _to_channel_major_kernel[blocks_1d(mat.size), THREADS_1D](self._flat3(t), n0, mat)

    def _from_mat(self, mat, n0, t):
        _from_channel_major_kernel[blocks_1d(mat.size), THREADS_1D](mat, n0, self._flat3(t))

    @staticmethod
    def _flat3(t):
        return t.reshape(t.shape[0], t.shape[1], -1)

    def _add_bias(self, params, out):
        if self.spec.attrs["bias"]:
            add_channel_bias(self._flat3(out), params["bias"])

    def _bias_grad(self, gout, gparams):
        if gparams.get("bias") is not None:
            sum_channels(self._flat3(gout), gparams["bias"])


@register("cuda", "conv")
class Conv(_ConvBase):
    def forward(self, ctx, xs, params, out, ws):
        weight = self._grouped_weight(params["weight"])
        for n0, samples in self._chunks():
            cols, group_cols = self._cols(ws, samples)
            mat, group_mat = self._mat(ws, samples)
            self._image_to_cols(xs[0], n0, cols)
            gemm(weight, group_cols, group_mat)
            self._from_mat(mat, n0, out)
        self._add_bias(params, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        weight = self._grouped_weight(params["weight"])
        self._bias_grad(gout, gparams)
        gweight = gparams.get("weight")
        if gweight is None and gxs[0] is None:
            return
        single_chunk = self.chunk >= self.batch
        for n0, samples in self._chunks():
            cols, group_cols = self._cols(ws, samples)
            mat, group_mat = self._mat(ws, samples)
            if not single_chunk:
                self._image_to_cols(xs[0], n0, cols)
            self._to_mat(gout, n0, mat)
            if gweight is not None:
                gemm(group_mat, group_cols, self._grouped_weight(gweight), trans_b=True,
                     beta=0.0 if n0 == 0 else 1.0)
            if gxs[0] is not None:
                gemm(weight, group_mat, group_cols, trans_a=True)    # cols now hold d(loss)/d(cols)
                self._cols_to_image(cols, n0, gxs[0])


@register("cuda", "deconv")
class Deconv(_ConvBase):
    is_deconv = True

    def forward(self, ctx, xs, params, out, ws):
        weight = self._grouped_weight(params["weight"])
        for n0, samples in self._chunks():
            cols, group_cols = self._cols(ws, samples)
            mat, group_mat = self._mat(ws, samples)
            self._to_mat(xs[0], n0, mat)
            gemm(weight, group_mat, group_cols, trans_a=True)
            self._cols_to_image(cols, n0, out)
        self._add_bias(params, out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        weight = self._grouped_weight(params["weight"])
        self._bias_grad(gout, gparams)
        gweight = gparams.get("weight")
        if gweight is None and gxs[0] is None:
            return
        single_chunk = self.chunk >= self.batch
        for n0, samples in self._chunks():
            cols, group_cols = self._cols(ws, samples)
            mat, group_mat = self._mat(ws, samples)
            self._image_to_cols(gout, n0, cols)
            if not single_chunk:
                self._to_mat(xs[0], n0, mat)
            if gweight is not None:
                gemm(group_mat, group_cols, self._grouped_weight(gweight), trans_b=True,
                     beta=0.0 if n0 == 0 else 1.0)
            if gxs[0] is not None:
                gemm(weight, group_cols, group_mat)                   # mat now holds d(loss)/d(x)
                self._from_mat(mat, n0, gxs[0])
