"""CPU kernels of the recurrent family: embed, rnn (tanh), lstm, gru (docs/OPS.md).

Layout: the user-facing tensors are batch first (N, T, F). In the workspace, what the
whole-sequence GEMMs read or write is feature major, (rows, T, N): the inputs (F, T, N), the
hidden states (H, T, N), dloss/dh (H, T, N) and the gate gradients (G*H, T, N). Viewed as
(rows, T*N) matrices, each product over the sequence is one GEMM, and step t of such a buffer
is the (rows, N) matrix at column offset t*N with row stride T*N, which BLAS reads in place.
What only the cell loops read or write is time major: one step's gate pre-activations or
gate gradients in a (G*H, N) step block, and the per-step saves, (T, rows, N): LSTM gates
and cell states, GRU gates and W_hn h + b_hn. A step of those is one contiguous block, where
in a feature-major buffer consecutive units of a step lie T*N values apart, and a cell loop
walking ~10 such strided streams at once outruns the hardware prefetcher (the LSTM's forward
cell math took ~4 ms per layer so, ~1.8 ms on step blocks; single thread, the benchmark's
size). The cell loops touch at most two feature-major streams (the hidden state, dloss/dh,
the RNN's gate gradients). Per layer:

    forward   per step: step (G*H, N) = W_ih (G*H, F) @ x_t + W_hh (G*H, H) @ h_{t-1}, then
              the cell math (which adds the biases as it reads the pre-activations)
    backward  per step: the cell math into a step block, dh_{t-1} (H, N) = W_hh^T @ that
              block, and the block stored into dgates[:, t]
              after the loop: dW_ih = dgates @ inputs^T, dW_hh = dgates[:, 1:] @ h[:, :-1]^T,
              dinputs = W_ih^T @ dgates, bias gradients = row sums of dgates

The input projection is a GEMM per step (K = F) rather than one over the sequence: that one
could only write feature major, copying its output into step blocks cost 1.2-2.5 ms per
layer, and per step it runs as fast (see _step_products; projecting chunks of 2-8 steps at
once was no faster either). Every per-step GEMM is cut into blocks small enough for
OpenBLAS's unpacked small-matrix kernel (_step_gemm), 13-22% faster than one call each.
In inference plans, a layer that absorbed the embed before it gathers its first layer's input
projection from a table of one column per id instead (_RecurrentKernel.fuse_input).
A time-major layout with the batch innermost inside each step, (T, N, rows), would keep the
sequence GEMMs whole without any store, but BLAS ran the per-step GEMMs, which then write a
(N, G*H) block, ~30% slower (measured with one call per step: W_hh @ h_{t-1} over 64 steps,
H 256, N 32).

Both cores: the per-step GEMMs are small (M = batch), and BLAS threads them poorly, so each
step splits the hidden units into one part per Numba thread (`prange`) and each part runs its
own single-threaded GEMM and its own elementwise cell math; the gate rows of a part are kept
contiguous by regrouping the gate rows of W_ih, W_hh, the biases and every (G*H, ...) buffer
part by part (see _group_gate_rows), copies made once per forward. Forward needs nothing
else; in backward each part computes a partial dh_{t-1} over its own gate rows, and the next
step adds the parts' partials (double-buffered, so no part overwrites a partial another still
reads). Those partials read W_hh^T through a transposed copy made once per layer and
backward: BLAS takes a column block of it as a plain operand, where asking it to transpose a
row block of W_hh ran the step's GEMM 1.2-1.6x slower at the benchmark's size. (Splitting
dh_{t-1} by units instead, with no partials, needs K = G*H deep GEMMs of half the width,
which BLAS ran ~10% slower than the partials cost.) One parallel region per step is the only
synchronisation; the whole-sequence GEMMs of a layer's gradients share one region. Each loop
body is a closure run either by `prange` or, for one part, directly: a `prange` over one part
would still wake the other worker at every step. BLAS is called directly (scipy's cython_blas
sgemm/dgemm, see runtime/cpu/blas.py) to read step slices in place, accumulate with beta = 1
and transpose by flag; it runs in the calling thread (runtime/jit.py's threading policy), so
it does not compete with Numba's threads. Small layers, where a per-step wake-up of the other
worker would cost more than it saves, run as one part (see _RecurrentKernel.__init__).

The cell loops are written for LLVM's vectoriser, which gives up silently: no branch on the
step inside them (step 0 reads the zero initial state from a padding slot, see _time_slots),
few arrays per loop, float32 constants (see _tanh). Each of these was worth 1.7-3x on its
loop measured alone.

Forward saves, for every layer and step, what backward needs (activated gates, LSTM cell
states, GRU's W_hn h + b_hn, hidden states); backward is backpropagation through time over
those saves.
"""
from __future__ import annotations

import dataclasses

import numba
import numpy as np

from dslc.runtime.cpu.arrays import copy_into
from dslc.runtime.cpu.blas import gemm
from dslc.runtime.cpu.stochastic import draw_factors
from dslc.runtime.jit import njit, parallel_gemm, pnjit, prange, use_serial_blas
from dslc.runtime.kernel_api import Kernel, register

# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------

@njit
def _checked_id(ids, n, t, vocab):
    """ids[n, t], which must be a row of the embedding table: Numba does not bounds-check,
    so a bad id would silently read other memory."""
    row = ids[n, t]
    if row < 0 or row >= vocab:
        raise IndexError("embed: id outside [0, vocab)")
    return row


@njit
def _embed_forward(ids, weight, out):
    vocab, dim = weight.shape
    batch, steps = ids.shape
    for n in range(batch):
        for t in range(steps):
            row = _checked_id(ids, n, t, vocab)
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


@njit
def _ids_time_major(ids, vocab, out):
    """out[t, n] = ids[n, t], checked as _embed_forward checks them: the ids of an embed that
    a recurrent layer absorbed (_RecurrentKernel.fuse_input)."""
    batch, steps = ids.shape
    for n in range(batch):
        for t in range(steps):
            out[t, n] = _checked_id(ids, n, t, vocab)


# ---------------------------------------------------------------------------------------------
# layout changes
# ---------------------------------------------------------------------------------------------

@njit
def _swap_first_and_last_axes(source, target):
    """target[c, b, a] = source[a, b, c] for every step b: batch first (N, T, F) <-> feature
    major (F, slots, N), whose padding slots (see _time_slots) are neither read nor written."""
    first, _, last = source.shape
    middle = min(source.shape[1], target.shape[1])
    # Serial: a copy this size is memory-bound, and not worth a parallel region (runtime/jit.py).
    # The innermost loop runs along the longer of the two swapped axes, contiguous on that
    # side; the other side's strided accesses stay in L1 across the middle loop (the other
    # order is several times slower: docs/CPU-BACKEND.md).
    if last >= first:
        for b in range(middle):
            for a in range(first):
                for c in range(last):
                    target[c, b, a] = source[a, b, c]
    else:
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
#
# Every constant in the cell math is a float32 (_ONE, np.float32(...)): a Python float is a
# float64 and would turn float32 arithmetic into float64, half as many lanes per vector plus
# conversions (the backward cell loop ran 1.7x slower so). float64 inputs stay float64.
_ONE = np.float32(1.0)


@njit
def _tanh(x):
    clamp = np.float32(7.90531110763549805)
    v = min(max(x, -clamp), clamp)
    v2 = v * v
    p = v2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = p * v2 - np.float32(8.60467152213735e-11)
    p = p * v2 + np.float32(5.12229709037114e-08)
    p = p * v2 + np.float32(1.48572235717979e-05)
    p = p * v2 + np.float32(6.37261928875436e-04)
    p = p * v2 + np.float32(4.89352455891786e-03)
    q = v2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = q * v2 + np.float32(2.26843463243900e-03)
    q = q * v2 + np.float32(4.89352518554385e-03)
    # np.divide, not `/`: Numba's `/` checks for division by zero and raises, and that
    # branch stops the loops calling this from vectorising (q >= 4.9e-3 here anyway).
    return np.divide(v * p, q)


@njit
def _sigmoid(x):
    half = np.float32(0.5)
    return half + half * _tanh(half * x)


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
                copy_into(grouped[gate_count * lo + g * width + u], weight[g * size + lo + u])


@njit
def _group_biases(b_ih, b_hh, bounds, gate_count, folded_gates, grouped):
    """grouped (G*H,) = b_ih + b_hh, regrouped part by part like the gate rows; only b_ih for
    the gates past the first `folded_gates` (GRU's n gate adds its b_hh inside r * (...))."""
    size = b_ih.shape[0] // gate_count
    for p in range(len(bounds) - 1):
        lo = bounds[p]
        width = bounds[p + 1] - lo
        for g in range(gate_count):
            for u in range(width):
                bias = b_ih[g * size + lo + u]
                if g < folded_gates:
                    bias += b_hh[g * size + lo + u]
                grouped[gate_count * lo + g * width + u] = bias


@njit
def _transpose(matrix, transposed):
    rows, cols = matrix.shape
    # Blocks of 16 x 16 keep both the reads and the writes within a few cache lines.
    for r0 in range(0, rows, 16):
        for c0 in range(0, cols, 16):
            for c in range(c0, min(c0 + 16, cols)):
                for r in range(r0, min(r0 + 16, rows)):
                    transposed[c, r] = matrix[r, c]


# OpenBLAS's SkylakeX kernels (what scipy's OpenBLAS picks on the benchmark's machine) run
# small GEMMs through a small-matrix kernel that packs neither operand. A step's GEMM is
# larger (1024 x 32 x 256 for an LSTM of 256 units, batch 32) and repacks the same weights
# at every step; cut into blocks of 64 x 32 x 256 (2^19 multiply-adds) it runs faster, while
# blocks of 128 x 32 x 256 run slower than one call: the cut-off lies between, near 10^6
# (figures in docs/CPU-BACKEND.md).
_SMALL_GEMM_MACS = 1 << 19
_SMALL_GEMM_DEPTH = 256
_SMALL_GEMM_MIN_ROWS = 16           # thinner blocks: one call (no measurement below this)


@njit
def _step_gemm(m, n, k, a, a_at, lda, b, b_at, ldb, beta, c, c_at, ldc):
    """C (m, n) = A (m, k) @ B (k, n) + beta * C, like blas.gemm without transposes, as
    blocks of rows and depth small enough for OpenBLAS's small-matrix kernel (see above)."""
    depth = min(k, _SMALL_GEMM_DEPTH)
    rows = _SMALL_GEMM_MACS // max(n * depth, 1)
    if rows < _SMALL_GEMM_MIN_ROWS:
        gemm(False, False, m, n, k, a, a_at, lda, b, b_at, ldb, beta, c, c_at, ldc)
        return
    for r0 in range(0, m, rows):
        block_rows = min(rows, m - r0)
        for k0 in range(0, k, depth):
            gemm(False, False, block_rows, n, min(depth, k - k0), a, a_at + r0 * lda + k0, lda,
                 b, b_at + k0 * ldb, ldb, beta if k0 == 0 else 1.0, c, c_at + r0 * ldc, ldc)


@njit
def _step_products(w_ih, inputs, ids, w_hh, hidden, first, rows, t, init, recurrent_apart, preact,
                   preact_hidden):
    """The pre-activations of step t for `rows` regrouped gate rows from `first`:
    preact[first:first+rows] (rows, N) = W_ih x_t, and W_hh h_{t-1} added to it, or written
    to preact_hidden where `recurrent_apart` (GRU's n gate needs it apart). x_t and h_{t-1}
    are read in place from the feature-major inputs and hidden states. The biases are left
    to the cell loops, which add them as they read the pre-activations.

    With `ids` (time major, (slots, N); empty otherwise) the layer reads an absorbed embed:
    w_ih is then the table of W_ih x for every id, (G*H, vocab) with its rows regrouped,
    and W_ih x_t is column ids[t, n] of it for each n (see _RecurrentKernel.fuse_input).

    With `init` (an initial-state input), step 0 multiplies h_{-1}, which the layer's caller
    wrote to the padding slot (_time_slots); without it h_{-1} is zero and step 0 skips that
    product.

    Cut into small blocks (_step_gemm), W_ih x_t per step ran as fast as one GEMM over the
    sequence (single thread, the benchmark's size: 2.5 vs 3.0-3.4 ms at F = 64, 11.0-11.8 vs
    11.2-11.8 ms at F = 256), and it lands in the step block the cell loop reads while that
    is still in cache (module docstring). One GEMM over [W_ih W_hh] and a stacked
    [x_t; h_{t-1}] ran slower than the two."""
    features = inputs.shape[0]
    size, slots, batch = hidden.shape
    if ids.shape[0] > 0:
        for r in range(first, first + rows):
            for n in range(batch):
                preact[r, n] = w_ih[r, ids[t, n]]
    else:
        _step_gemm(rows, batch, features, w_ih, first * features, features, inputs, t * batch,
                   slots * batch, 0.0, preact, first * batch, batch)
    prev = (t - 1) % slots
    if recurrent_apart:
        if t > 0 or init:
            _step_gemm(rows, batch, size, w_hh, first * size, size, hidden, prev * batch,
                       slots * batch, 0.0, preact_hidden, first * batch, batch)
        else:               # zero initial state
            preact_hidden[first:first + rows] = 0
    elif t > 0 or init:     # zero initial state: no recurrent term at step 0
        _step_gemm(rows, batch, size, w_hh, first * size, size, hidden, prev * batch,
                   slots * batch, 1.0, preact, first * batch, batch)


@njit
def _store_step(step, first, rows, t, sequence):
    """sequence[first:first+rows, t] = step[first:first+rows]: one step's block into a
    feature-major (rows, slots, N) buffer. The backward cell loops write their step's gate
    gradients to a step block and store it with this afterwards: writing the feature-major
    buffer from the cell loop directly ran the LSTM's backward through time ~8% slower."""
    for r in range(first, first + rows):
        copy_into(sequence[r, t], step[r])


@njit
def _add_partials(partials, lo, width, dhidden, t):
    """dhidden[lo:lo+width, t] += every part's partial dh_t (each part's GEMM covers all units)."""
    batch = dhidden.shape[2]
    for q in range(partials.shape[0]):
        for u in range(width):
            for n in range(batch):
                dhidden[lo + u, t, n] += partials[q, lo + u, n]


@njit
def _row_sums(matrix, first_row, rows, steps, sums, sums_at):
    """sums[sums_at + u] = the sum of matrix[first_row + u] (a (G*H, T, N) buffer) over the
    first `steps` steps and the batch.

    One float64 accumulator per batch column: the loop over the batch then vectorises, where
    one running total is a chain of dependent adds.
    """
    batch = matrix.shape[2]
    lanes = np.empty(batch)
    for u in range(rows):
        lanes[:] = 0.0
        for t in range(steps):
            for n in range(batch):
                lanes[n] += matrix[first_row + u, t, n]
        sums[sums_at + u] = lanes.sum()


@pnjit
def _layer_grads(inputs, hidden, dgates_in, dgates_hidden, shared_dgates, w_ih, bounds,
                 gate_count, steps, init, gw_ih, gw_hh, gb_ih, gb_hh, dinputs, want_dinputs):
    """Parameter and input gradients of one layer from its per-step gate gradients.

    dgates_in / dgates_hidden (G*H, T, N) are the gradients of the pre-activations fed by
    W_ih x + b_ih and by W_hh h + b_hh, the same array where `shared_dgates` (all but GRU),
    whose bias gradients are then summed once; w_ih has its rows regrouped. An empty gradient
    array means that parameter wants no gradient; it keeps one compiled signature. With
    `init`, h_{-1} (the padding slot of `hidden`) is an initial state, whose product with
    step 0's gates adds to W_hh's gradient.
    Everything here only reads the gate gradients, so one parallel region does it all: each
    part computes the parameter gradients of its gate rows and dinputs = W_ih^T @ dgates_in
    for its share of the columns.
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
                gemm(False, True, width, features, used, dgates_in, dst * cols, cols,
                      inputs, 0, cols, 0.0, gw_ih, src * features, features)
            if gw_hh.size > 0:
                # h_{t-1} multiplies step t's gates; a zero initial state adds nothing at
                # step 0.
                if steps > 1:
                    gemm(False, True, width, size, used - batch, dgates_hidden,
                          dst * cols + batch, cols, hidden, 0, cols, 0.0, gw_hh, src * size, size)
                else:
                    gw_hh[src:src + width] = 0
                if init:
                    gemm(False, True, width, size, batch, dgates_hidden, dst * cols, cols,
                          hidden, (slots - 1) * batch, cols, 1.0, gw_hh, src * size, size)
            if gb_ih.size > 0:
                _row_sums(dgates_in, dst, width, steps, gb_ih, src)
            if gb_hh.size > 0:
                if shared_dgates and gb_ih.size > 0:
                    copy_into(gb_hh[src:src + width], gb_ih[src:src + width])
                else:
                    _row_sums(dgates_hidden, dst, width, steps, gb_hh, src)
        if want_dinputs:
            # The regrouped rows of W_ih line up with those of dgates_in: one GEMM over all.
            first_col = used * p // parts
            gemm(True, False, features, used * (p + 1) // parts - first_col, rows, w_ih, 0,
                  features, dgates_in, first_col, cols, 0.0, dinputs, first_col, cols)
    if parts > 1:                   # several parts: one per worker
        for p in prange(parts):
            run_part(p)
    else:
        run_part(0)


# ---------------------------------------------------------------------------------------------
# rnn (tanh): h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
# ---------------------------------------------------------------------------------------------

@pnjit
def _rnn_layer_forward(inputs, ids, w_ih, w_hh, bias, bounds, steps, init, preact, hidden):
    # The hidden states are the only save: tanh' = 1 - h^2.
    size, slots, batch = hidden.shape
    for t in range(steps):
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            _step_products(w_ih, inputs, ids, w_hh, hidden, lo, width, t, init, False, preact,
                           preact)
            for j in range(lo, lo + width):
                b = bias[j]
                for n in range(batch):
                    hidden[j, t, n] = _tanh(preact[j, n] + b)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


@pnjit
def _rnn_backward_through_time(w_hh_t, bounds, steps, init, hidden, dhidden, dgates, partials):
    # With `init`, step 0 also sends dloss/dh_{-1} back, into partials[0] (the caller sums it).
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
                    dgates[j, t, n] = dhidden[j, t, n] * (_ONE - h * h)
            if t > 0 or init:
                _step_gemm(size, batch, width, w_hh_t, lo, size, dgates, lo * cols + t * batch,
                           cols, 0.0, partials[t % 2, p], 0, batch)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


# ---------------------------------------------------------------------------------------------
# lstm, gates i, f, g, o: c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
# ---------------------------------------------------------------------------------------------

@pnjit
def _lstm_layer_forward(inputs, ids, w_ih, w_hh, bias, bounds, steps, init, preact, gates, cells,
                        hidden):
    # Saves the activated i, f, g, o in `gates` and the cell states in `cells`, both time
    # major (see the module docstring).
    size, slots, batch = hidden.shape
    if not init:
        cells[slots - 1] = 0            # c_{-1}: see _time_slots (else the caller wrote c0)
    for t in range(steps):
        prev = (t - 1) % slots
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 4 * lo
            _step_products(w_ih, inputs, ids, w_hh, hidden, first, 4 * width, t, init, False,
                           preact, preact)
            for u in range(width):
                j = lo + u
                row_i = first + u       # gate blocks i, f, g, o, `width` rows each
                row_f = row_i + width
                row_g = row_f + width
                row_o = row_g + width
                b_i = bias[row_i]
                b_f = bias[row_f]
                b_g = bias[row_g]
                b_o = bias[row_o]
                for n in range(batch):
                    i = _sigmoid(preact[row_i, n] + b_i)
                    f = _sigmoid(preact[row_f, n] + b_f)
                    g = _tanh(preact[row_g, n] + b_g)
                    o = _sigmoid(preact[row_o, n] + b_o)
                    gates[t, row_i, n] = i
                    gates[t, row_f, n] = f
                    gates[t, row_g, n] = g
                    gates[t, row_o, n] = o
                    cell = i * g + f * cells[prev, j, n]
                    cells[t, j, n] = cell
                    hidden[j, t, n] = o * _tanh(cell)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


@pnjit
def _lstm_backward_through_time(w_hh_t, bounds, steps, init, gates, cells, dhidden, dgates,
                                partials, dcell, step_dgates):
    # The cell loop has no branch on t: one stops it from vectorising (about 3x slower), so
    # dc_{T} starts at zero and c_{-1} is read from the slot forward left (_time_slots). With
    # `init`, step 0 sends dloss/dh_{-1} into partials[0]; dcell ends as dloss/dc_{-1}.
    size, slots, batch = dhidden.shape
    dcell[:] = 0
    for t in range(steps - 1, -1, -1):
        prev = (t - 1) % slots
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 4 * lo
            if t < steps - 1:           # step t+1 sent dh back
                _add_partials(partials[(t + 1) % 2], lo, width, dhidden, t)
            for u in range(width):
                j = lo + u
                row_i = first + u
                row_f = row_i + width
                row_g = row_f + width
                row_o = row_g + width
                for n in range(batch):
                    i = gates[t, row_i, n]
                    f = gates[t, row_f, n]
                    g = gates[t, row_g, n]
                    o = gates[t, row_o, n]
                    tanh_c = _tanh(cells[t, j, n])
                    dh = dhidden[j, t, n]
                    dc = dh * o * (_ONE - tanh_c * tanh_c) + dcell[j, n]
                    step_dgates[row_i, n] = dc * g * i * (_ONE - i)
                    step_dgates[row_f, n] = dc * cells[prev, j, n] * f * (_ONE - f)
                    step_dgates[row_g, n] = dc * i * (_ONE - g * g)
                    step_dgates[row_o, n] = dh * tanh_c * o * (_ONE - o)
                    dcell[j, n] = dc * f
            if t > 0 or init:
                _step_gemm(size, batch, 4 * width, w_hh_t, first, 4 * size, step_dgates,
                           first * batch, batch, 0.0, partials[t % 2, p], 0, batch)
            _store_step(step_dgates, first, 4 * width, t, dgates)
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


# ---------------------------------------------------------------------------------------------
# gru, gates r, z, n (torch): n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1-z) n + z h
# ---------------------------------------------------------------------------------------------

@pnjit
def _gru_layer_forward(inputs, ids, w_ih, w_hh, bias, b_hh, bounds, steps, init, preact,
                       preact_hidden, gates, hidden_proj, hidden):
    # Saves the activated r, z, n in `gates` and W_hn h + b_hn in hidden_proj (time major),
    # which the gradient of r needs. The recurrent product goes to its own step buffer: the
    # n gate needs it apart from the input projection.
    size, slots, batch = hidden.shape
    if not init:
        hidden[:, slots - 1] = 0        # h_{-1}: see _time_slots (else the caller wrote h0)
    for t in range(steps):
        prev = (t - 1) % slots
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 3 * lo
            _step_products(w_ih, inputs, ids, w_hh, hidden, first, 3 * width, t, init, True,
                           preact, preact_hidden)
            for u in range(width):
                j = lo + u
                row_r = first + u
                row_z = row_r + width
                row_n = row_z + width
                b_r = bias[row_r]
                b_z = bias[row_z]
                b_in = bias[row_n]
                b_hn = b_hh[2 * size + j]
                for n in range(batch):
                    r = _sigmoid(preact[row_r, n] + b_r + preact_hidden[row_r, n])
                    z = _sigmoid(preact[row_z, n] + b_z + preact_hidden[row_z, n])
                    hn = preact_hidden[row_n, n] + b_hn
                    new = _tanh(preact[row_n, n] + b_in + r * hn)
                    gates[t, row_r, n] = r
                    gates[t, row_z, n] = z
                    gates[t, row_n, n] = new
                    hidden_proj[t, j, n] = hn
                    hidden[j, t, n] = (_ONE - z) * new + z * hidden[j, prev, n]
        if len(bounds) > 2:            # several parts: one per worker
            for p in prange(len(bounds) - 1):
                run_part(p)
        else:
            run_part(0)


@pnjit
def _gru_backward_through_time(w_hh_t, bounds, steps, init, gates, hidden_proj, hidden, dhidden,
                               dgates_in, dgates_hidden, partials, dh_direct, step_dgates_in,
                               step_dgates_hidden):
    # No branch on t in the cell loop (see _lstm_backward_through_time): the direct path
    # starts at zero and h_{-1} is read from the slot forward left. With `init`, step 0 sends
    # dloss/dh_{-1} through W_hh into partials[0]; dh_direct ends as its direct part.
    size, slots, batch = hidden.shape
    dh_direct[:] = 0
    for t in range(steps - 1, -1, -1):
        prev = (t - 1) % slots
        def run_part(p):
            lo = bounds[p]
            width = bounds[p + 1] - lo
            first = 3 * lo
            if t < steps - 1:           # step t+1 sent dh back
                _add_partials(partials[(t + 1) % 2], lo, width, dhidden, t)
            for u in range(width):
                j = lo + u
                row_r = first + u
                row_z = row_r + width
                row_n = row_z + width
                for n in range(batch):
                    r = gates[t, row_r, n]
                    z = gates[t, row_z, n]
                    new = gates[t, row_n, n]
                    # h_{t+1} = ... + z h_t: step t+1's direct path adds to dloss/dh_t.
                    dh = dhidden[j, t, n] + dh_direct[j, n]
                    dnew = dh * (_ONE - z) * (_ONE - new * new)
                    dr = dnew * hidden_proj[t, j, n] * r * (_ONE - r)
                    dz = dh * (hidden[j, prev, n] - new) * z * (_ONE - z)
                    step_dgates_in[row_r, n] = dr
                    step_dgates_in[row_z, n] = dz
                    step_dgates_in[row_n, n] = dnew
                    step_dgates_hidden[row_r, n] = dr
                    step_dgates_hidden[row_z, n] = dz
                    # r scales W_hn h + b_hn, so the hidden side of the n gate sees dnew * r.
                    step_dgates_hidden[row_n, n] = dnew * r
                    dh_direct[j, n] = dh * z
            if t > 0 or init:
                _step_gemm(size, batch, 3 * width, w_hh_t, first, 3 * size, step_dgates_hidden,
                           first * batch, batch, 0.0, partials[t % 2, p], 0, batch)
            _store_step(step_dgates_in, first, 3 * width, t, dgates_in)
            _store_step(step_dgates_hidden, first, 3 * width, t, dgates_hidden)
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
    """Step slots of the feature-major (rows, slots, N) and time-major (slots, rows, N)
    buffers: an odd number above `steps`.

    With exactly T slots the rows of a feature-major step slice lie T*N*4 bytes apart, a
    multiple of 4 KiB for the usual power-of-two T and N, so all of them fall in the same few
    cache sets and evict one another in every per-step GEMM that reads them in place. An odd
    slot count makes the row stride an odd multiple of the N*4 bytes one row of a step holds,
    so the rows of a step tile the cache sets. The extra slots hold no step; the cell loops
    read the last one of the cell or hidden states as the zero initial state c_{-1} / h_{-1}
    (slot (t - 1) mod slots; the forward of the layer zeroes it), so that step 0 needs no
    branch of its own.
    """
    return steps + 1 if steps % 2 == 0 else steps + 2


def _grad_or_empty(gparams, name, ndim, dtype):
    """The gradient array to overwrite, or an empty one meaning 'not wanted' (see _layer_grads)."""
    grad = gparams.get(name)
    return grad if grad is not None else np.empty((0,) * ndim, dtype=dtype)


class _Stack:
    """A stack of layers composed of one single-layer, single-direction kernel of the same cell
    per layer and direction, for what the fused stack does not do: bidirectional layers (the
    backward direction a kernel with reverse = true, torch's `_reverse` parameters) and
    dropout between layers. Layer l reads layer l-1's states [N, T, D*H], the directions'
    concatenated [forward, backward], with dropout's factors applied in training (drawn from
    ctx.rng as the dropout op draws, layer 0's first). Each part has its own workspace
    (prefixed "l{l}d{d}."); backward sums the directions' input gradients. Initial states,
    [N, D * layers, H], go to part D*l + d."""

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
        ws["gstates"] = ((2, o.batch, 1, o.size), "float32")
        return ws

    def _own(self, ws, i):
        prefix = f"l{i // self.d}d{i % self.d}."
        return {k[len(prefix):]: v for k, v in ws.items() if k.startswith(prefix)}

    def _states(self, xs, i):
        o = self.owner
        return [x.reshape(o.batch, self.d * o.layers, o.size)[:, i:i + 1] for x in xs[1:]]

    def _layer_input(self, ws, layer, xs):
        """What layer `layer` reads: the input, or the states below with dropout's factors."""
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
                self.parts[i].forward(ctx, [inputs] + self._states(xs, i), own, ws[f"out{d}"],
                                      self._own(ws, i))
                states[:, :, d * o.size:(d + 1) * o.size] = ws[f"out{d}"]
            if self.dropped and layer < o.layers - 1:
                factors = ws[f"factors{layer}"]
                factors[...] = draw_factors(ctx, factors.shape, self.p)
                np.multiply(states, factors, out=ws[f"dropped{layer}"])
        top = ws[f"layer{o.layers - 1}"]
        np.copyto(out, top if o.sequence else top[:, o.steps - 1])

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        o = self.owner
        grad = ws["grad_states"]            # dloss/d(the states of the layer in hand)
        if o.sequence:
            np.copyto(grad, gout)
        else:
            grad[:] = 0
            grad[:, o.steps - 1] = gout
        for layer in range(o.layers - 1, -1, -1):
            inputs = self._layer_input(ws, layer, xs)
            for d in range(self.d):
                np.copyto(ws[f"gout{d}"], grad[:, :, d * o.size:(d + 1) * o.size])
            want_dx = layer > 0 or gxs[0] is not None
            dinputs = ws["dx"] if layer == 0 else ws["dstates"]
            # The sum of the directions' input gradients: the layer below's dloss/d(states),
            # in `grad` (read already), or the input's gradient itself.
            total = grad if layer > 0 else gxs[0]
            for d in range(self.d):
                i = self.d * layer + d
                own = {k: params[v] for k, v in self._names(layer, d).items()}
                gown = {k: gparams[v] for k, v in self._names(layer, d).items() if v in gparams}
                gstates = [None if g is None else ws["gstates"][k] for k, g in enumerate(gxs[1:])]
                self.parts[i].backward(ctx, [inputs] + self._states(xs, i), own, ws[f"out{d}"],
                                       ws[f"gout{d}"], [dinputs if want_dx else None, *gstates], gown,
                                       self._own(ws, i))
                for k, g in enumerate(gxs[1:]):
                    if g is not None:
                        g.reshape(o.batch, self.d * o.layers, o.size)[:, i] = ws["gstates"][k][:, 0]
                if want_dx and d == 0:
                    np.copyto(total, dinputs)
                elif want_dx:
                    total += dinputs
            if layer > 0 and self.dropped:
                total *= ws[f"factors{layer - 1}"]


class _RecurrentKernel(Kernel):
    """Stacked recurrent layers; subclasses supply the cell.

    The initial states, optional inputs xs[1] (h0) and, for the LSTM, xs[2] (c0), each
    [N, layers, H] or [N, H] for one layer, go to the padding slot of each layer's hidden
    (cell) states, which the cell loops read as h_{-1} (c_{-1}) (see _time_slots); without
    h0 that slot holds zeros and step 0 skips its recurrent product. Their gradients are what
    step 0 sends back: the parts' partial dh_{-1} (plus GRU's direct path) and LSTM's dc_{-1}.
    """
    gate_count = 1      # G: the weights stack G gate blocks of `hidden` rows
    folded_gates = 1    # leading gates whose b_hh is added with the input projection

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
        use_serial_blas()
        # One part of the hidden units per Numba thread (see the module docstring) when a
        # step's recurrent GEMM is worth splitting.
        step_flops = 2 * self.batch * self.size * self.gate_count * self.size
        parts = min(numba.get_num_threads(), self.size) if parallel_gemm(step_flops) else 1
        self.bounds = unit_parts(self.size, parts)
        self.slots = _time_slots(self.steps)
        self.vocab = None               # set by fuse_input: the absorbed embed's
        self._no_ids = np.empty((0, self.batch), np.int64)

    def fuse_input(self, op, attrs) -> bool:
        """The plan's hook for the node that feeds this one, in inference plans: an embed,
        when its vocabulary is no larger than a batch's positions. The first layer's input
        projection of an embedded id, W_ih E[id], is then column `id` of the table W_ih E^T
        (G*H, vocab), one small GEMM per forward; each step gathers its columns in place of
        a GEMM (_step_products), and the embeddings are never written. For the benchmark's
        LSTM (vocab 65, 64 features, N*T = 2048 positions) that drops 0.27 of 3.5 GFLOP and
        the layout swap of the inputs."""
        if op != "embed" or attrs["vocab"] > self.batch * self.steps or self.reverse or self.stack:
            return False
        self.vocab = int(attrs["vocab"])
        return True

    def workspace(self):
        if self.stack:
            return self.stack.workspace()
        slots, batch, size = self.slots, self.batch, self.size
        width = self.gate_count * size
        ws = {
            # an absorbed embed's layer reads no embeddings, but the table and its ids
            "inputs": ((0 if self.vocab else self.features, slots, batch), "float32"),
            # One step's gate block: the pre-activations in forward, their gradients in
            # backward (see the module docstring).
            "step_gates": ((width, batch), "float32"),
            "dgates": ((width, slots, batch), "float32"),       # reused by every layer
            "dhidden": ((size, slots, batch), "float32"),       # dloss/dh from above, per layer
            "partials": ((2, len(self.bounds) - 1, size, batch), "float32"),  # parts' dh_{t-1}
            "dinputs": ((self.features, slots, batch), "float32"),
            "weight_hh_t": ((size, width), "float32"),    # the current layer's, transposed
        }
        for layer in range(self.layers):
            features = self.features if layer == 0 else size
            ws[f"hidden{layer}"] = ((size, slots, batch), "float32")
            # The parameters with their gate rows regrouped (see _group_gate_rows).
            ws[f"weight_ih{layer}"] = ((width, features), "float32")
            ws[f"weight_hh{layer}"] = ((width, size), "float32")
            ws[f"bias{layer}"] = ((width,), "float32")     # see _group_biases
        if self.reverse:
            ws["flipped_in"] = ((self.batch, self.steps, self.features), "float32")
            if self.sequence:
                ws["flipped_out"] = ((self.batch, self.steps, size), "float32")
        if self.vocab:
            ws["table"] = ((width, self.vocab), "float32")
            ws["ids"] = ((slots, batch), "int64")
        ws.update(self.cell_workspace())
        return ws

    def cell_workspace(self):
        """Buffers only this cell type needs."""
        return {}

    def forward_layer(self, layer, inputs, ids, w_ih, params, ws):
        """Run `layer` over every step of `inputs` with its regrouped weights and biases; with
        `ids` not empty, over the ids of an absorbed embed, w_ih being its table (see
        _step_products)."""
        raise NotImplementedError

    def backward_through_time(self, layer, ws):
        """Fill the gate gradients of `layer` from ws["dhidden"] and ws["weight_hh_t"];
        return (dgates_in, dgates_hidden)."""
        raise NotImplementedError

    def _states(self, arrays):
        """The initial-state inputs (or their gradients) as (N, layers, H) views, None kept."""
        return [None if a is None else a.reshape(self.batch, self.layers, self.size)
                for a in arrays[1:]]

    def write_initial_state(self, layer, states, ws):
        """Put layer's h0 (and c0) where step 0 reads h_{-1} (c_{-1})."""
        ws[f"hidden{layer}"][:, self.slots - 1] = states[0][:, layer].T

    def initial_state_grads(self, layer, gstates, ws):
        """Write dloss/dh0 (and dc0) of `layer` after its backward through time."""
        if gstates[0] is not None:
            gstates[0][:, layer] = ws["partials"][0].sum(axis=0).T

    def forward(self, ctx, xs, params, out, ws):
        if self.stack:
            return self.stack.forward(ctx, xs, params, out, ws)
        inputs, ids = ws["inputs"], self._no_ids
        states = self._states(xs)
        if self.vocab:              # xs[0] holds the absorbed embed's ids (fuse_input)
            ids = ws["ids"]
            _ids_time_major(xs[0], self.vocab, ids)
        elif self.reverse:
            np.copyto(ws["flipped_in"], xs[0][:, ::-1])
            _swap_first_and_last_axes(ws["flipped_in"], inputs)
        else:
            _swap_first_and_last_axes(xs[0], inputs)
        for layer in range(self.layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_params(params, layer)
            grouped_w_ih = ws[f"weight_ih{layer}"]
            _group_gate_rows(w_ih, self.bounds, self.gate_count, grouped_w_ih)
            _group_gate_rows(w_hh, self.bounds, self.gate_count, ws[f"weight_hh{layer}"])
            _group_biases(b_ih, b_hh, self.bounds, self.gate_count, self.folded_gates,
                          ws[f"bias{layer}"])
            if self.init:
                self.write_initial_state(layer, states, ws)
            if layer == 0 and self.vocab:
                np.dot(grouped_w_ih, params["input.embed.weight"].T, out=ws["table"])
                self.forward_layer(layer, inputs, ids, ws["table"], params, ws)
            else:
                self.forward_layer(layer, inputs, self._no_ids, grouped_w_ih, params, ws)
            inputs = ws[f"hidden{layer}"]
        if self.sequence and self.reverse:
            _swap_first_and_last_axes(inputs, ws["flipped_out"])
            np.copyto(out, ws["flipped_out"][:, ::-1])
        elif self.sequence:
            _swap_first_and_last_axes(inputs, out)
        else:
            np.copyto(out, inputs[:, self.steps - 1].T)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if self.stack:
            return self.stack.backward(ctx, xs, params, out, gout, gxs, gparams, ws)
        dhidden = ws["dhidden"]
        if self.sequence and self.reverse:
            np.copyto(ws["flipped_out"], gout[:, ::-1])
            _swap_first_and_last_axes(ws["flipped_out"], dhidden)
        elif self.sequence:
            _swap_first_and_last_axes(gout, dhidden)
        else:
            dhidden[:, :self.steps - 1] = 0
            np.copyto(dhidden[:, self.steps - 1], gout.T)
        dtype = dhidden.dtype
        want_dx = gxs[0] is not None
        gstates = self._states(gxs)
        for layer in range(self.layers - 1, -1, -1):
            # The per-step partials read W_hh^T's columns of a part's gate rows (module
            # docstring): transposed once per layer here.
            _transpose(ws[f"weight_hh{layer}"], ws["weight_hh_t"])
            dgates_in, dgates_hidden = self.backward_through_time(layer, ws)
            if self.init:
                self.initial_state_grads(layer, gstates, ws)
            inputs = ws["inputs"] if layer == 0 else ws[f"hidden{layer - 1}"]
            # The layer below reads its dloss/dh from dhidden, which this layer no longer needs.
            dinputs = ws["dinputs"] if layer == 0 else dhidden
            _layer_grads(inputs, ws[f"hidden{layer}"], dgates_in, dgates_hidden,
                         dgates_in is dgates_hidden, ws[f"weight_ih{layer}"], self.bounds,
                         self.gate_count, self.steps, self.init,
                         _grad_or_empty(gparams, f"weight_ih_l{layer}", 2, dtype),
                         _grad_or_empty(gparams, f"weight_hh_l{layer}", 2, dtype),
                         _grad_or_empty(gparams, f"bias_ih_l{layer}", 1, dtype),
                         _grad_or_empty(gparams, f"bias_hh_l{layer}", 1, dtype),
                         dinputs, layer > 0 or want_dx)
        if want_dx and self.reverse:
            _swap_first_and_last_axes(ws["dinputs"], ws["flipped_in"])
            np.copyto(gxs[0], ws["flipped_in"][:, ::-1])
        elif want_dx:
            _swap_first_and_last_axes(ws["dinputs"], gxs[0])

    @staticmethod
    def layer_params(params, layer):
        return (params[f"weight_ih_l{layer}"], params[f"weight_hh_l{layer}"],
                params[f"bias_ih_l{layer}"], params[f"bias_hh_l{layer}"])


@register("cpu", "rnn")
class RNNKernel(_RecurrentKernel):
    gate_count = 1
    folded_gates = 1

    def forward_layer(self, layer, inputs, ids, w_ih, params, ws):
        _rnn_layer_forward(inputs, ids, w_ih, ws[f"weight_hh{layer}"],
                           ws[f"bias{layer}"], self.bounds, self.steps, self.init, ws["step_gates"],
                           ws[f"hidden{layer}"])

    def backward_through_time(self, layer, ws):
        _rnn_backward_through_time(ws["weight_hh_t"], self.bounds, self.steps, self.init,
                                   ws[f"hidden{layer}"], ws["dhidden"], ws["dgates"],
                                   ws["partials"])
        return ws["dgates"], ws["dgates"]


@register("cpu", "lstm")
class LSTMKernel(_RecurrentKernel):
    gate_count = 4
    folded_gates = 4

    def cell_workspace(self):
        ws = {"dcell": ((self.size, self.batch), "float32")}
        for layer in range(self.layers):
            # Time major (module docstring).
            ws[f"gates{layer}"] = ((self.slots, 4 * self.size, self.batch), "float32")
            ws[f"cells{layer}"] = ((self.slots, self.size, self.batch), "float32")
        return ws

    def forward_layer(self, layer, inputs, ids, w_ih, params, ws):
        _lstm_layer_forward(inputs, ids, w_ih, ws[f"weight_hh{layer}"],
                            ws[f"bias{layer}"], self.bounds, self.steps, self.init,
                            ws["step_gates"], ws[f"gates{layer}"], ws[f"cells{layer}"], ws[f"hidden{layer}"])

    def backward_through_time(self, layer, ws):
        _lstm_backward_through_time(ws["weight_hh_t"], self.bounds, self.steps, self.init,
                                    ws[f"gates{layer}"], ws[f"cells{layer}"], ws["dhidden"],
                                    ws["dgates"], ws["partials"], ws["dcell"], ws["step_gates"])
        return ws["dgates"], ws["dgates"]

    def write_initial_state(self, layer, states, ws):
        super().write_initial_state(layer, states, ws)
        cells = ws[f"cells{layer}"][self.slots - 1]
        if len(states) > 1:
            cells[:] = states[1][:, layer].T
        else:                           # h0 alone: c0 is zero
            cells[:] = 0

    def initial_state_grads(self, layer, gstates, ws):
        super().initial_state_grads(layer, gstates, ws)
        if len(gstates) > 1 and gstates[1] is not None:
            gstates[1][:, layer] = ws["dcell"].T


@register("cpu", "gru")
class GRUKernel(_RecurrentKernel):
    gate_count = 3
    folded_gates = 2

    def cell_workspace(self):
        ws = {
            # The same for the W_hh h_{t-1} + b_hh side (GRU's n gate needs it apart).
            "step_gates_hidden": ((3 * self.size, self.batch), "float32"),
            "dgates_hidden": ((3 * self.size, self.slots, self.batch), "float32"),
            "dh_direct": ((self.size, self.batch), "float32"),    # dloss/dh_{t-1} via z h_{t-1}
        }
        for layer in range(self.layers):
            # Time major (module docstring).
            ws[f"gates{layer}"] = ((self.slots, 3 * self.size, self.batch), "float32")
            ws[f"hidden_proj{layer}"] = ((self.slots, self.size, self.batch), "float32")
        return ws

    def forward_layer(self, layer, inputs, ids, w_ih, params, ws):
        _gru_layer_forward(inputs, ids, w_ih, ws[f"weight_hh{layer}"],
                           ws[f"bias{layer}"], params[f"bias_hh_l{layer}"], self.bounds,
                           self.steps, self.init, ws["step_gates"], ws["step_gates_hidden"],
                           ws[f"gates{layer}"], ws[f"hidden_proj{layer}"], ws[f"hidden{layer}"])

    def backward_through_time(self, layer, ws):
        _gru_backward_through_time(ws["weight_hh_t"], self.bounds, self.steps, self.init,
                                   ws[f"gates{layer}"], ws[f"hidden_proj{layer}"],
                                   ws[f"hidden{layer}"], ws["dhidden"], ws["dgates"],
                                   ws["dgates_hidden"], ws["partials"], ws["dh_direct"],
                                   ws["step_gates"], ws["step_gates_hidden"])
        return ws["dgates"], ws["dgates_hidden"]

    def initial_state_grads(self, layer, gstates, ws):
        if gstates[0] is not None:
            gstates[0][:, layer] = (ws["partials"][0].sum(axis=0) + ws["dh_direct"]).T
