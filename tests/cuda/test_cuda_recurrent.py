"""CUDA recurrent kernels (embed, rnn, lstm, gru) against the CPU kernels, in Numba's CUDA
simulator without a GPU."""
import pytest

from tests.cuda.harness import check_cuda_against_cpu
from tests.kernels.harness import Case

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def recurrent_case(op, batch, steps, features, hidden, layers, sequence, **kw):
    width = GATES[op] * hidden
    params = {}
    for layer in range(layers):
        params[f"weight_ih_l{layer}"] = (width, features if layer == 0 else hidden)
        params[f"weight_hh_l{layer}"] = (width, hidden)
        params[f"bias_ih_l{layer}"] = (width,)
        params[f"bias_hh_l{layer}"] = (width,)
    out_shape = (batch, steps, hidden) if sequence else (batch, hidden)
    case = Case(op, {"hidden": hidden, "layers": layers, "sequence": sequence},
                [(batch, steps, features)], None, params=params,
                id=f"{op}-N{batch}-T{steps}-F{features}-H{hidden}-L{layers}-seq{sequence}", **kw)
    return case, out_shape


def embed_case(batch, steps, vocab, dim):
    case = Case("embed", {"vocab": vocab, "dim": dim}, [(batch, steps)], None,
                params={"weight": (vocab, dim)}, in_dtypes=["int64"], int_high=vocab,
                id=f"embed-N{batch}-T{steps}-V{vocab}-D{dim}")
    return case, (batch, steps, dim)


CASES = [
    embed_case(3, 4, vocab=3, dim=2),      # 12 ids over 3 rows: repeated ids must add up
    # Two layers and three steps: the recurrence, the layer stacking, both output modes.
    recurrent_case("rnn", 2, 3, 3, 2, 2, True),
    recurrent_case("lstm", 2, 3, 3, 2, 2, False),
    recurrent_case("gru", 2, 3, 3, 2, 2, True),
    # One step: no recurrent GEMM, a zero W_hh gradient; only some parameters want gradients.
    recurrent_case("lstm", 2, 1, 2, 3, 1, True,
                   trainable=("weight_ih_l0", "weight_hh_l0", "bias_hh_l0")),
    recurrent_case("gru", 1, 4, 2, 2, 1, False, grad_inputs=()),
]


@pytest.mark.parametrize("case,out_shape", CASES, ids=[str(c) for c, _ in CASES])
def test_matches_cpu(case, out_shape):
    check_cuda_against_cpu(case, out_shape)
