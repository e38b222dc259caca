"""`dslc predict --masks DIR` for a per-pixel classifier: a palette PNG per input whose pixel
values are the argmax of the (ensemble-averaged) class probabilities."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dslc.cli import main
from dslc.runtime.model import Model

REPO = Path(__file__).resolve().parent.parent
NET = str(REPO / "models" / "unet.net")
SETS = ["--set", "size=16", "--set", "c=4", "--set", "classes=3"]
OVERRIDES = {"size": 16, "c": 4, "classes": 3}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet")
    models = []
    for seed in (0, 1):
        m = Model.from_file(NET, OVERRIDES, seed=seed)
        m.save(folder / f"u{seed}.ckpt")
        models.append(m)
    x = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    np.save(folder / "two.npy", x)
    Image.fromarray((x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / "one.png")
    return folder, models, x


def _read(path):
    with Image.open(path) as img:
        return img.mode, np.asarray(img)


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_a_mask_per_input_holds_the_argmax(unets, tmp_path, capsys):
    folder, models, x = unets
    out = tmp_path / "masks"
    assert main(["predict", NET, "--weights", str(folder / "u0.ckpt"), str(folder / "two.npy"),
                 "--masks", str(out), *SETS]) == 0
    printed = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["two_0.png", "two_1.png"]
    assert f"wrote {out / 'two_0.png'}: 16x16 mask of {folder / 'two.npy'}[0]" in printed.out
    want = models[0].forward(image=x)["logits"].argmax(axis=1)
    for i in range(2):
        mode, got = _read(out / f"two_{i}.png")
        assert mode == "P"
        np.testing.assert_array_equal(got, want[i])


def test_an_ensemble_averages_the_probabilities(unets, tmp_path, capsys):
    folder, models, x = unets
    out = tmp_path / "ens"
    assert main(["predict", NET, "--weights", str(folder / "u0.ckpt"), str(folder / "u1.ckpt"),
                 str(folder / "two.npy"), "--masks", str(out), *SETS]) == 0
    assert "probabilities averaged over 2 models" in capsys.readouterr().err
    p = np.mean([_softmax(m.forward(image=x)["logits"].astype(np.float64)) for m in models], axis=0)
    np.testing.assert_array_equal(_read(out / "two_1.png")[1], p.argmax(axis=1)[1])


def test_an_image_input_and_the_diagnostics(unets, tmp_path, capsys):
    folder, _, _ = unets
    ckpt = str(folder / "u0.ckpt")
    assert main(["predict", NET, "--weights", ckpt, str(folder / "one.png"), "--masks", str(tmp_path / "m"),
                 *SETS]) == 0
    assert (tmp_path / "m" / "one.png").exists()
    capsys.readouterr()
    # without --masks, a per-pixel classifier's outputs are no ranking: the hint names --masks
    assert main(["predict", NET, "--weights", ckpt, str(folder / "one.png"), *SETS]) == 2
    assert "--masks DIR" in capsys.readouterr().err
    assert main(["predict", NET, "--weights", ckpt, str(folder / "one.png"), "--masks", str(tmp_path / "m"),
                 "-o", str(tmp_path / "o.npz"), *SETS]) == 2
    assert "--masks and -o both" in capsys.readouterr().err
    digits = str(REPO / "models" / "digits_cnn.net")
    Model.from_file(digits).save(tmp_path / "d.ckpt")
    np.save(tmp_path / "d.npy", np.zeros((1, 16, 16), np.float32))
    assert main(["predict", digits, "--weights", str(tmp_path / "d.ckpt"), str(tmp_path / "d.npy"),
                 "--masks", str(tmp_path / "m2")]) == 2
    assert "--masks needs per-pixel class scores" in capsys.readouterr().err
