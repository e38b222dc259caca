"""CPU kernels of the recurrent family (embed, rnn, lstm, gru): workspaces, frozen params, the
absorbed embed, split units and the step GEMM. Their checks against torch and finite differences
are rows of the shared table (tests/ops_cases.py, run by test_op_cases.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.runtime.cpu.recurrent import _step_gemm, unit_parts
from dslc.runtime.kernel_api import Context
from tests.kernels.harness import make_kernel
from tests.ops_cases import embed_case, recurrent_case

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def random_inputs_and_params(case, rng):
    xs = [rng.standard_normal(shape).astype(np.float32) for shape in case.in_shapes]
    ps = {n: (rng.standard_normal(shape) * 0.5).astype(np.float32) for n, shape in case.params.items()}
    return xs, ps


@pytest.mark.parametrize("op", list(GATES))
def test_results_do_not_depend_on_workspace_contents(op):
    """A plan reuses workspaces across steps: stale or garbage contents must not leak in."""
    case = recurrent_case(op, 2, 4, 3, 3, 2, False)
    rng = np.random.default_rng(0)
    xs, ps = random_inputs_and_params(case, rng)
    gout = rng.standard_normal((2, 3)).astype(np.float32)

    def run(fill):
        kernel = make_kernel(case, xs, ps, (2, 3), "float32")
        ws = {n: np.full(s, fill, dtype=np.float32) for n, (s, _) in kernel.workspace().items()}
        out = np.empty((2, 3), np.float32)
        gx = np.empty_like(xs[0])
        gps = {n: np.empty_like(p) for n, p in ps.items()}
        kernel.forward(Context(), xs, ps, out, ws)
        kernel.backward(Context(), xs, ps, out, gout, [gx], gps, ws)
        return out, gx, gps

    clean, dirty = run(0.0), run(np.nan)
    np.testing.assert_array_equal(dirty[0], clean[0])
    np.testing.assert_array_equal(dirty[1], clean[1])
    for name in ps:
        np.testing.assert_array_equal(dirty[2][name], clean[2][name], err_msg=name)


@pytest.mark.parametrize("op", list(GATES))
def test_frozen_params_and_no_input_grad(op):
    """Params missing from gparams and gxs[0] = None are skipped; the wanted grads stay right."""
    case = recurrent_case(op, 2, 3, 2, 3, 2, True)
    rng = np.random.default_rng(1)
    xs, ps = random_inputs_and_params(case, rng)
    gout = rng.standard_normal((2, 3, 3)).astype(np.float32)
    txs = [torch.tensor(xs[0])]
    tps = {n: torch.tensor(p, requires_grad=True) for n, p in ps.items()}
    case.torch_fn(txs, tps, case.attrs).backward(torch.tensor(gout))

    kernel = make_kernel(case, xs, ps, gout.shape, "float32")
    ws = {n: np.zeros(s, dtype=np.float32) for n, (s, _) in kernel.workspace().items()}
    out = np.empty(gout.shape, np.float32)
    # bias_hh_l0 without bias_ih_l0: the b_hh gradient must not lean on the b_ih one.
    wanted = ["weight_hh_l0", "bias_ih_l1", "bias_hh_l0"]
    gps = {n: np.full(ps[n].shape, np.nan, np.float32) for n in wanted}
    kernel.forward(Context(), xs, ps, out, ws)
    kernel.backward(Context(), xs, ps, out, gout, [None], gps, ws)
    for name in wanted:
        np.testing.assert_allclose(gps[name], tps[name].grad.numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=name)


def test_embed_rejects_out_of_range_ids():
    case = embed_case(1, 2, vocab=3, dim=2)
    ids = np.array([[0, 3]], dtype=np.int64)
    weight = np.zeros((3, 2), np.float32)
    kernel = make_kernel(case, [ids], {"weight": weight}, (1, 2, 2), "float32")
    with pytest.raises(IndexError):
        kernel.forward(Context(), [ids], {"weight": weight}, np.empty((1, 2, 2), np.float32), {})


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("sequence", [True, False])
@pytest.mark.parametrize("op", list(GATES))
def test_absorbed_embed_matches_torch(op, sequence, parts):
    """An inference plan's recurrent layer that absorbed the embed before it (fuse_input)
    reads ids, gathers its first layer's input projection from the table W_ih E^T, and gives
    torch's embedding -> layers, whatever the workspaces held before, in one part or split
    (uneven parts)."""
    batch, steps, vocab, dim, hidden = 3, 7, 9, 5, 4
    case = recurrent_case(op, batch, steps, dim, hidden, 2, sequence)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, vocab, (batch, steps)).astype(np.int64)
    _, ps = random_inputs_and_params(case, rng)
    ps["input.embed.weight"] = rng.standard_normal((vocab, dim)).astype(np.float32)
    out_shape = (batch, steps, hidden) if sequence else (batch, hidden)

    kernel = make_kernel(case, [np.empty((batch, steps, dim), np.float32)], ps, out_shape, "float32")
    assert kernel.fuse_input("embed", {"vocab": vocab, "dim": dim})
    kernel.bounds = unit_parts(hidden, parts)
    ws = {n: np.full(s, np.nan if np.dtype(d).kind == "f" else vocab + 1, d)
          for n, (s, d) in kernel.workspace().items()}
    assert "table" in ws and ws["inputs"].size == 0     # no embeddings are written
    out = np.full(out_shape, np.nan, np.float32)
    kernel.forward(Context(training=False), [ids], ps, out, ws)

    embedded = F.embedding(torch.tensor(ids), torch.tensor(ps["input.embed.weight"]))
    layer_params = {n: torch.tensor(p) for n, p in ps.items() if not n.startswith("input.embed.")}
    expected = case.torch_fn([embedded], layer_params, case.attrs).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)

    ids[1, 2] = vocab           # an id the embed would reject is rejected here too
    with pytest.raises(IndexError):
        kernel.forward(Context(training=False), [ids], ps, out, ws)


@pytest.mark.parametrize("op", list(GATES))
def test_embed_is_absorbed_only_where_its_table_is_smaller(op):
    """The table (G*H, vocab) replaces a projection of each of the N*T positions: worth it
    only for a vocabulary no larger than that; nothing but an embed is absorbed."""
    case = recurrent_case(op, 2, 3, 4, 5, 1, True)
    xs = [np.empty((2, 3, 4), np.float32)]
    _, ps = random_inputs_and_params(case, np.random.default_rng(0))

    def kernel():
        return make_kernel(case, xs, ps, (2, 3, 5), "float32")
    assert kernel().fuse_input("embed", {"vocab": 6, "dim": 4})
    assert not kernel().fuse_input("embed", {"vocab": 7, "dim": 4})
    assert not kernel().fuse_input("dense", {"units": 4})


@pytest.mark.parametrize("op", list(GATES))
@pytest.mark.parametrize("sequence", [True, False])
def test_units_split_into_parts_give_the_same_results(op, sequence):
    """The per-thread split of the hidden units (uneven parts, a part of one unit) changes no
    result: small layers run as one part, so this drives the split path directly."""
    batch, steps, features, hidden = 19, 6, 4, 5
    case = recurrent_case(op, batch, steps, features, hidden, 2, sequence)
    rng = np.random.default_rng(2)
    xs, ps = random_inputs_and_params(case, rng)
    out_shape = (batch, steps, hidden) if sequence else (batch, hidden)
    gout = rng.standard_normal(out_shape).astype(np.float32)

    def run(parts):
        kernel = make_kernel(case, xs, ps, out_shape, "float32")
        kernel.bounds = unit_parts(hidden, parts)
        ws = {n: np.full(s, np.nan, np.float32) for n, (s, _) in kernel.workspace().items()}
        out = np.empty(out_shape, np.float32)
        gx = np.empty_like(xs[0])
        gps = {n: np.empty_like(p) for n, p in ps.items()}
        kernel.forward(Context(), xs, ps, out, ws)
        kernel.backward(Context(), xs, ps, out, gout, [gx], gps, ws)
        return out, gx, gps

    whole = run(1)
    for parts in (2, 4):
        split = run(parts)
        np.testing.assert_allclose(split[0], whole[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(split[1], whole[1], rtol=1e-5, atol=1e-6)
        for name in ps:
            np.testing.assert_allclose(split[2][name], whole[2][name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name}, {parts} parts")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, n, k", [
    (150, 32, 600),     # blocks of 64 rows (64, 64, 22) and 256 deep (256, 256, 88)
    (40, 200, 300),     # blocks would be thinner than the minimum: one call
])
def test_step_gemm_matches_one_product(dtype, m, n, k):
    """_step_gemm cuts a step's product into row and depth blocks (see recurrent.py): the
    result is the whole product, for beta 0 (whatever C held: workspaces start as garbage)
    and 1, with offsets and row strides honoured."""
    rng = np.random.default_rng(3)
    a_buf = rng.standard_normal((m + 2, k + 5)).astype(dtype)
    b_buf = rng.standard_normal((k + 1, n + 3)).astype(dtype)
    c_buf = rng.standard_normal((m + 1, n + 4)).astype(dtype)
    a, b = a_buf[2:, 5:], b_buf[1:, 3:]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for beta in (0.0, 1.0):
        c = c_buf.copy()
        if beta == 0.0:
            c[1:, 4:] = np.nan
        _step_gemm(m, n, k, a_buf, 2 * (k + 5) + 5, k + 5, b_buf, (n + 3) + 3, n + 3, beta,
                   c, (n + 4) + 4, n + 4)
        expected = c_buf.copy()
        expected[1:, 4:] = a.astype(np.float64) @ b + beta * c_buf[1:, 4:]
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * k)
