"""`dslc predict` and `dslc inspect`: a trained digits model classifies PNGs of digits through the
installed command, saliency maps depend on the image, and every bad input gets a diagnostic."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dslc.cli import main
from dslc.runtime.data import _resize_bilinear
from dslc.runtime.model import Model

REPO = Path(__file__).resolve().parent.parent
NET = str(REPO / "models" / "digits_cnn.net")
DSLC = str(Path(sys.executable).with_name("dslc"))


def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images, d.target.astype(np.int64)


def _as_trained(images):
    """The digits as `--data digits` feeds them: 0..16 scaled to [0, 1], resized to 16x16."""
    return _resize_bilinear((images / 16.0).astype(np.float32), 16, 16)[:, None]


def _png(path, image8x8):
    Image.fromarray(np.round(image8x8 * 255 / 16).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits CNN trained for two epochs through the API, saved as a model checkpoint; the
    held-out digits it has not seen."""
    images, labels = _digits()
    model = Model.from_file(NET)
    model.fit(_as_trained(images[:1400]), labels[:1400], epochs=2, progress=False)
    path = tmp_path_factory.mktemp("model") / "digits.ckpt"
    model.save(path)
    return str(path), model, images[1400:], labels[1400:]


@pytest.fixture
def untrained(tmp_path):
    path = tmp_path / "init.ckpt"
    Model.from_file(NET).save(path)
    return str(path)


@pytest.mark.slow
def test_predict_gives_the_class_of_digit_pngs(trained, tmp_path):
    ckpt, model, images, labels = trained
    expected = model.forward(image=_as_trained(images[:8]))["logits"].argmax(axis=1)
    right = [i for i in range(8) if expected[i] == labels[i]]
    assert len(right) >= 6                       # the model has learnt the digits
    pngs = [_png(tmp_path / f"digit{i}.png", images[i]) for i in right]
    r = subprocess.run([DSLC, "predict", NET, "--weights", ckpt, *pngs, "--top", "3"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    heads = [line for line in r.stdout.splitlines() if not line.startswith(" ")]
    assert [h.split(": class ")[0] for h in heads] == pngs
    assert [int(h.split(": class ")[1].split()[0]) for h in heads] == [int(labels[i]) for i in right]
    assert len(r.stdout.splitlines()) == 4 * len(pngs)        # the head and three classes per image
    assert "resized to 16x16" in r.stderr


@pytest.mark.slow
def test_predict_writes_outputs_and_reads_arrays(trained, tmp_path, capsys):
    ckpt, model, images, _ = trained
    x = _as_trained(images[:3])
    np.save(tmp_path / "one.npy", x[0])                 # one sample
    np.savez(tmp_path / "batch.npz", image=x[1:])       # a batch, named like the input
    out = tmp_path / "out.npz"
    assert main(["predict", NET, "--weights", ckpt, str(tmp_path / "one.npy"), str(tmp_path / "batch.npz"),
                 "-o", str(out)]) == 0
    with np.load(out) as saved:
        np.testing.assert_allclose(saved["logits"], model.forward(image=x)["logits"], atol=1e-5)
    assert "logits (3, 10)" in capsys.readouterr().out


@pytest.mark.slow
def test_inspect_saliency_writes_a_png_that_depends_on_the_image(trained, tmp_path):
    ckpt, _, images, labels = trained
    pictures = []
    for i in (0, 1):
        png = _png(tmp_path / f"digit{i}.png", images[i])
        out = tmp_path / f"saliency{i}.png"
        r = subprocess.run([DSLC, "inspect", NET, "--weights", ckpt, "saliency", "--input", png, "-o", str(out)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        assert f"wrote {out}" in r.stdout and "saliency" in r.stdout
        with Image.open(out) as img:
            assert img.format == "PNG"
            pictures.append(np.asarray(img.convert("RGB"), dtype=np.int64))
    assert labels[0] != labels[1]
    assert pictures[0].shape == pictures[1].shape
    assert np.abs(pictures[0] - pictures[1]).sum() > 0


@pytest.mark.slow
def test_inspect_saliency_map_is_the_input_gradient(trained):
    from dslc.cli_inspect import saliency_map
    _, model, images, _ = trained
    x = _as_trained(images[:1])
    grad, cls, p = saliency_map(model, {"image": x}, "logits", 4)
    assert cls == 4 and 0 < p < 1
    want = np.abs(model.backward(wrt=["image"], output="logits", index=4)["image"][0, 0])
    np.testing.assert_allclose(grad, want)
    other, *_ = saliency_map(model, {"image": _as_trained(images[5:6])}, "logits", 4)
    assert not np.allclose(grad, other)


@pytest.mark.slow
def test_inspect_filters(untrained, tmp_path, capsys):
    out = tmp_path / "filters.png"
    assert main(["inspect", NET, "--weights", untrained, "filters", "-o", str(out)]) == 0
    assert "16 filters of conv1" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG"


def _error(argv, capsys, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "help:" in err
    return err


def test_predict_missing_input(untrained, tmp_path, capsys):
    err = _error(["predict", NET, "--weights", untrained, str(tmp_path / "nope.png")], capsys)
    assert "nope.png does not exist" in err


def test_predict_unreadable_image(untrained, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture at all")
    err = _error(["predict", NET, "--weights", untrained, str(bad)], capsys)
    assert "not an image Pillow can read" in err


def test_predict_array_of_the_wrong_shape(untrained, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 16, 16), np.float32))
    err = _error(["predict", NET, "--weights", untrained, str(tmp_path / "x.npy")], capsys)
    assert "input `image` takes samples of shape (1, 16, 16)" in err


def test_predict_npz_without_the_input(untrained, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", pixels=np.zeros((1, 1, 16, 16), np.float32))
    err = _error(["predict", NET, "--weights", untrained, str(tmp_path / "x.npz")], capsys)
    assert "has no array `image`" in err and "pixels" in err


def test_predict_needs_a_dslc_checkpoint(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    err = _error(["predict", NET, "--weights", str(tmp_path / "w.npz"), "x.png"], capsys)
    assert "w.npz" in err
    err = _error(["predict", NET, "--weights", str(tmp_path / "missing.ckpt"), "x.png"], capsys)
    assert "does not exist" in err


def test_predict_bad_output_name(untrained, tmp_path, capsys):
    err = _error(["predict", NET, "--weights", untrained, "x.png", "-o", str(tmp_path / "out.txt")], capsys, code=2)
    assert ".npz" in err


def test_inspect_saliency_needs_an_input(untrained, tmp_path, capsys):
    err = _error(["inspect", NET, "--weights", untrained, "saliency", "-o", str(tmp_path / "s.png")], capsys, code=2)
    assert "--input" in err


def test_inspect_without_matplotlib_names_the_extra(untrained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import fails as when not installed
    err = _error(["inspect", NET, "--weights", untrained, "filters", "-o", str(tmp_path / "f.png")], capsys)
    assert "pip install" in err and "[viz]" in err


def test_help_lists_predict_and_inspect(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "predict" in out and "inspect" in out
    assert os.path.exists(NET)
