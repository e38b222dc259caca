"""CPU kernels of the recurrent family: embed, rnn (tanh), lstm, gru (docs/OPS.md).

Layout: the user-facing tensors are batch first (N, T, F), but every per-layer buffer in the
workspace is time major (T, N, ...). That makes each step's hidden state a contiguous (N, H)
matrix that BLAS can use in place, and makes "all steps" a contiguous (T*N, ...) matrix, so
the work that does not depend on the recurrence is done in one GEMM per layer:

    forward   projected (T*N, G*H) = inputs (T*N, F) @ W_ih^T          one GEMM per layer
              per step: recurrent (N, G*H) = h_{t-1} (N, H) @ W_hh^T     one GEMM per step
                        (run as W_hh @ h_{t-1}^T, see _recurrent_product)
    backward  per step: dh_{t-1} (N, H) = dgates_t (N, G*H) @ W_hh        one GEMM per step
                        (run as W_hh^T @ dgates_t^T, see _recurrent_grad_product)
              dW_ih = dgates^T @ inputs, dW_hh = dgates[1:]^T @ h[:-1],
              dinputs = dgates @ W_ih                                     one GEMM each per layer

All GEMMs are `np.dot` inside `@njit`, so they run on one BLAS thread pool (SciPy's OpenBLAS);
mixing in numpy's `@` would wake a second pool that competes for the same cores (PERF-NOTES).
The elementwise work per step is serial: it is small next to the recurrent GEMM once its
activations vectorise (see _tanh), and a Numba thread pool would compete with BLAS too.

Forward saves, for every layer and step, what backward needs (activated gates, LSTM cell
states, GRU's W_hn h + b_hn, hidden states); backward is backpropagation through time over
those saves.
"""
from __future__ import annotations

import numpy as np

from runtime.jit import njit
from runtime.kernel_api import Kernel, register


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------

@njit
def _embed_forward(ids, weight, out):
    vocab, dim = weight.shape
    batch, steps = ids.shape
    for n in range(batch):
        for t in range(steps):
            row = ids[n, t]
            # Numba does not bounds-check: a bad id would silently read other memory.
            if row < 0 or row >= vocab:
                raise IndexError("embed: id outside [0, vocab)")
            for k in range(dim):
                out[n, t, k] = weight[row, k]


@njit
def _embed_backward(ids, gout, gweight):
    # Serial on purpose: repeated ids add into the same row, which parallel iterations over
    # positions would race on. It touches N*T*dim values, less than zeroing the grad when
    # N*T < vocab (the usual language-model case).
    gweight[:] = 0
    batch, steps = ids.shape
    dim = gweight.shape[1]
    for n in range(batch):
        for t in range(steps):
            row = ids[n, t]
            for k in range(dim):
                gweight[row, k] += gout[n, t, k]


@register("cpu", "embed")
class EmbedKernel(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        _embed_forward(xs[0], params["weight"], out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        # ids are integers: there is never an input gradient.
        if "weight" in gparams:
            _embed_backward(xs[0], gout, gparams["weight"])


# ---------------------------------------------------------------------------------------------
# shared pieces of the recurrent layers
# ---------------------------------------------------------------------------------------------

# The gate activations use a rational tanh instead of libm: Numba has no vector math library
# here, so np.tanh / np.exp are scalar calls, and the elementwise work of a step cost about
# half as much as its recurrent GEMM. This pure-arithmetic form vectorises (AVX-512) and is
# ~20x faster than scalar np.tanh. It is the approximation Eigen uses for float tanh (odd
# degree-13 over even degree-6 polynomial, input clamped where tanh rounds to +-1 in float32);
# max relative error ~3e-7: float32 accuracy, which the float64 finite-difference checks
# tolerate easily.
@njit
def _tanh(x):
    clamp = 7.90531110763549805
    v = min(max(x, -clamp), clamp)
    v2 = v * v
    p = v2 * -2.76076847742355e-16 + 2.00018790482477e-13
    p = p * v2 - 8.60467152213735e-11
    p = p * v2 + 5.12229709037114e-08
    p = p * v2 + 1.48572235717979e-05
    p = p * v2 + 6.37261928875436e-04
    p = p * v2 + 4.89352455891786e-03
    q = v2 * 1.19825839466702e-06 + 1.18534705686654e-04
    q = q * v2 + 2.26843463243900e-03
    q = q * v2 + 4.89352518554385e-03
    # np.divide, not `/`: Numba's `/` checks for division by zero and raises, and that
    # branch stops the loops calling this from vectorising (q >= 4.9e-3 here anyway).
    return np.divide(v * p, q)


@njit
def _sigmoid(x):
    return 0.5 + 0.5 * _tanh(0.5 * x)


@njit
def _project_inputs(inputs, w_ih, b_ih, projected):
    """projected (T, N, G*H) = inputs (T, N, F) @ W_ih^T + b_ih, for all steps in one GEMM."""
    steps, batch, width = projected.shape
    rows = steps * batch
    flat = projected.reshape(rows, width)
    np.dot(inputs.reshape(rows, inputs.shape[2]), w_ih.T, flat)
    for r in range(rows):
        for k in range(width):
            flat[r, k] += b_ih[k]


@njit
def _recurrent_product(h_prev, w_hh, recurrent_t, recurrent):
    """recurrent (N, G*H) = h_prev (N, H) @ W_hh^T, via recurrent_t (G*H, N) = W_hh @ h_prev^T.

    With the big weight as BLAS's left operand, OpenBLAS runs this small-batch GEMM about 1.4x
    faster (measured at N=20, H=650, 2 threads); the transposing copy is cheap next to it.
    """
    np.dot(w_hh, h_prev.T, recurrent_t)
    recurrent[:] = recurrent_t.T


@njit
def _recurrent_grad_product(dgates_t, w_hh_t, dh_recurrent_t, dh_recurrent):
    """dh_recurrent (N, H) = dgates_t (N, G*H) @ W_hh, via W_hh^T @ dgates_t^T.

    Same trick as _recurrent_product: w_hh_t is a contiguous copy of W_hh^T (made once per
    layer and backward pass) so the big operand comes first; about 1.35x faster than
    dgates_t @ W_hh at N=20, H=650.
    """
    np.dot(w_hh_t, dgates_t.T, dh_recurrent_t)
    dh_recurrent[:] = dh_recurrent_t.T


@njit
def _layer_grads(inputs, hidden, dgates_in, dgates_hidden, w_ih,
                 gw_ih, gw_hh, gb_ih, gb_hh, dinputs, want_dinputs):
    """Parameter and input gradients of one layer from its per-step gate gradients.

    dgates_in / dgates_hidden (T, N, G*H) are the gradients of the pre-activations fed by
    W_ih x + b_ih and by W_hh h + b_hh (the same array except for GRU's n gate). An empty
    gradient array means that parameter wants no gradient; it keeps one compiled signature.
    """
    steps, batch, width = dgates_in.shape
    rows = steps * batch
    flat_in = dgates_in.reshape(rows, width)
    flat_hidden = dgates_hidden.reshape(rows, width)
    if gw_ih.size > 0:
        np.dot(flat_in.T, inputs.reshape(rows, inputs.shape[2]), gw_ih)
    if gw_hh.size > 0:
        # h_{t-1} multiplies step t's gates; the initial state is zero, so step 0 adds nothing.
        if steps > 1:
            flat_h = hidden.reshape(rows, hidden.shape[2])
            np.dot(flat_hidden[batch:].T, flat_h[:rows - batch], gw_hh)
        else:
            gw_hh[:] = 0
    if gb_ih.size > 0:
        gb_ih[:] = 0
        for r in range(rows):
            for k in range(width):
                gb_ih[k] += flat_in[r, k]
    if gb_hh.size > 0:
        gb_hh[:] = 0
        for r in range(rows):
            for k in range(width):
                gb_hh[k] += flat_hidden[r, k]
    if want_dinputs:
        np.dot(flat_in, w_ih, dinputs.reshape(rows, dinputs.shape[2]))


# ---------------------------------------------------------------------------------------------
# rnn (tanh): h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
# ---------------------------------------------------------------------------------------------

@njit
def _rnn_layer_forward(inputs, w_ih, w_hh, b_ih, b_hh, hidden, recurrent_t, recurrent):
    # The hidden states are the only save: tanh' = 1 - h^2. The projection is written into
    # `hidden` and activated in place step by step.
    steps, batch, size = hidden.shape
    _project_inputs(inputs, w_ih, b_ih, hidden)
    recurrent[:] = 0                    # zero initial state: no recurrent term at step 0
    for t in range(steps):
        if t > 0:
            _recurrent_product(hidden[t - 1], w_hh, recurrent_t, recurrent)
        for n in range(batch):
            for j in range(size):
                hidden[t, n, j] = _tanh(hidden[t, n, j] + recurrent[n, j] + b_hh[j])


@njit
def _rnn_backward_through_time(hidden, dhidden, w_hh_t, dgates, dh_recurrent_t, dh_recurrent):
    steps, batch, size = hidden.shape
    dh_recurrent[:] = 0
    for t in range(steps - 1, -1, -1):
        for n in range(batch):
            for j in range(size):
                h = hidden[t, n, j]
                dgates[t, n, j] = (dhidden[t, n, j] + dh_recurrent[n, j]) * (1.0 - h * h)
        if t > 0:
            _recurrent_grad_product(dgates[t], w_hh_t, dh_recurrent_t, dh_recurrent)


# ---------------------------------------------------------------------------------------------
# lstm, gates i, f, g, o: c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
# ---------------------------------------------------------------------------------------------

@njit
def _lstm_layer_forward(inputs, w_ih, w_hh, b_ih, b_hh, projected, gates, cells, hidden,
                        recurrent_t, recurrent):
    # Saves the activated i, f, g, o in `gates`. They go to a buffer apart from `projected`:
    # rewriting the projection in place stops the loop from vectorising (about 6x slower), as
    # LLVM cannot prove that gate block k's writes miss the other blocks' reads.
    steps, batch, size = hidden.shape
    _project_inputs(inputs, w_ih, b_ih, projected)
    recurrent[:] = 0                    # zero initial state: no recurrent term at step 0
    for t in range(steps):
        if t > 0:
            _recurrent_product(hidden[t - 1], w_hh, recurrent_t, recurrent)
        for n in range(batch):
            for j in range(size):
                i = _sigmoid(projected[t, n, j] + recurrent[n, j] + b_hh[j])
                f = _sigmoid(projected[t, n, size + j] + recurrent[n, size + j]
                             + b_hh[size + j])
                g = _tanh(projected[t, n, 2 * size + j] + recurrent[n, 2 * size + j]
                          + b_hh[2 * size + j])
                o = _sigmoid(projected[t, n, 3 * size + j] + recurrent[n, 3 * size + j]
                             + b_hh[3 * size + j])
                c = i * g
                if t > 0:
                    c += f * cells[t - 1, n, j]
                gates[t, n, j] = i
                gates[t, n, size + j] = f
                gates[t, n, 2 * size + j] = g
                gates[t, n, 3 * size + j] = o
                cells[t, n, j] = c
                hidden[t, n, j] = o * _tanh(c)


@njit
def _lstm_backward_through_time(gates, cells, dhidden, w_hh_t, dgates, dh_recurrent_t,
                                dh_recurrent, dcell):
    steps, batch, size = cells.shape
    dh_recurrent[:] = 0
    dcell[:] = 0
    for t in range(steps - 1, -1, -1):
        for n in range(batch):
            for j in range(size):
                i = gates[t, n, j]
                f = gates[t, n, size + j]
                g = gates[t, n, 2 * size + j]
                o = gates[t, n, 3 * size + j]
                tanh_c = _tanh(cells[t, n, j])
                c_prev = cells[t - 1, n, j] if t > 0 else 0.0
                dh = dhidden[t, n, j] + dh_recurrent[n, j]
                dc = dcell[n, j] + dh * o * (1.0 - tanh_c * tanh_c)
                dgates[t, n, j] = dc * g * i * (1.0 - i)
                dgates[t, n, size + j] = dc * c_prev * f * (1.0 - f)
                dgates[t, n, 2 * size + j] = dc * i * (1.0 - g * g)
                dgates[t, n, 3 * size + j] = dh * tanh_c * o * (1.0 - o)
                dcell[n, j] = dc * f
        if t > 0:
            _recurrent_grad_product(dgates[t], w_hh_t, dh_recurrent_t, dh_recurrent)


# ---------------------------------------------------------------------------------------------
# gru, gates r, z, n (torch): n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1-z) n + z h
# ---------------------------------------------------------------------------------------------

@njit
def _gru_layer_forward(inputs, w_ih, w_hh, b_ih, b_hh, projected, gates, hidden_proj, hidden,
                       recurrent_t, recurrent):
    # Saves the activated r, z, n in `gates` (apart from `projected`, as for the LSTM) and
    # W_hn h + b_hn in hidden_proj, which the gradient of r needs.
    steps, batch, size = hidden.shape
    _project_inputs(inputs, w_ih, b_ih, projected)
    recurrent[:] = 0                    # zero initial state: no recurrent term at step 0
    for t in range(steps):
        if t > 0:
            _recurrent_product(hidden[t - 1], w_hh, recurrent_t, recurrent)
        for n in range(batch):
            for j in range(size):
                r = _sigmoid(projected[t, n, j] + recurrent[n, j] + b_hh[j])
                z = _sigmoid(projected[t, n, size + j] + recurrent[n, size + j]
                             + b_hh[size + j])
                hn = recurrent[n, 2 * size + j] + b_hh[2 * size + j]
                new = _tanh(projected[t, n, 2 * size + j] + r * hn)
                h_prev = hidden[t - 1, n, j] if t > 0 else 0.0
                gates[t, n, j] = r
                gates[t, n, size + j] = z
                gates[t, n, 2 * size + j] = new
                hidden_proj[t, n, j] = hn
                hidden[t, n, j] = (1.0 - z) * new + z * h_prev


@njit
def _gru_backward_through_time(gates, hidden_proj, hidden, dhidden, w_hh_t,
                               dgates_in, dgates_hidden, dh_recurrent_t, dh_recurrent, dh_direct):
    steps, batch, size = hidden.shape
    dh_recurrent[:] = 0
    for t in range(steps - 1, -1, -1):
        for n in range(batch):
            for j in range(size):
                r = gates[t, n, j]
                z = gates[t, n, size + j]
                new = gates[t, n, 2 * size + j]
                h_prev = hidden[t - 1, n, j] if t > 0 else 0.0
                dh = dhidden[t, n, j] + dh_recurrent[n, j]
                dnew = dh * (1.0 - z) * (1.0 - new * new)
                dr = dnew * hidden_proj[t, n, j] * r * (1.0 - r)
                dz = dh * (h_prev - new) * z * (1.0 - z)
                dgates_in[t, n, j] = dr
                dgates_in[t, n, size + j] = dz
                dgates_in[t, n, 2 * size + j] = dnew
                dgates_hidden[t, n, j] = dr
                dgates_hidden[t, n, size + j] = dz
                # r scales W_hn h + b_hn, so the hidden side of the n gate sees dnew * r.
                dgates_hidden[t, n, 2 * size + j] = dnew * r
                dh_direct[n, j] = dh * z
        if t > 0:
            _recurrent_grad_product(dgates_hidden[t], w_hh_t, dh_recurrent_t, dh_recurrent)
            for n in range(batch):
                for j in range(size):
                    dh_recurrent[n, j] += dh_direct[n, j]


# ---------------------------------------------------------------------------------------------
# kernels: the layer loop and the batch-first <-> time-major plumbing, shared by rnn/lstm/gru
# ---------------------------------------------------------------------------------------------

def _grad_or_empty(gparams, name, ndim, dtype):
    """The gradient array to overwrite, or an empty one meaning 'not wanted' (see _layer_grads)."""
    grad = gparams.get(name)
    return grad if grad is not None else np.empty((0,) * ndim, dtype=dtype)


class _RecurrentKernel(Kernel):
    """Stacked recurrent layers with zero initial state; subclasses supply the cell."""
    gate_count = 1      # G: the weights stack G gate blocks of `hidden` rows

    def __init__(self, spec):
        super().__init__(spec)
        self.batch, self.steps, self.features = spec.in_shapes[0]
        self.size = spec.attrs["hidden"]
        self.layers = spec.attrs["layers"]
        self.sequence = spec.attrs["sequence"]

    def workspace(self):
        steps, batch, size = self.steps, self.batch, self.size
        width = self.gate_count * size
        ws = {
            "inputs_time_major": ((steps, batch, self.features), "float32"),
            "recurrent": ((batch, width), "float32"),            # h_{t-1} @ W_hh^T
            "recurrent_t": ((width, batch), "float32"),          # its transpose, from BLAS
            "dgates": ((steps, batch, width), "float32"),        # reused by every layer
            "dhidden": ((steps, batch, size), "float32"),        # dloss/dh from above, per layer
            "dh_recurrent": ((batch, size), "float32"),          # dloss/dh_{t-1} via W_hh
            "dh_recurrent_t": ((size, batch), "float32"),        # its transpose, from BLAS
            "weight_hh_t": ((size, width), "float32"),           # W_hh^T of the current layer
            "dinputs_time_major": ((steps, batch, self.features), "float32"),
        }
        for layer in range(self.layers):
            ws[f"hidden{layer}"] = ((steps, batch, size), "float32")
        ws.update(self.cell_workspace())
        return ws

    def cell_workspace(self):
        """Buffers only this cell type needs."""
        return {}

    def forward_layer(self, layer, inputs, params, ws):
        raise NotImplementedError

    def backward_through_time(self, layer, ws):
        """Fill the gate gradients of `layer` from ws["dhidden"] and ws["weight_hh_t"] (its
        W_hh^T); return (dgates_in, dgates_hidden)."""
        raise NotImplementedError

    def forward(self, ctx, xs, params, out, ws):
        np.copyto(ws["inputs_time_major"], xs[0].transpose(1, 0, 2))
        inputs = ws["inputs_time_major"]
        for layer in range(self.layers):
            self.forward_layer(layer, inputs, params, ws)
            inputs = ws[f"hidden{layer}"]
        if self.sequence:
            np.copyto(out, inputs.transpose(1, 0, 2))
        else:
            np.copyto(out, inputs[-1])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        dhidden = ws["dhidden"]
        if self.sequence:
            np.copyto(dhidden, gout.transpose(1, 0, 2))
        else:
            dhidden[:-1] = 0
            dhidden[-1] = gout
        dtype = dhidden.dtype
        want_dx = gxs[0] is not None
        for layer in range(self.layers - 1, -1, -1):
            np.copyto(ws["weight_hh_t"], params[f"weight_hh_l{layer}"].T)
            dgates_in, dgates_hidden = self.backward_through_time(layer, ws)
            inputs = ws["inputs_time_major"] if layer == 0 else ws[f"hidden{layer - 1}"]
            # The layer below reads its dloss/dh from dhidden, which this layer no longer needs.
            dinputs = ws["dinputs_time_major"] if layer == 0 else dhidden
            _layer_grads(inputs, ws[f"hidden{layer}"], dgates_in, dgates_hidden,
                         params[f"weight_ih_l{layer}"],
                         _grad_or_empty(gparams, f"weight_ih_l{layer}", 2, dtype),
                         _grad_or_empty(gparams, f"weight_hh_l{layer}", 2, dtype),
                         _grad_or_empty(gparams, f"bias_ih_l{layer}", 1, dtype),
                         _grad_or_empty(gparams, f"bias_hh_l{layer}", 1, dtype),
                         dinputs, layer > 0 or want_dx)
        if want_dx:
            np.copyto(gxs[0], ws["dinputs_time_major"].transpose(1, 0, 2))

    @staticmethod
    def layer_params(params, layer):
        return (params[f"weight_ih_l{layer}"], params[f"weight_hh_l{layer}"],
                params[f"bias_ih_l{layer}"], params[f"bias_hh_l{layer}"])


@register("cpu", "rnn")
class RNNKernel(_RecurrentKernel):
    gate_count = 1

    def forward_layer(self, layer, inputs, params, ws):
        _rnn_layer_forward(inputs, *self.layer_params(params, layer),
                           ws[f"hidden{layer}"], ws["recurrent_t"], ws["recurrent"])

    def backward_through_time(self, layer, ws):
        _rnn_backward_through_time(ws[f"hidden{layer}"], ws["dhidden"], ws["weight_hh_t"],
                                   ws["dgates"], ws["dh_recurrent_t"], ws["dh_recurrent"])
        return ws["dgates"], ws["dgates"]


@register("cpu", "lstm")
class LSTMKernel(_RecurrentKernel):
    gate_count = 4

    def cell_workspace(self):
        shape = (self.steps, self.batch, self.size)
        ws = {
            "projected": ((self.steps, self.batch, 4 * self.size), "float32"),  # every layer's
            "dcell": ((self.batch, self.size), "float32"),
        }
        for layer in range(self.layers):
            ws[f"gates{layer}"] = ((self.steps, self.batch, 4 * self.size), "float32")
            ws[f"cells{layer}"] = (shape, "float32")
        return ws

    def forward_layer(self, layer, inputs, params, ws):
        _lstm_layer_forward(inputs, *self.layer_params(params, layer), ws["projected"],
                            ws[f"gates{layer}"], ws[f"cells{layer}"], ws[f"hidden{layer}"],
                            ws["recurrent_t"], ws["recurrent"])

    def backward_through_time(self, layer, ws):
        _lstm_backward_through_time(ws[f"gates{layer}"], ws[f"cells{layer}"], ws["dhidden"],
                                    ws["weight_hh_t"], ws["dgates"], ws["dh_recurrent_t"],
                                    ws["dh_recurrent"], ws["dcell"])
        return ws["dgates"], ws["dgates"]


@register("cpu", "gru")
class GRUKernel(_RecurrentKernel):
    gate_count = 3

    def cell_workspace(self):
        shape = (self.steps, self.batch, self.size)
        ws = {
            "projected": ((self.steps, self.batch, 3 * self.size), "float32"),  # every layer's
            "dgates_hidden": ((self.steps, self.batch, 3 * self.size), "float32"),
            "dh_direct": ((self.batch, self.size), "float32"),    # dloss/dh_{t-1} via z h_{t-1}
        }
        for layer in range(self.layers):
            ws[f"gates{layer}"] = ((self.steps, self.batch, 3 * self.size), "float32")
            ws[f"hidden_proj{layer}"] = (shape, "float32")
        return ws

    def forward_layer(self, layer, inputs, params, ws):
        _gru_layer_forward(inputs, *self.layer_params(params, layer), ws["projected"],
                           ws[f"gates{layer}"], ws[f"hidden_proj{layer}"], ws[f"hidden{layer}"],
                           ws["recurrent_t"], ws["recurrent"])

    def backward_through_time(self, layer, ws):
        _gru_backward_through_time(ws[f"gates{layer}"], ws[f"hidden_proj{layer}"],
                                   ws[f"hidden{layer}"], ws["dhidden"], ws["weight_hh_t"],
                                   ws["dgates"], ws["dgates_hidden"], ws["dh_recurrent_t"],
                                   ws["dh_recurrent"], ws["dh_direct"])
        return ws["dgates"], ws["dgates_hidden"]
