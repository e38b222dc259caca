"""`dslc inspect` activations, occlusion and tsne on a small trained digits model: each writes
its PNG, the values it draws are the ones the network computes, and mistakes get diagnostics."""
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dslc.cli import main
from dslc.cli_inspect import occlusion_map
from dslc.runtime.data import _resize_bilinear
from dslc.runtime.model import Model

REPO = Path(__file__).resolve().parent.parent
NET = str(REPO / "models" / "digits_cnn.net")

pytestmark = pytest.mark.slow


def _as_trained(images):
    """The digits as `--data digits` feeds them: 0..16 scaled to [0, 1], resized to 16x16."""
    return _resize_bilinear((images / 16.0).astype(np.float32), 16, 16)[:, None]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits CNN trained for two epochs through the API and saved; a held-out digit it
    classifies right, as a PNG and as the array the network sees."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images, labels = d.images, d.target.astype(np.int64)
    model = Model.from_file(NET)
    model.fit(_as_trained(images[:1400]), labels[:1400], epochs=2, progress=False)
    folder = tmp_path_factory.mktemp("model")
    model.save(folder / "digits.ckpt")
    held = _as_trained(images[1400:1440])
    pred = model.forward(image=held)["logits"].argmax(axis=1)
    k = next(i for i in range(len(held)) if pred[i] == labels[1400 + i])
    png = folder / "digit.png"
    Image.fromarray(np.round(held[k, 0] * 255).astype(np.uint8)).save(png)
    x = np.asarray(Image.open(png), dtype=np.float32)[None, None] / 255.0
    return str(folder / "digits.ckpt"), model, str(png), x, int(labels[1400 + k])


def _inspect(ckpt, *rest):
    return main(["inspect", NET, "--weights", ckpt, *rest])


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _png_size(path):
    with Image.open(path) as img:
        return img.size


def test_activations_draws_the_layers_maps(trained, tmp_path, capsys):
    ckpt, model, png, x, _ = trained
    out = tmp_path / "act.png"
    assert _inspect(ckpt, "activations", "--input", png, "--layer", "conv1", "-o", str(out)) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out}: the 16 maps of conv1 (16x16)")
    assert _png_size(out)[0] > 100
    # the values drawn: conv1's own output (before batchnorm and relu, which inference fuses into it)
    a = model.layer_outputs(["conv1", "relu1"], image=x)
    w, b = model.params["conv1.weight"], model.params["conv1.bias"]
    padded = np.pad(x[0, 0], 1)
    ref = np.stack([sum(w[c, 0, i, j] * padded[i:i + 16, j:j + 16] for i in range(3) for j in range(3)) + b[c]
                    for c in range(16)])
    np.testing.assert_allclose(a["conv1"][0], ref, rtol=1e-4, atol=1e-5)
    assert (a["relu1"] >= 0).all() and not np.allclose(a["relu1"], np.maximum(a["conv1"], 0))  # bn between
    lo, hi = re.search(r"one scale (\S+) to (\S+);", line).groups()
    assert float(lo) == pytest.approx(a["conv1"].min(), rel=1e-2) and float(hi) == pytest.approx(a["conv1"].max(),
                                                                                                 rel=1e-2)
    # the network's outputs are unchanged by reading a layer
    np.testing.assert_allclose(model.forward(image=x)["logits"], model.forward(image=x)["logits"])


def test_activations_errors(trained, tmp_path, capsys):
    ckpt, _, png, _, _ = trained
    out = str(tmp_path / "a.png")
    assert _inspect(ckpt, "activations", "--input", png, "--layer", "conv9", "-o", out) == 2
    err = capsys.readouterr().err
    assert "no layer `conv9`" in err and "conv1" in err and "Traceback" not in err
    assert _inspect(ckpt, "activations", "--input", png, "--layer", "fc1", "-o", out) == 2
    err = capsys.readouterr().err
    assert "no (channels, height, width) maps" in err and "conv2" in err and "tsne" in err
    assert _inspect(ckpt, "activations", "--input", png, "-o", out) == 2
    assert "--layer" in capsys.readouterr().err


def test_occlusion_dims_the_probability_where_the_digit_is(trained, tmp_path, capsys):
    ckpt, model, png, x, label = trained
    out = tmp_path / "occ.png"
    assert _inspect(ckpt, "occlusion", "--input", png, "-o", str(out)) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out}: occlusion of {png} by a 2x2 patch of 0 (stride 1), class {label}")
    assert _png_size(out)[0] > 100
    drop, cls, p = occlusion_map(model, {"image": x}, "logits", None, 2, 1)
    assert cls == label and drop.shape == (16, 16)
    assert p == pytest.approx(_softmax(model.forward(image=x)["logits"])[0, cls], rel=1e-5)
    # a square covering the whole image: every pixel's drop is p - p(blank image)
    whole, _, _ = occlusion_map(model, {"image": x}, "logits", cls, 16, 1)
    blank = _softmax(model.forward(image=np.zeros_like(x))["logits"])[0, cls]
    np.testing.assert_allclose(whole, p - blank, rtol=1e-4, atol=1e-6)
    stroke = x[0, 0] > 0.3
    background = x[0, 0] < 0.02
    assert stroke.sum() > 10 and background.sum() > 10
    assert drop[stroke].mean() > drop[background].mean() + 0.02
    assert drop[background].mean() == pytest.approx(0, abs=0.05)   # blanking blank pixels changes little


def test_occlusion_errors(trained, tmp_path, capsys):
    ckpt, _, png, _, _ = trained
    out = str(tmp_path / "o.png")
    assert _inspect(ckpt, "occlusion", "--input", png, "--patch", "40", "-o", out) == 2
    assert "--patch 40" in capsys.readouterr().err
    assert _inspect(ckpt, "occlusion", "--input", png, "--class", "12", "-o", out) == 2
    assert "classes 0 to 9" in capsys.readouterr().err
    assert _inspect(ckpt, "occlusion", "-o", out) == 2
    assert "--input" in capsys.readouterr().err


def test_tsne_embeds_a_layers_features(trained, tmp_path, capsys):
    ckpt, model, _, _, _ = trained
    out = tmp_path / "tsne.png"
    assert _inspect(ckpt, "tsne", "--data", "digits", "--layer", "fc1", "--limit", "120", "-o", str(out)) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out}: t-SNE of fc1's 64 features over 120 points of digits")
    assert "coloured by" in line
    assert _png_size(out)[0] > 100
    # the features embedded: fc1's output, the dense layer applied to the pooled maps
    x = np.random.default_rng(0).random((5, 1, 16, 16), dtype=np.float32)
    f = model.layer_outputs(["maxpool2", "fc1"], image=x)
    ref = f["maxpool2"].reshape(5, -1) @ model.params["fc1.weight"].T + model.params["fc1.bias"]
    np.testing.assert_allclose(f["fc1"], ref, rtol=1e-4, atol=1e-5)
    assert _inspect(ckpt, "tsne", "--data", "digits", "--layer", "relu2", "--limit", "40", "-o", str(out)) == 0
    assert "relu2's 2048 features over 40 points" in capsys.readouterr().out
    assert _inspect(ckpt, "tsne", "--layer", "fc1", "-o", str(out)) == 2
    assert "--data" in capsys.readouterr().err
    assert _inspect(ckpt, "tsne", "--data", "digits", "--layer", "fc", "-o", str(out)) == 2
    assert "did you mean" in capsys.readouterr().err.lower()
