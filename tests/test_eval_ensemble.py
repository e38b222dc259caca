"""`dslc eval --weights A B C`: an ensemble scored on its averaged class probabilities."""
import json
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.data import _resize_bilinear
from dslc.runtime.model import Model

REPO = Path(__file__).resolve().parent.parent
NET = str(REPO / "models" / "digits_cnn.net")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = _resize_bilinear((d.images / 16.0).astype(np.float32), 16, 16)[:, None]
    y = d.target.astype(np.int64)
    folder = tmp_path_factory.mktemp("ens")
    models = []
    for seed in (0, 1):
        m = Model.from_file(NET, seed=seed)
        m.fit(x[:600], y[:600], epochs=1, progress=False, seed=seed)
        m.save(folder / f"m{seed}.ckpt")
        models.append(m)
    np.savez(folder / "test.npz", x=x[1500:1700], y=y[1500:1700])
    return folder, models, x[1500:1700], y[1500:1700]


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_ensemble_scores_the_averaged_probabilities(two, capsys):
    folder, models, x, y = two
    a, b = str(folder / "m0.ckpt"), str(folder / "m1.ckpt")
    assert main(["eval", NET, "--weights", a, b, "--data", str(folder / "test.npz"), "--format", "json"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    p = np.mean([_softmax(m.forward(image=x)["logits"].astype(np.float64)) for m in models], axis=0)
    assert got["ensemble"] == 2 and got["samples"] == 200 and got["weights"] == [a, b]
    assert got["loss"] == pytest.approx(float(-np.log(p[np.arange(200), y]).mean()), rel=1e-4)
    assert got["accuracy"] == pytest.approx(float((p.argmax(axis=1) == y).mean()))
    assert np.array(got["confusion"]).sum() == 200
    assert "an ensemble of 2 models: class probabilities averaged" in captured.err


def test_one_model_twice_is_that_model(two, capsys):
    folder, *_ = two
    a = str(folder / "m0.ckpt")
    data = ["--data", str(folder / "test.npz"), "--format", "json"]
    assert main(["eval", NET, "--weights", a, *data]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(["eval", NET, "--weights", a, a, *data]) == 0
    twice = json.loads(capsys.readouterr().out)
    assert twice["loss"] == pytest.approx(single["loss"], rel=1e-5) and twice["accuracy"] == single["accuracy"]
    assert main(["eval", NET, "--weights", a, str(folder / "m1.ckpt"), "--data", str(folder / "test.npz")]) == 0
    assert "an ensemble of 2: loss " in capsys.readouterr().out

