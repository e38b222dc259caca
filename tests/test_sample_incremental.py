"""`dslc sample` steps a recurrent character model one character at a time, the state carried
(runtime/stepper.py): each step's scores are those of the whole sequence so far."""
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.model import Model
from dslc.runtime.stepper import Stepper, unsupported

REPO = Path(__file__).resolve().parent.parent
SMALL = {"hidden": 12, "embedding": 6}

RNN = """network charrnn(vocab = 20)

input text: int[T]
input next: int[T]

logits = text -> embed(vocab, 5) -> rnn(7, layers = 2) -> dropout(0.2) -> dense(9) -> tanh -> decoder: dense(vocab)

loss cross_entropy(logits, next)
"""


@pytest.mark.parametrize("net", ["charlstm.net", "chargru.net", "rnn"])
def test_each_step_gives_the_whole_sequences_scores(net):
    if net == "rnn":
        model = Model(compile_source(Source("charrnn.net", RNN))[0], seed=1)
    else:
        model = Model.from_file(str(REPO / "models" / net), SMALL, seed=1)
    seq = np.random.default_rng(0).integers(0, 20, 25)
    full = model.forward(text=seq[None])["logits"][0]
    stepper = Stepper(model, "text", "logits")
    stepped = np.stack([stepper.step(t) for t in seq])
    np.testing.assert_allclose(stepped, full, rtol=1e-4, atol=1e-5 * float(np.abs(full).max()))
    stepper.reset()
    np.testing.assert_allclose(stepper.step(seq[0]), full[0], rtol=1e-4, atol=1e-6)


def test_networks_that_need_the_future_are_not_stepped():
    model = Model.from_file(str(REPO / "models" / "char_bilstm.net"))
    why = unsupported(model.net, "text", "logits")
    assert why is not None and "backwards" in why


@pytest.mark.slow
def test_greedy_sampling_continues_the_whole_text(tmp_path, capsys):
    charnet = str(REPO / "models" / "charlstm.net")
    assert main(["run", charnet, "--data", "chars", "--set", "T=16", "--set", "hidden=24", "--set", "embedding=8",
                 "--limit", "64", "--epochs", "1", "--batch", "16", "--checkpoint", str(tmp_path / "run"),
                 "--quiet"]) == 0
    capsys.readouterr()
    from dslc.runtime.checkpoint import load_checkpoint
    arrays, meta = load_checkpoint(str(tmp_path / "run" / "last.ckpt"))
    vocab = meta["vocab"]
    model = Model.from_file(charnet, {"hidden": 24, "embedding": 8})
    model.load_params({k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
    prime = "It was the best of times, it was"      # longer than the T=16 it was trained on
    ids = [vocab.index(c) for c in prime]
    for _ in range(10):                             # the argmax after the whole text, from the zero state
        ids.append(int(np.argmax(model.forward(text=np.array([ids]))["logits"][0, -1, :len(vocab)])))
    assert main(["sample", charnet, "--weights", str(tmp_path / "run" / "last.ckpt"), "--prime", prime,
                 "--length", "10", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "".join(vocab[i] for i in ids) + "\n"
    assert "the recurrent state carried from character to character" in captured.err
