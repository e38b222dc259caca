"""Recurrent layers beyond a zero start (issue 15 part 6), written in the language.

Initial states: `x -> lstm(h0, c0, hidden = H)` (and `rnn`/`gru` with h0), each state
[N, layers, H] (torch's h0 batch first) or [N, H] for one layer. A Show-and-Tell style decoder,
whose image feature initialises the LSTM, gives torch's loss and every parameter gradient with
the same weights, in training and (its embed absorbed by the LSTM) in evaluation. Misuse is a
diagnostic at its place. The kernels themselves are checked row by row in tests/ops_cases.py.
"""
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.cli import main
from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.model import Model

VOCAB, HIDDEN, STEPS = 7, 5, 4

CAPTION = f"""network caption(vocab = {VOCAB}, hidden = {HIDDEN})
input image: [6]
input words: int[{STEPS}]
input next_words: int[{STEPS}]
h0 = image -> init_h: dense(hidden) -> tanh
c0 = image -> init_c: dense(hidden)
x = words -> emb: embed(vocab, 3)
states = x -> dec: lstm(h0, c0, hidden = hidden)
logits = states -> out: dense(vocab)
loss cross_entropy(logits, next_words)
"""


def _torch_caption(params, image, words, next_words):
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(image, dtype=torch.float64)
    h0 = torch.tanh(F.linear(x, p["init_h.weight"], p["init_h.bias"]))
    c0 = F.linear(x, p["init_c.weight"], p["init_c.bias"])
    emb = F.embedding(torch.tensor(words), p["emb.weight"])
    lstm = torch.nn.LSTM(3, HIDDEN, batch_first=True).double()
    weights = {k.split(".", 1)[1]: v for k, v in p.items() if k.startswith("dec.")}
    states, _ = torch.func.functional_call(lstm, weights, (emb, (h0[None], c0[None])))
    logits = F.linear(states, p["out.weight"], p["out.bias"])
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), torch.tensor(next_words).reshape(-1))
    loss.backward()
    return float(loss.detach()), logits.detach().numpy(), {k: v.grad.numpy() for k, v in p.items()}


@pytest.mark.slow
def test_an_image_feature_initialises_an_lstm_decoder_like_torch():
    net, warnings = compile_source(Source("caption.net", CAPTION))
    assert warnings == []
    dec = net.node("dec")
    assert dec.op == "lstm" and len(dec.inputs) == 3
    model = Model(net, seed=3)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 6)).astype(np.float32)
    words = rng.integers(0, VOCAB, (3, STEPS))
    next_words = rng.integers(0, VOCAB, (3, STEPS))
    params = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(training=True, image=image, words=words, next_words=next_words)
    grads = model.backward()
    ref_loss, ref_logits, ref_grads = _torch_caption(params, image, words, next_words)
    np.testing.assert_allclose(out["loss"], ref_loss, rtol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-3, atol=1e-5, err_msg=name)
    # Evaluation: the inference plan lets the LSTM absorb the embed; the states still apply.
    logits = model.forward(image=image, words=words)["logits"]
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)


# ---- diagnostics -------------------------------------------------------------------------------

def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def dslc(tmp_path, monkeypatch, capsys):
    """`dslc compile prog.net` in a fresh directory: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(program):
        (tmp_path / "prog.net").write_text(program)
        rc = main(["compile", "prog.net"])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "internal error" not in out + err, err
        return rc, out, err
    return run


SEQ = "network n\ninput x: [6, 3]\ninput feat: [4]\ninput ids: int[4]\n"


def test_one_state_per_layer_is_asked_for_a_stack(dslc):
    rc, _, err = dslc(SEQ + "y = x -> lstm(feat, hidden = 4, layers = 2)\n")
    assert rc == 1
    assert err == golden("""
        error: `lstm`'s initial state h0 must be [N, 2, 4], found [N, 4]; a stack of 2 layers takes one state per layer, [N, layers, hidden] (torch's h0 batch first)
          --> prog.net:5:10
           |
         5 | y = x -> lstm(feat, hidden = 4, layers = 2)
           |          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ here
           = expected [N, 2, 4]
           = found    [N, 4]
           = input `x` is [N, 6, 3]
           = input `feat` is [N, 4]
           = help: h0 is the state each layer starts from, one [4] vector per sample and layer: `x -> lstm(h0, hidden = 4, layers = 2)`

        1 error
        """)


def test_a_state_of_the_wrong_size(dslc):
    rc, _, err = dslc(SEQ + "y = x -> gru(feat, hidden = 5)\n")
    assert rc == 1
    assert "`gru`'s initial state h0 must be [N, 5], found [N, 4]" in err
    assert "help: h0 is the state each layer starts from" in err


def test_integer_states_and_too_many_states(dslc):
    rc, _, err = dslc(SEQ + "y = x -> rnn(ids, hidden = 4)\n")
    assert rc == 1
    assert "`rnn`'s initial state h0 must be a float tensor, found int[N, 4]" in err
    rc, _, err = dslc(SEQ + "y = x -> gru(feat, feat, hidden = 4)\n")
    assert rc == 1
    assert "`gru` takes 1 to 2 input tensors, found 3" in err


def test_reverse_with_bidirectional_is_refused(dslc):
    rc, _, err = dslc(SEQ + "y = x -> lstm(hidden = 4, bidirectional = true, reverse = true)\n")
    assert rc == 1
    assert "`lstm` with bidirectional = true runs both directions already" in err
    assert "help: drop `reverse = true`" in err


def test_bidirectional_states_take_one_per_layer_and_direction(dslc):
    rc, _, err = dslc(SEQ + "y = x -> gru(feat, hidden = 4, bidirectional = true)\n")
    assert rc == 1
    assert "`gru`'s initial state h0 must be [N, 2, 4], found [N, 4]; 2 layer directions take one state each" in err


# ---- bidirectional -----------------------------------------------------------------------------

BILSTM = f"""network tagger(vocab = {VOCAB})
input words: int[{STEPS}]
input tags: int[{STEPS}]
states = words -> emb: embed(vocab, 3) -> enc: lstm(hidden = 4, layers = 2, bidirectional = true)
logits = states -> out: dense(3)
loss cross_entropy(logits, tags)
"""


@pytest.mark.slow
def test_a_bidirectional_lstm_tagger_matches_torch():
    net, _ = compile_source(Source("tagger.net", BILSTM))
    enc = net.node("enc")
    reference = torch.nn.LSTM(3, 4, 2, batch_first=True, bidirectional=True)
    names = [n for n, _ in reference.named_parameters()]
    assert list(enc.params) == names and enc.type.shape[-1] == 8
    assert sum(p.size for p in enc.params.values()) == sum(p.numel() for p in reference.parameters())
    model = Model(net, seed=1)
    rng = np.random.default_rng(2)
    words, tags = rng.integers(0, VOCAB, (3, STEPS)), rng.integers(0, 3, (3, STEPS))
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.params.items()}
    out = model.forward(training=True, words=words, tags=tags)
    grads = model.backward()
    emb = F.embedding(torch.tensor(words), params["emb.weight"])
    weights = {n: params[f"enc.{n}"] for n in names}
    states, _ = torch.func.functional_call(reference.double(), weights, (emb,))
    logits = F.linear(states, params["out.weight"], params["out.bias"])
    loss = F.cross_entropy(logits.reshape(-1, 3), torch.tensor(tags).reshape(-1))
    loss.backward()
    np.testing.assert_allclose(out["loss"], float(loss.detach()), rtol=1e-5)
    for name, g in grads.items():
        np.testing.assert_allclose(g, params[name].grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


# ---- dropout between layers --------------------------------------------------------------------

def test_dropout_needs_stacked_layers_and_a_probability(dslc):
    rc, _, err = dslc(SEQ + "y = x -> lstm(hidden = 4, dropout = 0.3)\n")
    assert rc == 1
    assert "`lstm` dropout acts between stacked layers, and there is one layer" in err
    assert "help: stack layers (`layers = 2`) or drop `dropout`" in err
    rc, _, err = dslc(SEQ + "y = x -> gru(hidden = 4, layers = 2, dropout = 1.5)\n")
    assert rc == 1
    assert "`gru` dropout must be in [0, 1], found 1.5" in err


@pytest.mark.slow
def test_dropout_between_layers_draws_in_training_only():
    net, _ = compile_source(Source("d.net", "network d\ninput x: [5, 3]\n"
                                            "y = x -> gru(hidden = 4, layers = 2, dropout = 0.5)\n"))
    model = Model(net, seed=0)
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    first, second = (model.forward(training=True, x=x)["y"] for _ in range(2))
    assert not np.allclose(first, second)             # fresh factors each step
    evaluated = model.forward(x=x)["y"]
    reference = torch.nn.GRU(3, 4, 2, batch_first=True)
    weights = {n: torch.tensor(model.params[f"gru1.{n}"]) for n, _ in reference.named_parameters()}
    expected, _ = torch.func.functional_call(reference, weights, (torch.tensor(x),))
    np.testing.assert_allclose(evaluated, expected.detach().numpy(), rtol=1e-4, atol=1e-5)
