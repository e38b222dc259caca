"""`dslc plot` (training curves from a --metrics file), `dslc sample` (text from a trained character
model) and ensembles in `dslc predict` (several --weights, probabilities averaged)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dslc.cli import main

REPO = Path(__file__).resolve().parent.parent
DSLC = str(Path(sys.executable).with_name("dslc"))


# ---- plot ---------------------------------------------------------------------------------------
def _metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _record(epoch, loss, acc=None, val_loss=None, val_acc=None, **more):
    return {"epoch": epoch, "lr": 1e-3, "train_loss": loss, "train_accuracy": acc, "samples_per_s": 100.0,
            "val_loss": val_loss, "val_accuracy": val_acc, **more}


def test_plot_draws_loss_and_accuracy(tmp_path, capsys):
    m = _metrics(tmp_path / "m.jsonl", [_record(e, 2.0 / e, 0.3 + 0.1 * e, 2.2 / e, 0.25 + 0.1 * e)
                                          for e in (1, 2, 3)])
    out = tmp_path / "curves.png"
    assert main(["plot", m, "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "train_loss, val_loss, train_accuracy, val_accuracy over 3 epochs" in said
    assert "val_loss 0.7333" in said
    with Image.open(out) as img:
        assert img.size == (1000, 400)              # two panels: loss and accuracy
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10                        # something was drawn


def test_plot_loss_only_and_several_runs(tmp_path, capsys):
    """No accuracy (a regression or GAN): one panel; a file appended to by two runs plots the last."""
    m = _metrics(tmp_path / "m.jsonl", [_record(1, 5.0), _record(2, 4.0),
                                        _record(1, 3.0, train_terms={"g": 1.0, "d": 2.0}),
                                        _record(2, 2.0, train_terms={"g": 0.5, "d": 1.5})])
    out = tmp_path / "curves.png"
    assert main(["plot", m, "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert "train_loss over 2 epochs (epoch 2: train_loss 2)" in cap.out
    assert "holds 2 runs" in cap.err
    with Image.open(out) as img:
        assert img.size == (550, 400)


@pytest.mark.parametrize("text,message", [
    ("", "holds no epochs"),
    ("\n\n", "holds no epochs"),
    ('{"epoch": 1, "train_loss": 1.0}\nnot json\n', "m.jsonl:2: not a JSON object"),
    ('[1, 2]\n', "m.jsonl:1: an epoch record needs a whole `epoch` and a numeric `train_loss`"),
    ('{"epoch": "1", "train_loss": 1.0}\n', "m.jsonl:1: an epoch record needs"),
])
def test_plot_bad_metrics_is_a_diagnostic(tmp_path, capsys, text, message):
    (tmp_path / "m.jsonl").write_text(text)
    assert main(["plot", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "c.png").exists()


def test_plot_usage_mistakes(tmp_path, capsys):
    m = _metrics(tmp_path / "m.jsonl", [_record(1, 1.0)])
    assert main(["plot", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "c.png")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert main(["plot", m, "-o", str(tmp_path / "c.svg")]) == 2
    assert "written as .png" in capsys.readouterr().err
    assert main(["plot", m, "-o", m]) == 2


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    m = _metrics(tmp_path / "m.jsonl", [_record(1, 1.0)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", m, "-o", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "dslc plot draws with matplotlib" in err and ".[viz]" in err


# ---- sample -------------------------------------------------------------------------------------
CHARNET = str(REPO / "models" / "charlstm.net")


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory):
    """A tiny character LSTM trained for one epoch on the shipped corpus through the installed command."""
    import subprocess
    d = tmp_path_factory.mktemp("char")
    run = subprocess.run([DSLC, "run", CHARNET, "--data", "chars", "--set", "T=16", "--set", "hidden=32",
                          "--set", "embedding=16", "--limit", "64", "--epochs", "1", "--batch", "16",
                          "--checkpoint", str(d / "run"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return str(d / "run" / "last.ckpt")


def _sample(ckpt, *flags):
    import subprocess
    return subprocess.run([DSLC, "sample", CHARNET, "--weights", ckpt, *flags], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_sample_prints_the_prime_then_length_characters_deterministically(char_ckpt):
    from dslc.runtime.checkpoint import load_checkpoint
    vocab = load_checkpoint(char_ckpt)[1]["vocab"]
    first = _sample(char_ckpt, "--prime", "The ", "--length", "30", "--temperature", "0.8", "--seed", "3")
    assert first.returncode == 0, first.stderr
    text = first.stdout[:-1]                    # the text, then a newline
    assert text.startswith("The ") and len(text) == 4 + 30
    assert set(text) <= set(vocab)
    assert "the recurrent state carried from character to character" in first.stderr
    again = _sample(char_ckpt, "--prime", "The ", "--length", "30", "--temperature", "0.8", "--seed", "3")
    assert again.stdout == first.stdout
    other = _sample(char_ckpt, "--prime", "The ", "--length", "30", "--temperature", "0.8", "--seed", "4")
    assert other.stdout != first.stdout


@pytest.mark.slow
def test_sample_at_temperature_zero_follows_the_model(char_ckpt, capsys):
    """With --window, greedy sampling is the argmax of the model's scores for the last position over a
    sliding window."""
    from dslc.runtime.checkpoint import load_checkpoint
    from dslc.runtime.model import Model
    arrays, meta = load_checkpoint(char_ckpt)
    vocab = meta["vocab"]
    model = Model.from_file(CHARNET, {"hidden": 32, "embedding": 16})
    model.load_params({k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
    ids = [vocab.index(c) for c in "Once upon a time, "]
    for _ in range(12):
        scores = model.forward(text=np.array([ids[-16:]]))["logits"][0, -1]
        ids.append(int(np.argmax(scores)))
    assert main(["sample", CHARNET, "--weights", char_ckpt, "--prime", "Once upon a time, ", "--length", "12",
                 "--temperature", "0", "--window", "16"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "".join(vocab[i] for i in ids) + "\n"
    assert "window 16 (the model re-run over the last 16 characters per character: --window was given)" \
        in captured.err


@pytest.mark.slow
def test_sample_mistakes_are_diagnostics(char_ckpt, tmp_path, capsys):
    assert main(["sample", CHARNET, "--weights", char_ckpt, "--prime", "caf\u00e9"]) == 1
    assert "'\u00e9' that the training text did not" in capsys.readouterr().err
    assert main(["sample", CHARNET, "--weights", char_ckpt, "--temperature", "-1"]) == 2
    assert "--temperature -1" in capsys.readouterr().err
    assert main(["sample", CHARNET, "--weights", char_ckpt, "--prime", ""]) == 2
    assert "--prime is empty" in capsys.readouterr().err
    from dslc.runtime.model import Model
    Model.from_file(str(REPO / "models" / "digits_cnn.net")).save(tmp_path / "digits.ckpt")
    assert main(["sample", str(REPO / "models" / "digits_cnn.net"), "--weights", str(tmp_path / "digits.ckpt")]) == 1
    assert "records no vocabulary" in capsys.readouterr().err


# ---- ensembles ----------------------------------------------------------------------------------
DIGITS = str(REPO / "models" / "digits_cnn.net")


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    """Three differently initialised digits CNNs saved as checkpoints, and a batch of inputs."""
    from dslc.runtime.model import Model
    d = tmp_path_factory.mktemp("ensemble")
    models, paths = [], []
    for seed in range(3):
        m = Model.from_file(DIGITS, seed=seed)
        m.save(d / f"m{seed}.ckpt")
        models.append(m)
        paths.append(str(d / f"m{seed}.ckpt"))
    x = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    np.save(d / "x.npy", x)
    return models, paths, str(d / "x.npy"), x


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_predict_ensemble_averages_probabilities(three_models, tmp_path, capsys):
    models, paths, xpath, x = three_models
    expected = np.mean([_softmax(m.forward(image=x)["logits"].astype(np.float64)) for m in models], axis=0)
    out = tmp_path / "out.npz"
    assert main(["predict", DIGITS, "--weights", *paths, xpath, "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert "an ensemble of 3 models" in cap.err and "(the mean over 3 models)" in cap.out
    with np.load(out) as got:
        np.testing.assert_allclose(got["logits_probabilities"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["logits"], np.mean([m.forward(image=x)["logits"] for m in models], axis=0),
                                   rtol=1e-5, atol=1e-6)
    # Printed: the averaged probabilities, ranked; inputs may also come before --weights.
    assert main(["predict", DIGITS, xpath, "--weights", *paths, "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    top = expected[0].argmax()
    assert lines[0].startswith(f"{xpath}[0]: class {top} ({expected[0, top]:.1%})")
    assert lines[1].split() == [str(top), f"{expected[0, top]:.4f}"]


def test_predict_ensemble_mistakes(three_models, tmp_path, capsys):
    _, paths, xpath, _ = three_models
    assert main(["predict", DIGITS, "--weights", *paths]) == 2
    assert "no inputs to predict" in capsys.readouterr().err
    assert main(["predict", DIGITS, "--weights", paths[0], str(tmp_path / "gone.ckpt"), xpath]) == 1
    assert "gone.ckpt" in capsys.readouterr().err
    from dslc.runtime.model import Model
    Model.from_file(DIGITS, {"classes": 5}).save(tmp_path / "five.ckpt")
    assert main(["predict", DIGITS, "--weights", paths[0], str(tmp_path / "five.ckpt"), xpath]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("five.ckpt" in err or "different outputs" in err)
