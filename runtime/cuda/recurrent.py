"""CUDA kernels of the recurrent family: embed, rnn (tanh), lstm, gru (docs/OPS.md).

The structure follows the CPU kernels (runtime/cpu/recurrent.py), not their layout: user-facing
tensors are batch first (N, T, F); here every per-layer buffer is time major (T, N, ...), so
each step's hidden state is a contiguous (N, H) matrix and "all steps" a contiguous (T*N, ...)
matrix (the CPU keeps the sequence GEMMs' buffers feature major, for BLAS's row strides). The matrix
products run on the shared tiled GEMM (runtime/cuda/gemm.py):

    forward   projected (T*N, G*H) = inputs (T*N, F) @ W_ih^T          one GEMM per layer
              per step: recurrent (N, G*H) = h_{t-1} (N, H) @ W_hh^T     one GEMM per step
    backward  per step: dh_{t-1} (N, H) = dgates_t (N, G*H) @ W_hh        one GEMM per step
              dW_ih = dgates^T @ inputs, dW_hh = dgates[1:]^T @ h[:-1],
              dinputs = dgates @ W_ih                                     one GEMM each per layer

Between the per-step GEMMs, one cell kernel per step (one thread per (n, j) hidden unit) adds
the biases, applies the gate nonlinearities and saves what backward needs (activated gates,
LSTM cell states, GRU's W_hn h + b_hn, hidden states); backward is backpropagation through time
over those saves, one cell-gradient kernel per step.
"""
import dataclasses
import math

from numba import cuda, float32

from dslc.runtime.cpu.stochastic import draw_factors
from dslc.runtime.cuda.devicekernels import fill
from dslc.runtime.cuda.gemm import gemm
from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.cuda.reduce import block_sum, reduction_threads
from dslc.runtime.kernel_api import Kernel, register

# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------

@cuda.jit
def _embed_forward(ids, weight, out):
    i = cuda.grid(1)
    if i < out.size:
        vocab, dim = weight.shape
        position = i // dim
        k = i % dim
        row = ids[position // ids.shape[1], position % ids.shape[1]]
        # A kernel cannot raise: an id outside [0, vocab) (the CPU kernel's IndexError) reads
        # as a zero row instead of reading other memory.
        out[position // ids.shape[1], position % ids.shape[1], k] = \
            weight[row, k] if 0 <= row < vocab else float32(0)


@cuda.jit
def _embed_backward(ids, gout, gweight):
    # Repeated ids add into the same row from different threads: atomics make that race-free.
    i = cuda.grid(1)
    if i < gout.size:
        vocab, dim = gweight.shape
        position = i // dim
        k = i % dim
        n = position // ids.shape[1]
        t = position % ids.shape[1]
        row = ids[n, t]
        if 0 <= row < vocab:
            cuda.atomic.add(gweight, (row, k), gout[n, t, k])


@register("cuda", "embed")
class EmbedKernel(Kernel):
    def forward(self, ctx, xs, params, out, ws):
        _embed_forward[blocks_1d(out.size), THREADS_1D](xs[0], params["weight"], out)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        # ids are integers: there is never an input gradient.
        gweight = gparams.get("weight")
        if gweight is not None:
            fill(gweight, 0)
            _embed_backward[blocks_1d(gout.size), THREADS_1D](xs[0], gout, gweight)


# ---------------------------------------------------------------------------------------------
# shared pieces of the recurrent layers
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _sigmoid(v):
    return float32(1) / (float32(1) + math.exp(-v))


@cuda.jit
def _swap_leading_axes(src, dst):
    """dst[b, a, k] = src[a, b, k]: batch first <-> time major."""
    i = cuda.grid(1)
    if i < dst.size:
        rows, cols, width = dst.shape
        b = i // (cols * width)
        a = (i // width) % cols
        k = i % width
        dst[b, a, k] = src[a, b, k]


@cuda.jit
def _flip_time(src, dst):
    """dst[n, t, k] = src[n, T-1-t, k]: a batch-first sequence reversed in time."""
    i = cuda.grid(1)
    if i < dst.size:
        _, steps, width = dst.shape
        n = i // (steps * width)
        t = (i // width) % steps
        k = i % width
        dst[n, t, k] = src[n, steps - 1 - t, k]


@cuda.jit
def _copy_columns(src, src_at, dst, dst_at, width, add):
    """dst[a, b, dst_at:dst_at+width] = (or +=) src[a, b, src_at:src_at+width]: one direction's
    half of a bidirectional layer's states, one layer direction's initial state, a last step."""
    i = cuda.grid(1)
    rows, cols = dst.shape[0], dst.shape[1]
    if i < rows * cols * width:
        a = i // (cols * width)
        b = (i // width) % cols
        k = i % width
        if add:
            dst[a, b, dst_at + k] += src[a, b, src_at + k]
        else:
            dst[a, b, dst_at + k] = src[a, b, src_at + k]


@cuda.jit
def _multiply(a, b, out):
    """out = a * b elementwise (flat arrays; out may be a)."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] * b[i]


@cuda.jit
def _column_sums(matrix, out):
    """out[k] = sum over rows of matrix[:, k]: one block per column, a tree reduction over rows."""
    scratch = cuda.shared.array(THREADS_1D, float32)
    column = cuda.blockIdx.x
    partial = float32(0)
    for r in range(cuda.threadIdx.x, matrix.shape[0], cuda.blockDim.x):
        partial += matrix[r, column]
    total = block_sum(scratch, partial)
    if cuda.threadIdx.x == 0:
        out[column] = total


# ---------------------------------------------------------------------------------------------
# cells: one thread per (n, j); `has_prev` says whether h_{t-1} (and `recurrent`) exist (t > 0,
# or an initial state), and in backward `has_next` says whether step t+1 passed a gradient back
# (else it is zero). `h_prev` / `c_prev` (N, H) are the previous step's states: at step 0 the
# initial states (zeros without them).
# ---------------------------------------------------------------------------------------------

# rnn (tanh): h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). `hidden` holds the projection
# and is activated in place; backward needs only h (tanh' = 1 - h^2).

@cuda.jit
def _rnn_step(t, has_prev, hidden, recurrent, b_ih, b_hh):
    i = cuda.grid(1)
    _, batch, size = hidden.shape
    if i < batch * size:
        n = i // size
        j = i % size
        v = hidden[t, n, j] + b_ih[j] + b_hh[j]
        if has_prev:
            v += recurrent[n, j]
        hidden[t, n, j] = math.tanh(v)


@cuda.jit
def _rnn_step_backward(t, has_next, hidden, dhidden, dh_recurrent, dgates):
    i = cuda.grid(1)
    _, batch, size = hidden.shape
    if i < batch * size:
        n = i // size
        j = i % size
        dh = dhidden[t, n, j]
        if has_next:
            dh += dh_recurrent[n, j]
        h = hidden[t, n, j]
        dgates[t, n, j] = dh * (float32(1) - h * h)


# lstm, gates i, f, g, o: c_t = f c_{t-1} + i g, h_t = o tanh(c_t). `gates` holds the
# projection and is overwritten with the activated gates.

@cuda.jit
def _lstm_step(t, has_prev, gates, recurrent, b_ih, b_hh, c_prev, cells, hidden):
    i = cuda.grid(1)
    _, batch, size = hidden.shape
    if i < batch * size:
        n = i // size
        j = i % size
        pre_i = gates[t, n, j] + b_ih[j] + b_hh[j]
        pre_f = gates[t, n, size + j] + b_ih[size + j] + b_hh[size + j]
        pre_g = gates[t, n, 2 * size + j] + b_ih[2 * size + j] + b_hh[2 * size + j]
        pre_o = gates[t, n, 3 * size + j] + b_ih[3 * size + j] + b_hh[3 * size + j]
        if has_prev:
            pre_i += recurrent[n, j]
            pre_f += recurrent[n, size + j]
            pre_g += recurrent[n, 2 * size + j]
            pre_o += recurrent[n, 3 * size + j]
        gi = _sigmoid(pre_i)
        gf = _sigmoid(pre_f)
        gg = math.tanh(pre_g)
        go = _sigmoid(pre_o)
        c = gi * gg + gf * c_prev[n, j]
        gates[t, n, j] = gi
        gates[t, n, size + j] = gf
        gates[t, n, 2 * size + j] = gg
        gates[t, n, 3 * size + j] = go
        cells[t, n, j] = c
        hidden[t, n, j] = go * math.tanh(c)


@cuda.jit
def _lstm_step_backward(t, has_next, gates, c_prev, cells, dhidden, dh_recurrent, dcell, dgates):
    i = cuda.grid(1)
    _, batch, size = cells.shape
    if i < batch * size:
        n = i // size
        j = i % size
        gi = gates[t, n, j]
        gf = gates[t, n, size + j]
        gg = gates[t, n, 2 * size + j]
        go = gates[t, n, 3 * size + j]
        tanh_c = math.tanh(cells[t, n, j])
        dh = dhidden[t, n, j]
        if has_next:
            dh += dh_recurrent[n, j]
        dc = dh * go * (float32(1) - tanh_c * tanh_c)
        if has_next:
            dc += dcell[n, j]
        dgates[t, n, j] = dc * gg * gi * (float32(1) - gi)
        dgates[t, n, size + j] = dc * c_prev[n, j] * gf * (float32(1) - gf)
        dgates[t, n, 2 * size + j] = dc * gi * (float32(1) - gg * gg)
        dgates[t, n, 3 * size + j] = dh * tanh_c * go * (float32(1) - go)
        # This thread alone reads and writes dcell[n, j]: in place is safe.
        dcell[n, j] = dc * gf


# gru, gates r, z, n (torch): n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1-z) n + z h.
# `gates` holds the projection and is overwritten with the activated r, z, n; hidden_proj
# saves W_hn h + b_hn, which the gradient of r needs.

@cuda.jit
def _gru_step(t, has_prev, gates, recurrent, b_ih, b_hh, h_prev, hidden_proj, hidden):
    i = cuda.grid(1)
    _, batch, size = hidden.shape
    if i < batch * size:
        n = i // size
        j = i % size
        pre_r = gates[t, n, j] + b_ih[j] + b_hh[j]
        pre_z = gates[t, n, size + j] + b_ih[size + j] + b_hh[size + j]
        hn = b_hh[2 * size + j]
        if has_prev:
            pre_r += recurrent[n, j]
            pre_z += recurrent[n, size + j]
            hn += recurrent[n, 2 * size + j]
        r = _sigmoid(pre_r)
        z = _sigmoid(pre_z)
        new = math.tanh(gates[t, n, 2 * size + j] + b_ih[2 * size + j] + r * hn)
        gates[t, n, j] = r
        gates[t, n, size + j] = z
        gates[t, n, 2 * size + j] = new
        hidden_proj[t, n, j] = hn
        hidden[t, n, j] = (float32(1) - z) * new + z * h_prev[n, j]


@cuda.jit
def _gru_step_backward(t, has_next, gates, hidden_proj, h_prev, dhidden, dh_recurrent, dh_direct,
                       dgates_in, dgates_hidden):
    i = cuda.grid(1)
    _, batch, size = hidden_proj.shape
    if i < batch * size:
        n = i // size
        j = i % size
        r = gates[t, n, j]
        z = gates[t, n, size + j]
        new = gates[t, n, 2 * size + j]
        dh = dhidden[t, n, j]
        if has_next:
            # dloss/dh_t from step t+1: through W_hh (the GEMM) and directly through z h_t.
            dh += dh_recurrent[n, j] + dh_direct[n, j]
        dnew = dh * (float32(1) - z) * (float32(1) - new * new)
        dr = dnew * hidden_proj[t, n, j] * r * (float32(1) - r)
        dz = dh * (h_prev[n, j] - new) * z * (float32(1) - z)
        dgates_in[t, n, j] = dr
        dgates_in[t, n, size + j] = dz
        dgates_in[t, n, 2 * size + j] = dnew
        dgates_hidden[t, n, j] = dr
        dgates_hidden[t, n, size + j] = dz
        # r scales W_hn h + b_hn, so the hidden side of the n gate sees dnew * r.
        dgates_hidden[t, n, 2 * size + j] = dnew * r
        dh_direct[n, j] = dh * z


# ---------------------------------------------------------------------------------------------
# kernels: the layer loop and the batch-first <-> time-major plumbing, shared by rnn/lstm/gru
# ---------------------------------------------------------------------------------------------

@cuda.jit
def _add_into(a, b, out):
    """out = a + b, (N, H) matrices."""
    i = cuda.grid(1)
    if i < out.size:
        n = i // out.shape[1]
        j = i % out.shape[1]
        out[n, j] = a[n, j] + b[n, j]


class _Stack:
    """A composed stack, as on the CPU (runtime/cpu/recurrent.py's _Stack), for bidirectional
    layers and dropout between layers: one single-layer, single-direction kernel per layer and
    direction (the backward one with reverse = true and torch's `_reverse` parameters), each
    with its own workspace (prefixed "l{l}d{d}."); layer l reads layer l-1's states
    [N, T, D*H], [forward, backward], times dropout's factors in training (drawn on the host
    from ctx.rng, as the CPU draws them)."""

    def __init__(self, owner, spec):
        self.owner = owner
        batch, steps, _ = spec.in_shapes[0]
        size = spec.attrs["hidden"]
        self.d = 2 if spec.attrs.get("bidirectional") else 1
        self.p = float(spec.attrs.get("dropout", 0.0))
        self.dropped = False            # whether the last forward applied dropout
        self.parts = []
        for layer in range(spec.attrs["layers"]):
            features = spec.in_shapes[0][2] if layer == 0 else self.d * size
            for d in range(self.d):
                reverse = d == 1 if self.d == 2 else bool(spec.attrs.get("reverse", False))
                attrs = dict(spec.attrs, layers=1, sequence=True, reverse=reverse, bidirectional=False,
                             dropout=0.0)
                shapes = ((batch, steps, features),) + ((batch, 1, size),) * (len(spec.in_shapes) - 1)
                sub = dataclasses.replace(spec, name=f"{spec.name}.l{layer}d{d}", attrs=attrs,
                                          in_shapes=shapes, in_dtypes=("float32",) * len(shapes),
                                          out_shape=(batch, steps, size), param_shapes={})
                self.parts.append(type(owner)(sub))

    @staticmethod
    def _names(layer, d):
        suffix = "_reverse" if d else ""
        return {f"{kind}_l0": f"{kind}_l{layer}{suffix}"
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}

    def workspace(self):
        o, width = self.owner, self.d * self.owner.size
        ws = {}
        for i, part in enumerate(self.parts):
            for name, spec in part.workspace().items():
                ws[f"l{i // self.d}d{i % self.d}.{name}"] = spec
        for layer in range(o.layers):
            ws[f"layer{layer}"] = ((o.batch, o.steps, width), "float32")
            if self.p > 0 and layer < o.layers - 1:
                ws[f"factors{layer}"] = ((o.batch, o.steps, width), "float32")
                ws[f"dropped{layer}"] = ((o.batch, o.steps, width), "float32")
        for d in range(self.d):
            ws[f"out{d}"] = ((o.batch, o.steps, o.size), "float32")
            ws[f"gout{d}"] = ((o.batch, o.steps, o.size), "float32")
        ws["grad_states"] = ((o.batch, o.steps, width), "float32")
        ws["dstates"] = ((o.batch, o.steps, width), "float32")
        ws["dx"] = ((o.batch, o.steps, o.features), "float32")
        ws["states"] = ((2, o.batch, 1, o.size), "float32")     # one part's h0 (c0)
        ws["gstates"] = ((2, o.batch, 1, o.size), "float32")
        return ws

    def _own(self, ws, i):
        prefix = f"l{i // self.d}d{i % self.d}."
        return {k[len(prefix):]: v for k, v in ws.items() if k.startswith(prefix)}

    def _copy(self, src, src_at, dst, dst_at, width, add=False):
        n = dst.shape[0] * dst.shape[1] * width
        _copy_columns[blocks_1d(n), THREADS_1D](src, src_at, dst, dst_at, width, add)

    def _multiply(self, a, b, out):
        _multiply[blocks_1d(out.size), THREADS_1D](a.reshape(a.size), b.reshape(b.size), out.reshape(out.size))

    def _flat_states(self, x):
        o = self.owner
        return x.reshape(o.batch, 1, self.d * o.layers * o.size)

    def _part_states(self, xs, ws, i):
        o = self.owner
        for k, x in enumerate(xs[1:]):
            self._copy(self._flat_states(x), i * o.size, ws["states"][k], 0, o.size)
        return [ws["states"][k] for k in range(len(xs) - 1)]

    def _layer_input(self, ws, layer, xs):
        if layer == 0:
            return xs[0]
        return ws[f"dropped{layer - 1}"] if self.dropped else ws[f"layer{layer - 1}"]

    def forward(self, ctx, xs, params, out, ws):
        o = self.owner
        self.dropped = self.p > 0 and ctx.training
        for layer in range(o.layers):
            inputs = self._layer_input(ws, layer, xs)
            states = ws[f"layer{layer}"]
            for d in range(self.d):
                i = self.d * layer + d
                own = {k: params[v] for k, v in self._names(layer, d).items()}
                self.parts[i].forward(ctx, [inputs] + self._part_states(xs, ws, i), own, ws[f"out{d}"],
                                      self._own(ws, i))
                self._copy(ws[f"out{d}"], 0, states, d * o.size, o.size)
            if self.dropped and layer < o.layers - 1:
                factors = ws[f"factors{layer}"]
                factors.copy_to_device(draw_factors(ctx, factors.shape, self.p))
                self._multiply(states, factors, ws[f"dropped{layer}"])
        top = ws[f"layer{o.layers - 1}"]
        if o.sequence:
            out.copy_to_device(top)
        else:
            width = self.d * o.size
            self._copy(top.reshape(o.batch, 1, o.steps * width), (o.steps - 1) * width,
                       out.reshape(o.batch, 1, width), 0, width)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        o = self.owner
        grad = ws["grad_states"]
        width = self.d * o.size
        if o.sequence:
            grad.copy_to_device(gout)
        else:
            fill(grad, 0)
            self._copy(gout.reshape(o.batch, 1, width), 0, grad.reshape(o.batch, 1, o.steps * width),
                       (o.steps - 1) * width, width)
        for layer in range(o.layers - 1, -1, -1):
            inputs = self._layer_input(ws, layer, xs)
            for d in range(self.d):
                self._copy(grad, d * o.size, ws[f"gout{d}"], 0, o.size)
            want_dx = layer > 0 or gxs[0] is not None
            dinputs = ws["dx"] if layer == 0 else ws["dstates"]
            total = grad if layer > 0 else gxs[0]
            for d in range(self.d):
                i = self.d * layer + d
                own = {k: params[v] for k, v in self._names(layer, d).items()}
                gown = {k: gparams[v] for k, v in self._names(layer, d).items() if v in gparams}
                gstates = [None if g is None else ws["gstates"][k] for k, g in enumerate(gxs[1:])]
                self.parts[i].backward(ctx, [inputs] + self._part_states(xs, ws, i), own, ws[f"out{d}"],
                                       ws[f"gout{d}"], [dinputs if want_dx else None, *gstates], gown,
                                       self._own(ws, i))
                for k, g in enumerate(gxs[1:]):
                    if g is not None:
                        self._copy(ws["gstates"][k], 0, self._flat_states(g), i * o.size, o.size)
                if want_dx:
                    self._copy(dinputs, 0, total, 0, dinputs.shape[2], add=d == 1)
            if layer > 0 and self.dropped:
                self._multiply(total, ws[f"factors{layer - 1}"], total)


class _RecurrentKernel(Kernel):
    """Stacked recurrent layers; subclasses supply the cell.

    The initial states, optional inputs xs[1] (h0) and, for the LSTM, xs[2] (c0), each
    [N, layers, H] or [N, H] for one layer, are swapped to time major ws["h0"] / ws["c0"]
    (layers, N, H), zeros without them; step 0 reads them as h_{-1} / c_{-1}. Their gradients
    are what step 0 sends back (through W_hh, GRU's direct path, LSTM's dc).
    """
    gate_count = 1      # G: the weights stack G gate blocks of `hidden` rows

    def __init__(self, spec):
        super().__init__(spec)
        self.batch, self.steps, self.features = spec.in_shapes[0]
        self.size = spec.attrs["hidden"]
        self.layers = spec.attrs["layers"]
        self.sequence = spec.attrs["sequence"]
        self.init = len(spec.in_shapes) > 1         # an initial-state input
        # Bidirectional layers and dropout between layers run as a composed stack (_Stack).
        composed = spec.attrs.get("bidirectional") or (spec.attrs.get("dropout", 0.0) > 0 and self.layers > 1)
        self.stack = _Stack(self, spec) if composed else None
        # reverse: the layers run over the sequence flipped in time, whose states are flipped
        # back (torch's flip -> layer -> flip), through the flipped_* buffers.
        self.reverse = bool(spec.attrs.get("reverse", False))
        self.cell_grid = blocks_1d(self.batch * self.size)
        self.sum_threads = reduction_threads(self.steps * self.batch)

    def workspace(self):
        if self.stack:
            return self.stack.workspace()
        steps, batch, size = self.steps, self.batch, self.size
        width = self.gate_count * size
        ws = {
            "inputs_time_major": ((steps, batch, self.features), "float32"),
            "recurrent": ((batch, width), "float32"),            # h_{t-1} @ W_hh^T
            "dgates": ((steps, batch, width), "float32"),        # reused by every layer
            "dhidden": ((steps, batch, size), "float32"),        # dloss/dh from above, per layer
            "dh_recurrent": ((batch, size), "float32"),          # dloss/dh_{t-1} via W_hh
            "dinputs_time_major": ((steps, batch, self.features), "float32"),
            "h0": ((self.layers, batch, size), "float32"),       # initial states, time major
            "dh0": ((self.layers, batch, size), "float32"),
        }
        for layer in range(self.layers):
            ws[f"hidden{layer}"] = ((steps, batch, size), "float32")
        if self.reverse:
            ws["flipped_in"] = ((batch, steps, self.features), "float32")
            if self.sequence:
                ws["flipped_out"] = ((batch, steps, size), "float32")
        ws.update(self.cell_workspace())
        return ws

    def cell_workspace(self):
        """Buffers only this cell type needs."""
        return {}

    def forward_step(self, layer, t, params, ws):
        """Run the cell kernel of step t; ws["recurrent"] holds h_{t-1} @ W_hh^T when t > 0."""
        raise NotImplementedError

    def projection(self, layer, ws):
        """The (T, N, G*H) buffer that receives inputs @ W_ih^T before the cell steps."""
        raise NotImplementedError

    def backward_step(self, layer, t, params, ws):
        """Fill step t's gate gradients from ws["dhidden"] and what step t+1 passed back."""
        raise NotImplementedError

    def hidden_gate_grads(self, ws):
        """The (T, N, G*H) gradients of the pre-activations fed by W_hh h + b_hh."""
        return ws["dgates"]

    def _grid(self, n):
        return blocks_1d(n), THREADS_1D

    def _batch_first(self, array):
        """An initial state (or its gradient), [N, layers, H] or [N, H], as (N, layers, H)."""
        return array.reshape(self.batch, self.layers, self.size)

    def read_initial_states(self, xs, ws):
        if self.init:
            _swap_leading_axes[self._grid(ws["h0"].size)](self._batch_first(xs[1]), ws["h0"])
        else:
            fill(ws["h0"], 0)

    def write_initial_state_grads(self, gxs, ws):
        if self.init and gxs[1] is not None:
            _swap_leading_axes[self._grid(ws["dh0"].size)](ws["dh0"], self._batch_first(gxs[1]))

    def initial_state_grads(self, layer, ws):
        """dloss/dh_{-1} of `layer` into ws["dh0"][layer], after its step 0 (backward_step)."""
        ws["dh0"][layer].copy_to_device(ws["dh_recurrent"])

    def h_prev(self, layer, t, ws):
        return ws[f"hidden{layer}"][t - 1] if t > 0 else ws["h0"][layer]

    def forward(self, ctx, xs, params, out, ws):
        if self.stack:
            return self.stack.forward(ctx, xs, params, out, ws)
        inputs = ws["inputs_time_major"]
        self.read_initial_states(xs, ws)
        x = xs[0]
        if self.reverse:
            _flip_time[self._grid(x.size)](x, ws["flipped_in"])
            x = ws["flipped_in"]
        _swap_leading_axes[self._grid(inputs.size)](x, inputs)
        rows = self.steps * self.batch
        for layer in range(self.layers):
            w_hh = params[f"weight_hh_l{layer}"]
            projected = self.projection(layer, ws)
            gemm(inputs.reshape(rows, inputs.shape[2]), params[f"weight_ih_l{layer}"],
                 projected.reshape(rows, projected.shape[2]), trans_b=True)
            hidden = ws[f"hidden{layer}"]
            for t in range(self.steps):
                if t > 0 or self.init:
                    gemm(self.h_prev(layer, t, ws), w_hh, ws["recurrent"], trans_b=True)
                self.forward_step(layer, t, params, ws)
            inputs = hidden
        if self.sequence and self.reverse:
            _swap_leading_axes[self._grid(out.size)](inputs, ws["flipped_out"])
            _flip_time[self._grid(out.size)](ws["flipped_out"], out)
        elif self.sequence:
            _swap_leading_axes[self._grid(out.size)](inputs, out)
        else:
            out.copy_to_device(inputs[self.steps - 1])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if self.stack:
            return self.stack.backward(ctx, xs, params, out, gout, gxs, gparams, ws)
        dhidden = ws["dhidden"]
        if self.sequence and self.reverse:
            _flip_time[self._grid(gout.size)](gout, ws["flipped_out"])
            _swap_leading_axes[self._grid(dhidden.size)](ws["flipped_out"], dhidden)
        elif self.sequence:
            _swap_leading_axes[self._grid(dhidden.size)](gout, dhidden)
        else:
            fill(dhidden, 0)
            dhidden[self.steps - 1].copy_to_device(gout)
        want_dx = gxs[0] is not None
        for layer in range(self.layers - 1, -1, -1):
            w_hh = params[f"weight_hh_l{layer}"]
            dgates_hidden = self.hidden_gate_grads(ws)
            for t in range(self.steps - 1, -1, -1):
                self.backward_step(layer, t, params, ws)
                if t > 0 or self.init:
                    gemm(dgates_hidden[t], w_hh, ws["dh_recurrent"])
            if self.init:
                self.initial_state_grads(layer, ws)
            inputs = ws["inputs_time_major"] if layer == 0 else ws[f"hidden{layer - 1}"]
            # The layer below reads its dloss/dh from dhidden, which this layer no longer needs.
            dinputs = ws["dinputs_time_major"] if layer == 0 else dhidden
            self._layer_grads(layer, inputs, ws, params, gparams, dinputs, layer > 0 or want_dx)
        if want_dx and self.reverse:
            _swap_leading_axes[self._grid(gxs[0].size)](ws["dinputs_time_major"], ws["flipped_in"])
            _flip_time[self._grid(gxs[0].size)](ws["flipped_in"], gxs[0])
        elif want_dx:
            _swap_leading_axes[self._grid(gxs[0].size)](ws["dinputs_time_major"], gxs[0])
        self.write_initial_state_grads(gxs, ws)

    def _layer_grads(self, layer, inputs, ws, params, gparams, dinputs, want_dinputs):
        """Parameter and input gradients of one layer from its per-step gate gradients."""
        rows = self.steps * self.batch
        width = self.gate_count * self.size
        flat_in = ws["dgates"].reshape(rows, width)
        flat_hidden = self.hidden_gate_grads(ws).reshape(rows, width)
        gw_ih = gparams.get(f"weight_ih_l{layer}")
        if gw_ih is not None:
            gemm(flat_in, inputs.reshape(rows, inputs.shape[2]), gw_ih, trans_a=True)
        gw_hh = gparams.get(f"weight_hh_l{layer}")
        if gw_hh is not None:
            # h_{t-1} multiplies step t's gates; a zero initial state adds nothing at step 0.
            if self.steps > 1:
                flat_h = ws[f"hidden{layer}"].reshape(rows, self.size)
                gemm(flat_hidden[self.batch:], flat_h[:rows - self.batch], gw_hh, trans_a=True)
            else:
                fill(gw_hh, 0)
            if self.init:
                gemm(flat_hidden[:self.batch], ws["h0"][layer], gw_hh, trans_a=True, beta=1.0)
        for name, flat in ((f"bias_ih_l{layer}", flat_in), (f"bias_hh_l{layer}", flat_hidden)):
            gbias = gparams.get(name)
            if gbias is not None:
                _column_sums[width, self.sum_threads](flat, gbias)
        if want_dinputs:
            gemm(flat_in, params[f"weight_ih_l{layer}"], dinputs.reshape(rows, dinputs.shape[2]))

    @staticmethod
    def biases(params, layer):
        return params[f"bias_ih_l{layer}"], params[f"bias_hh_l{layer}"]


@register("cuda", "rnn")
class RNNKernel(_RecurrentKernel):
    gate_count = 1

    def projection(self, layer, ws):
        return ws[f"hidden{layer}"]

    def forward_step(self, layer, t, params, ws):
        _rnn_step[self.cell_grid, THREADS_1D](t, t > 0 or self.init, ws[f"hidden{layer}"], ws["recurrent"],
                                              *self.biases(params, layer))

    def backward_step(self, layer, t, params, ws):
        _rnn_step_backward[self.cell_grid, THREADS_1D](t, t < self.steps - 1, ws[f"hidden{layer}"],
                                                       ws["dhidden"], ws["dh_recurrent"], ws["dgates"])


@register("cuda", "lstm")
class LSTMKernel(_RecurrentKernel):
    gate_count = 4

    def cell_workspace(self):
        shape = (self.steps, self.batch, self.size)
        ws = {"dcell": ((self.batch, self.size), "float32"),
              "c0": ((self.layers, self.batch, self.size), "float32"),    # time major
              "dc0": ((self.layers, self.batch, self.size), "float32")}
        for layer in range(self.layers):
            ws[f"gates{layer}"] = ((self.steps, self.batch, 4 * self.size), "float32")
            ws[f"cells{layer}"] = (shape, "float32")
        return ws

    def projection(self, layer, ws):
        return ws[f"gates{layer}"]

    def c_prev(self, layer, t, ws):
        return ws[f"cells{layer}"][t - 1] if t > 0 else ws["c0"][layer]

    def read_initial_states(self, xs, ws):
        super().read_initial_states(xs, ws)
        if len(xs) > 2:
            _swap_leading_axes[self._grid(ws["c0"].size)](self._batch_first(xs[2]), ws["c0"])
        else:                           # no c0 (h0 alone or no initial state): zero
            fill(ws["c0"], 0)

    def initial_state_grads(self, layer, ws):
        super().initial_state_grads(layer, ws)
        ws["dc0"][layer].copy_to_device(ws["dcell"])

    def write_initial_state_grads(self, gxs, ws):
        super().write_initial_state_grads(gxs, ws)
        if len(gxs) > 2 and gxs[2] is not None:
            _swap_leading_axes[self._grid(ws["dc0"].size)](ws["dc0"], self._batch_first(gxs[2]))

    def forward_step(self, layer, t, params, ws):
        _lstm_step[self.cell_grid, THREADS_1D](t, t > 0 or self.init, ws[f"gates{layer}"],
                                               ws["recurrent"], *self.biases(params, layer),
                                               self.c_prev(layer, t, ws), ws[f"cells{layer}"],
                                               ws[f"hidden{layer}"])

    def backward_step(self, layer, t, params, ws):
        _lstm_step_backward[self.cell_grid, THREADS_1D](
            t, t < self.steps - 1, ws[f"gates{layer}"], self.c_prev(layer, t, ws), ws[f"cells{layer}"],
            ws["dhidden"], ws["dh_recurrent"], ws["dcell"], ws["dgates"])


@register("cuda", "gru")
class GRUKernel(_RecurrentKernel):
    gate_count = 3

    def cell_workspace(self):
        shape = (self.steps, self.batch, self.size)
        ws = {
            "dgates_hidden": ((self.steps, self.batch, 3 * self.size), "float32"),
            "dh_direct": ((self.batch, self.size), "float32"),    # dloss/dh_{t-1} via z h_{t-1}
        }
        for layer in range(self.layers):
            ws[f"gates{layer}"] = ((self.steps, self.batch, 3 * self.size), "float32")
            ws[f"hidden_proj{layer}"] = (shape, "float32")
        return ws

    def projection(self, layer, ws):
        return ws[f"gates{layer}"]

    def hidden_gate_grads(self, ws):
        return ws["dgates_hidden"]

    def forward_step(self, layer, t, params, ws):
        _gru_step[self.cell_grid, THREADS_1D](t, t > 0 or self.init, ws[f"gates{layer}"],
                                              ws["recurrent"], *self.biases(params, layer),
                                              self.h_prev(layer, t, ws), ws[f"hidden_proj{layer}"],
                                              ws[f"hidden{layer}"])

    def backward_step(self, layer, t, params, ws):
        _gru_step_backward[self.cell_grid, THREADS_1D](
            t, t < self.steps - 1, ws[f"gates{layer}"], ws[f"hidden_proj{layer}"],
            self.h_prev(layer, t, ws), ws["dhidden"], ws["dh_recurrent"], ws["dh_direct"],
            ws["dgates"], ws["dgates_hidden"])

    def initial_state_grads(self, layer, ws):
        # dloss/dh_{-1}: through W_hh (dh_recurrent) and directly through z h_{-1} (dh_direct)
        _add_into[self.cell_grid, THREADS_1D](ws["dh_recurrent"], ws["dh_direct"], ws["dh0"][layer])
