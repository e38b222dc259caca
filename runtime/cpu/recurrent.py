"""CPU kernels of the recurrent family: embed, rnn (tanh), lstm, gru (docs/OPS.md).

Layout: the user-facing tensors are batch first (N, T, F); every per-layer buffer in the
workspace is feature major, (rows, T, N): inputs (F, T, N), hidden and cell states (H, T, N),
gate pre-activations and gradients (G*H, T, N). Viewed as (rows, T*N) matrices, the work that
does not depend on the recurrence is one GEMM per layer and gate block, and step t of any
buffer is the (rows, N) matrix at column offset t*N with row stride T*N, which BLAS reads in
place:

    forward   projected (G*H, T*N) = W_ih (G*H, F) @ inputs (F, T*N) + biases
              per step: projected[:, t] += W_hh (G*H, H) @ h_{t-1} (H, N)
    backward  per step: dh_{t-1} (H, N) = W_hh^T (H, G*H) @ dgates[:, t] (G*H, N)
              dW_ih = dgates @ inputs^T, dW_hh = dgates[:, 1:] @ h[:, :-1]^T,
              dinputs = W_ih^T @ dgates                                   one GEMM per block

Both cores: the per-step GEMMs are small (M = batch), and BLAS threads them poorly, so each
step splits the hidden units into one part per Numba thread (`prange`) and each part runs its
own single-threaded GEMM and its own elementwise cell math; the gate rows of a part are kept
contiguous by storing the gates part by part (see _gate_row). Forward needs nothing else; in
backward each part computes a partial dh_{t-1} over its own gate rows, and the next step adds
the parts' partials (double-buffered, so no part overwrites a partial another still reads).
One parallel region per step is the only synchronisation. The whole-sequence GEMMs are split
the same way. Each loop body is a closure run either by `prange` or, for one part, directly:
a `prange` over one part would still wake the other worker at every step. BLAS is called directly (scipy's cython_blas sgemm/dgemm, see _gemm) to read
step slices in place, accumulate with beta = 1 and transpose by flag; it runs in the calling
thread (runtime/jit.py's threading policy), so it does not compete with Numba's threads.
Small layers, where a per-step wake-up of the other worker would cost more than it saves,
run as one part (see _RecurrentKernel.__init__).

Forward saves, for every layer and step, what backward needs (activated gates, LSTM cell
states, GRU's W_hn h + b_hn, hidden states); backward is backpropagation through time over
those saves.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types

from runtime.jit import njit, parallel_gemm, pnjit, prange, use_serial_blas
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
# BLAS, called directly
# ---------------------------------------------------------------------------------------------

# Numba's own wrapper of scipy's cython_blas ?gemm (the one np.dot uses), called by symbol
# name: unlike a ctypes pointer to the BLAS function, that lets the callers be cached on disk.
# kind 's' / 'd' picks sgemm / dgemm; the matrices are pointers, the rest plain values.
_XXGEMM = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
    types.voidptr, types.voidptr, types.intp))


@njit
def _gemm(trans_a, trans_b, m, n, k, a, a_at, lda, b, b_at, ldb, beta, c, c_at, ldc):
    """C (m, n) = op(A) @ op(B) + beta * C on matrices inside contiguous arrays of one dtype.

    Each matrix starts at flat element offset `*_at` of its array and has row stride `ld*`
    (elements); op(X) is X^T where `trans_x`. float32 goes to sgemm, float64 (the finite-
    difference tests) to dgemm. BLAS is column major and a row-major matrix is its column-major
    transpose, so this asks BLAS for C^T = op(B)^T op(A)^T.
    """
    if m == 0 or n == 0:
        return
    scalars = np.empty(2, c.dtype)
    scalars[0] = 1.0
    scalars[1] = beta
    kind = 115 if c.itemsize == 4 else 100                          # 's' or 'd'
    _XXGEMM(kind, 116 if trans_b else 110, 116 if trans_a else 110,  # 't' or 'n'
            n, m, k, scalars.ctypes, b.reshape(-1)[b_at:].ctypes, ldb,
            a.reshape(-1)[a_at:].ctypes, lda, scalars[1:].ctypes,
            c.reshape(-1)[c_at:].ctypes, ldc)
    # Numba may free a local array after its last use, and handing its address to BLAS is
    # not one: this write after the call keeps `scalars` alive through it.
    scalars[0] = 0.0


@njit
def _swap_first_and_last_axes(source, target):
    """target[c, b, a] = source[a, b, c] for every step b: batch first (N, T, F) <-> feature
    major (F, slots, N), whose padding slots (see _time_slots) are neither read nor written."""
    first, _, last = source.shape
    middle = min(source.shape[1], target.shape[1])
    # Serial: a copy this size is memory-bound, and not worth a parallel region (runtime/jit.py).
    # The innermost loop writes contiguously; the reads it strides over stay in L1 across c.
    for b in range(middle):
        for c in range(last):
            for a in range(first):
                target[c, b, a] = source[a, b, c]


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


# Gate rows are stored part by part: part p owns hidden units [lo, hi) = bounds[p:p+2] and
# the rows of its G gates for those units, gate after gate, so that one GEMM per part and step
# fills exactly the rows that part's cell math reads. Unit lo + u of gate g sits in row
#     G * lo + g * (hi - lo) + u         of every (G*H, ...) buffer and of the regrouped W_hh,
# and in row g * H + lo + u of the user's weights, biases and their gradients.

@njit
def _group_gate_rows(weight, bounds, gate_count, grouped):
    """grouped = weight (G*H, K) with its rows regrouped part by part."""
    size = weight.shape[0] // gate_count
    for p in range(len(bounds) - 1):
        lo = bounds[p]
        width = bounds[p + 1] - lo
        for g in range(gate_count):
            for u in range(width):
                grouped[gate_count * lo + g * width + u] = weight[g * size + lo + u]


@pnjit
def _project_inputs(inputs, w_ih, b_ih, b_hh, gate_count, folded_gates, bounds, steps,
                    projected):
    """projected (G*H, T, N) = W_ih @ inputs (F, T, N) + b_ih, plus b_hh for the first
    `folded_gates` gates (GRU's n gate adds its b_hh inside r * (...) itself)."""
    rows, slots, batch = projected.shape
    size = rows // gate_count
    features = inputs.shape[0]
    cols = slots * batch                # row stride
    def run_part(p):
        lo = bounds[p]
        width = bounds[p + 1] - lo
        for g in range(gate_count):
            src = g * size + lo
            dst = gate_count * lo + g * width
            _gemm(False, False, width, steps * batch, features, w_ih, src * features, features,
                  inputs, 0, cols, 0.0, projected, dst * cols, cols)
            for u in range(width):
                bias = b_ih[src + u]
                if g < folded_gates:
                    bias += b_hh[src + u]
                for t in range(steps):
                    for n in range(batch):
                        projected[dst + u, t, n] += bias
    if len(bounds) > 2:            # several parts: one per worker
        for p in prange(len(bounds) - 1):
            run_part(p)
    else:
        run_part(0)


@njit
def _add_partials(partials, lo, width, dhidden, t):
    """dhidden[lo:lo+width, t] += every part's partial dh_t (each part's GEMM covers all units)."""
    batch = dhidden.shape[2]
    for q in range(partials.shape[0]):
        for u in range(width):
            for n in range(batch):
                dhidden[lo + u, t, n] += partials[q, lo + u, n]


@njit
def _row_sum(matrix, steps):
    total = 0.0
    for t in range(steps):
        for n in range(matrix.shape[1]):
            total += matrix[t, n]
    return total


@pnjit
def _layer_grads(inputs, hidden, dgates_in, dgates_hidden, w_ih, bounds, gate_count, steps,
                 gw_ih, gw_hh, gb_ih, gb_hh, dinputs, want_dinputs):
    """Parameter and input gradients of one layer from its per-step gate gradients.

    dgates_in / dgates_hidden (G*H, T, N) are the gradients of the pre-activations fed by
    W_ih x + b_ih and by W_hh h + b_hh (the same array except for GRU's n gate). An empty
    gradient array means that parameter wants no gradient; it keeps one compiled signature.
    """
    rows, slots, batch = dgates_in.shape
    size = rows // gate_count
    features = inputs.shape[0]
    cols = slots * batch                # row stride
    used = steps * batch                # the columns that hold steps
    parts = len(bounds) - 1
    def run_part(p):
        lo = bounds[p]
        width = bounds[p + 1] - lo
        for g in range(gate_count):
            src = g * size + lo
            dst = gate_count * lo + g * width
            if gw_ih.size > 0:
                _gemm(False, True, width, features, used, dgates_in, dst * cols, cols,
                      inputs, 0, cols, 0.0, gw_ih, src * features, features)
            if gw_hh.size > 0:
                # h_{t-1} multiplies step t's gates; the initial state is zero, so step 0
                # adds nothing.
                if steps > 1:
                    _gemm(False, True, width, size, used - batch, dgates_hidden,
                          dst * cols + batch, cols, hidden, 0, cols, 0.0, gw_hh, src * size, size)
                else:
                    gw_hh[src:src + width] = 0
            for u in range(width):
                if gb_ih.size > 0:
                    gb_ih[src + u] = _row_sum(dgates_in[dst + u], steps)
                if gb_hh.size > 0:
                    gb_hh[src + u] = _row_sum(dgates_hidden[dst + u], steps)
    if parts > 1:                   # several parts: one per worker
        for p in prange(parts):
            run_part(p)
    else:
        run_part(0)
    if want_dinputs:
        # dinputs = W_ih^T @ dgates_in, summed over the gate blocks; the parts split columns.
        def run_column_part(p):
            first_col = used * p // parts
            width_cols = used * (p + 1) // parts - first_col
            beta = 0.0
            for q in range(parts):
                lo = bounds[q]
                width = bounds[q + 1] - lo
                for g in range(gate_count):
                    _gemm(True, False, features, width_cols, width, w_ih,
                          (g * size + lo) * features, features,
                          dgates_in, (gate_count * lo + g * width) * cols + first_col, cols,
                          beta, dinputs, first_col, cols)
                    beta = 1.0
        if parts > 1:                   # several parts: one per worker
            for p in prange(parts):
                run_column_part(p)
        else:
            run_column_part(0)


# ---------------------------------------------------------------------------------------------
# rnn (tanh): h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
# ---------------------------------------------------------------------------------------------

@pnjit
def _rnn_layer_forward(w_hh, bounds, steps, projected, hidden):
    # The hidden states are the only save: tanh' = 1 - h^2.
    size, slots, batch = hidden.shape
    cols = slots * batch                # row stride
    for t in range(steps):
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            if t > 0:               # zero initial state: no recurrent term at step 0
                _gemm(False, False, width, batch, size, w_hh, lo * size, size,
                      hidden, (t - 1) * batch, cols, 1.0, projected, lo * cols + t * batch, cols)
            for j in range(lo, lo + width):
                for n in range(batch):
                    hidden[j, t, n] = _tanh(projected[j, t, n])
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


@pnjit
def _rnn_backward_through_time(w_hh, bounds, steps, hidden, dhidden, dgates, partials):
    size, slots, batch = hidden.shape
    cols = slots * batch                # row stride
    for t in range(steps - 1, -1, -1):
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            if t < steps - 1:
                _add_partials(partials[(t + 1) % 2], lo, width, dhidden, t)
            for j in range(lo, lo + width):
                for n in range(batch):
                    h = hidden[j, t, n]
                    dgates[j, t, n] = dhidden[j, t, n] * (1.0 - h * h)
            if t > 0:
                _gemm(True, False, size, batch, width, w_hh, lo * size, size,
                      dgates, lo * cols + t * batch, cols, 0.0, partials[t % 2, p], 0, batch)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


# ---------------------------------------------------------------------------------------------
# lstm, gates i, f, g, o: c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
# ---------------------------------------------------------------------------------------------

@pnjit
def _lstm_layer_forward(w_hh, bounds, steps, projected, gates, cells, hidden):
    # Saves the activated i, f, g, o in `gates`, apart from `projected`: rewriting the
    # pre-activations in place stops the loop from vectorising (about 6x slower), as LLVM
    # cannot prove that one gate row's writes miss another row's reads.
    size, slots, batch = hidden.shape
    cols = slots * batch                # row stride
    for t in range(steps):
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 4 * lo
            if t > 0:               # zero initial state: no recurrent term at step 0
                _gemm(False, False, 4 * width, batch, size, w_hh, first * size, size,
                      hidden, (t - 1) * batch, cols, 1.0, projected, first * cols + t * batch, cols)
            for u in range(width):
                j = lo + u
                row_i = first + u
                row_f = row_i + width
                row_g = row_f + width
                row_o = row_g + width
                for n in range(batch):
                    i = _sigmoid(projected[row_i, t, n])
                    f = _sigmoid(projected[row_f, t, n])
                    g = _tanh(projected[row_g, t, n])
                    o = _sigmoid(projected[row_o, t, n])
                    c = i * g
                    if t > 0:
                        c += f * cells[j, t - 1, n]
                    gates[row_i, t, n] = i
                    gates[row_f, t, n] = f
                    gates[row_g, t, n] = g
                    gates[row_o, t, n] = o
                    cells[j, t, n] = c
                    hidden[j, t, n] = o * _tanh(c)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


@pnjit
def _lstm_backward_through_time(w_hh, bounds, steps, gates, cells, dhidden, dgates, partials, dcell):
    size, slots, batch = cells.shape
    cols = slots * batch                # row stride
    for t in range(steps - 1, -1, -1):
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 4 * lo
            later = t < steps - 1       # whether step t+1 sent dh and dc back
            if later:
                _add_partials(partials[(t + 1) % 2], lo, width, dhidden, t)
            for u in range(width):
                j = lo + u
                row_i = first + u
                row_f = row_i + width
                row_g = row_f + width
                row_o = row_g + width
                for n in range(batch):
                    i = gates[row_i, t, n]
                    f = gates[row_f, t, n]
                    g = gates[row_g, t, n]
                    o = gates[row_o, t, n]
                    tanh_c = _tanh(cells[j, t, n])
                    c_prev = cells[j, t - 1, n] if t > 0 else 0.0
                    dh = dhidden[j, t, n]
                    dc = dh * o * (1.0 - tanh_c * tanh_c)
                    if later:
                        dc += dcell[j, n]
                    dgates[row_i, t, n] = dc * g * i * (1.0 - i)
                    dgates[row_f, t, n] = dc * c_prev * f * (1.0 - f)
                    dgates[row_g, t, n] = dc * i * (1.0 - g * g)
                    dgates[row_o, t, n] = dh * tanh_c * o * (1.0 - o)
                    dcell[j, n] = dc * f
            if t > 0:
                _gemm(True, False, size, batch, 4 * width, w_hh, first * size, size,
                      dgates, first * cols + t * batch, cols, 0.0, partials[t % 2, p], 0, batch)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


# ---------------------------------------------------------------------------------------------
# gru, gates r, z, n (torch): n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1-z) n + z h
# ---------------------------------------------------------------------------------------------

@pnjit
def _gru_layer_forward(w_hh, b_hh, bounds, steps, projected, recurrent, gates, hidden_proj, hidden):
    # Saves the activated r, z, n in `gates` and W_hn h + b_hn in hidden_proj, which the
    # gradient of r needs. The recurrent product goes to its own (G*H, N) buffer: the n gate
    # needs it apart from the input projection.
    size, slots, batch = hidden.shape
    cols = slots * batch                # row stride
    for t in range(steps):
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 3 * lo
            if t > 0:
                _gemm(False, False, 3 * width, batch, size, w_hh, first * size, size,
                      hidden, (t - 1) * batch, cols, 0.0, recurrent, first * batch, batch)
            else:                   # zero initial state: no recurrent term at step 0
                recurrent[first:first + 3 * width] = 0
            for u in range(width):
                j = lo + u
                row_r = first + u
                row_z = row_r + width
                row_n = row_z + width
                b_hn = b_hh[2 * size + j]
                for n in range(batch):
                    r = _sigmoid(projected[row_r, t, n] + recurrent[row_r, n])
                    z = _sigmoid(projected[row_z, t, n] + recurrent[row_z, n])
                    hn = recurrent[row_n, n] + b_hn
                    new = _tanh(projected[row_n, t, n] + r * hn)
                    h_prev = hidden[j, t - 1, n] if t > 0 else 0.0
                    gates[row_r, t, n] = r
                    gates[row_z, t, n] = z
                    gates[row_n, t, n] = new
                    hidden_proj[j, t, n] = hn
                    hidden[j, t, n] = (1.0 - z) * new + z * h_prev
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


@pnjit
def _gru_backward_through_time(w_hh, bounds, steps, gates, hidden_proj, hidden, dhidden,
                               dgates_in, dgates_hidden, partials, dh_direct):
    size, slots, batch = hidden.shape
    cols = slots * batch                # row stride
    for t in range(steps - 1, -1, -1):
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 3 * lo
            later = t < steps - 1       # whether step t+1 sent dh back
            if later:
                _add_partials(partials[(t + 1) % 2], lo, width, dhidden, t)
            for u in range(width):
                j = lo + u
                row_r = first + u
                row_z = row_r + width
                row_n = row_z + width
                for n in range(batch):
                    r = gates[row_r, t, n]
                    z = gates[row_z, t, n]
                    new = gates[row_n, t, n]
                    h_prev = hidden[j, t - 1, n] if t > 0 else 0.0
                    dh = dhidden[j, t, n]
                    if later:       # h_t = ... + z h_{t-1}: step t+1's direct path
                        dh += dh_direct[j, n]
                    dnew = dh * (1.0 - z) * (1.0 - new * new)
                    dr = dnew * hidden_proj[j, t, n] * r * (1.0 - r)
                    dz = dh * (h_prev - new) * z * (1.0 - z)
                    dgates_in[row_r, t, n] = dr
                    dgates_in[row_z, t, n] = dz
                    dgates_in[row_n, t, n] = dnew
                    dgates_hidden[row_r, t, n] = dr
                    dgates_hidden[row_z, t, n] = dz
                    # r scales W_hn h + b_hn, so the hidden side of the n gate sees dnew * r.
                    dgates_hidden[row_n, t, n] = dnew * r
                    dh_direct[j, n] = dh * z
            if t > 0:
                _gemm(True, False, size, batch, 3 * width, w_hh, first * size, size,
                      dgates_hidden, first * cols + t * batch, cols, 0.0, partials[t % 2, p],
                      0, batch)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


# ---------------------------------------------------------------------------------------------
# kernels: the layer loop and the batch-first <-> feature-major plumbing, shared by rnn/lstm/gru
# ---------------------------------------------------------------------------------------------

def unit_parts(size, parts):
    """Bounds of `parts` near-equal ranges of the `size` hidden units (see _group_gate_rows)."""
    return np.array([p * size // parts for p in range(parts + 1)], np.int64)


def _time_slots(steps):
    """Step slots per row of the (rows, slots, N) buffers: an odd number above `steps`.

    With exactly T slots the rows of a step slice lie T*N*4 bytes apart, a multiple of 4 KiB
    for the usual power-of-two T and N, so all of them fall in the same few cache sets and
    evict one another in every per-step GEMM and cell loop. An odd slot count makes the row
    stride an odd multiple of the N*4 bytes one row of a step holds, so the rows of a step
    tile the cache sets; the extra slots are never read.
    """
    return steps + 1 if steps % 2 == 0 else steps + 2


def _grad_or_empty(gparams, name, ndim, dtype):
    """The gradient array to overwrite, or an empty one meaning 'not wanted' (see _layer_grads)."""
    grad = gparams.get(name)
    return grad if grad is not None else np.empty((0,) * ndim, dtype=dtype)


class _RecurrentKernel(Kernel):
    """Stacked recurrent layers with zero initial state; subclasses supply the cell."""
    gate_count = 1      # G: the weights stack G gate blocks of `hidden` rows
    folded_gates = 1    # leading gates whose b_hh is added with the input projection

    def __init__(self, spec):
        super().__init__(spec)
        self.batch, self.steps, self.features = spec.in_shapes[0]
        self.size = spec.attrs["hidden"]
        self.layers = spec.attrs["layers"]
        self.sequence = spec.attrs["sequence"]
        use_serial_blas()
        # One part of the hidden units per Numba thread (see the module docstring) when a
        # step's recurrent GEMM is worth splitting.
        step_flops = 2 * self.batch * self.size * self.gate_count * self.size
        parts = min(numba.get_num_threads(), self.size) if parallel_gemm(step_flops) else 1
        self.bounds = unit_parts(self.size, parts)
        self.slots = _time_slots(self.steps)

    def workspace(self):
        slots, batch, size = self.slots, self.batch, self.size
        width = self.gate_count * size
        ws = {
            "inputs": ((self.features, slots, batch), "float32"),
            "projected": ((width, slots, batch), "float32"),    # the current layer's
            "dgates": ((width, slots, batch), "float32"),       # reused by every layer
            "dhidden": ((size, slots, batch), "float32"),       # dloss/dh from above, per layer
            "partials": ((2, len(self.bounds) - 1, size, batch), "float32"),  # parts' dh_{t-1}
            "dinputs": ((self.features, slots, batch), "float32"),
        }
        for layer in range(self.layers):
            ws[f"hidden{layer}"] = ((size, slots, batch), "float32")
            ws[f"weight_hh{layer}"] = ((width, size), "float32")   # W_hh, rows regrouped
        ws.update(self.cell_workspace())
        return ws

    def cell_workspace(self):
        """Buffers only this cell type needs."""
        return {}

    def forward_layer(self, layer, params, ws):
        """Run `layer` over every step from ws["projected"] and its regrouped W_hh."""
        raise NotImplementedError

    def backward_through_time(self, layer, ws):
        """Fill the gate gradients of `layer` from ws["dhidden"]; return (dgates_in,
        dgates_hidden)."""
        raise NotImplementedError

    def forward(self, ctx, xs, params, out, ws):
        inputs = ws["inputs"]
        _swap_first_and_last_axes(xs[0], inputs)
        for layer in range(self.layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_params(params, layer)
            _project_inputs(inputs, w_ih, b_ih, b_hh, self.gate_count, self.folded_gates,
                            self.bounds, self.steps, ws["projected"])
            _group_gate_rows(w_hh, self.bounds, self.gate_count, ws[f"weight_hh{layer}"])
            self.forward_layer(layer, params, ws)
            inputs = ws[f"hidden{layer}"]
        if self.sequence:
            _swap_first_and_last_axes(inputs, out)
        else:
            np.copyto(out, inputs[:, self.steps - 1].T)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        dhidden = ws["dhidden"]
        if self.sequence:
            _swap_first_and_last_axes(gout, dhidden)
        else:
            dhidden[:, :self.steps - 1] = 0
            np.copyto(dhidden[:, self.steps - 1], gout.T)
        dtype = dhidden.dtype
        want_dx = gxs[0] is not None
        for layer in range(self.layers - 1, -1, -1):
            dgates_in, dgates_hidden = self.backward_through_time(layer, ws)
            inputs = ws["inputs"] if layer == 0 else ws[f"hidden{layer - 1}"]
            # The layer below reads its dloss/dh from dhidden, which this layer no longer needs.
            dinputs = ws["dinputs"] if layer == 0 else dhidden
            _layer_grads(inputs, ws[f"hidden{layer}"], dgates_in, dgates_hidden,
                         params[f"weight_ih_l{layer}"], self.bounds, self.gate_count, self.steps,
                         _grad_or_empty(gparams, f"weight_ih_l{layer}", 2, dtype),
                         _grad_or_empty(gparams, f"weight_hh_l{layer}", 2, dtype),
                         _grad_or_empty(gparams, f"bias_ih_l{layer}", 1, dtype),
                         _grad_or_empty(gparams, f"bias_hh_l{layer}", 1, dtype),
                         dinputs, layer > 0 or want_dx)
        if want_dx:
            _swap_first_and_last_axes(ws["dinputs"], gxs[0])

    @staticmethod
    def layer_params(params, layer):
        return (params[f"weight_ih_l{layer}"], params[f"weight_hh_l{layer}"],
                params[f"bias_ih_l{layer}"], params[f"bias_hh_l{layer}"])


@register("cpu", "rnn")
class RNNKernel(_RecurrentKernel):
    gate_count = 1
    folded_gates = 1

    def forward_layer(self, layer, params, ws):
        _rnn_layer_forward(ws[f"weight_hh{layer}"], self.bounds, self.steps, ws["projected"],
                           ws[f"hidden{layer}"])

    def backward_through_time(self, layer, ws):
        _rnn_backward_through_time(ws[f"weight_hh{layer}"], self.bounds, self.steps, ws[f"hidden{layer}"],
                                   ws["dhidden"], ws["dgates"], ws["partials"])
        return ws["dgates"], ws["dgates"]


@register("cpu", "lstm")
class LSTMKernel(_RecurrentKernel):
    gate_count = 4
    folded_gates = 4

    def cell_workspace(self):
        shape = (self.size, self.slots, self.batch)
        ws = {"dcell": ((self.size, self.batch), "float32")}
        for layer in range(self.layers):
            ws[f"gates{layer}"] = ((4 * self.size, self.slots, self.batch), "float32")
            ws[f"cells{layer}"] = (shape, "float32")
        return ws

    def forward_layer(self, layer, params, ws):
        _lstm_layer_forward(ws[f"weight_hh{layer}"], self.bounds, self.steps, ws["projected"],
                            ws[f"gates{layer}"], ws[f"cells{layer}"], ws[f"hidden{layer}"])

    def backward_through_time(self, layer, ws):
        _lstm_backward_through_time(ws[f"weight_hh{layer}"], self.bounds, self.steps, ws[f"gates{layer}"],
                                    ws[f"cells{layer}"], ws["dhidden"], ws["dgates"],
                                    ws["partials"], ws["dcell"])
        return ws["dgates"], ws["dgates"]


@register("cpu", "gru")
class GRUKernel(_RecurrentKernel):
    gate_count = 3
    folded_gates = 2

    def cell_workspace(self):
        shape = (self.size, self.slots, self.batch)
        ws = {
            "recurrent": ((3 * self.size, self.batch), "float32"),   # W_hh h_{t-1}, one step
            "dgates_hidden": ((3 * self.size, self.slots, self.batch), "float32"),
            "dh_direct": ((self.size, self.batch), "float32"),    # dloss/dh_{t-1} via z h_{t-1}
        }
        for layer in range(self.layers):
            ws[f"gates{layer}"] = ((3 * self.size, self.slots, self.batch), "float32")
            ws[f"hidden_proj{layer}"] = (shape, "float32")
        return ws

    def forward_layer(self, layer, params, ws):
        _gru_layer_forward(ws[f"weight_hh{layer}"], params[f"bias_hh_l{layer}"], self.bounds, self.steps,
                           ws["projected"], ws["recurrent"], ws[f"gates{layer}"],
                           ws[f"hidden_proj{layer}"], ws[f"hidden{layer}"])

    def backward_through_time(self, layer, ws):
        _gru_backward_through_time(ws[f"weight_hh{layer}"], self.bounds, self.steps, ws[f"gates{layer}"],
                                   ws[f"hidden_proj{layer}"], ws[f"hidden{layer}"],
                                   ws["dhidden"], ws["dgates"], ws["dgates_hidden"],
                                   ws["partials"], ws["dh_direct"])
        return ws["dgates"], ws["dgates_hidden"]
