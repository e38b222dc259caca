"""`dslc inspect` patches, class and dream on a small trained digits model: the patches are the
dataset's strongest units cut to their receptive fields, the ascents raise what they ascend, and
mistakes get diagnostics."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dslc.cli import main
from dslc.cli_inspect import class_model, dream, receptive_fields, top_patches
from dslc.runtime.data import _resize_bilinear
from dslc.runtime.model import Model

REPO = Path(__file__).resolve().parent.parent
NET = str(REPO / "models" / "digits_cnn.net")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = _resize_bilinear((d.images / 16.0).astype(np.float32), 16, 16)[:, None]
    model = Model.from_file(NET)
    model.fit(x[:1200], d.target[:1200].astype(np.int64), epochs=1, progress=False)
    folder = tmp_path_factory.mktemp("model")
    model.save(folder / "digits.ckpt")
    png = folder / "digit.png"
    Image.fromarray(np.round(x[1300, 0] * 255).astype(np.uint8)).save(png)
    return str(folder / "digits.ckpt"), model, str(png), x[1200:1500]


def _inspect(ckpt, *rest):
    return main(["inspect", NET, "--weights", ckpt, *rest])


def test_receptive_fields_follow_the_convolutions_and_pools(trained):
    _, model, _, _ = trained
    rf = receptive_fields(model.net, "image")
    assert rf["conv1"] == ((-1, 3, 1),) * 2           # 3x3, pad 1
    assert rf["relu1"] == rf["conv1"]                 # shape-keeping ops see what their input sees
    assert rf["maxpool1"] == ((-1, 4, 2),) * 2        # 2x2 stride 2 doubles the jump
    assert rf["conv2"] == ((-3, 8, 2),) * 2
    assert "fc1" not in rf and "flatten1" not in rf   # a dense unit sees the whole image


def test_a_units_input_gradient_stays_inside_its_receptive_field(trained):
    _, model, _, x = trained
    m = model.with_outputs(["conv2"])
    out = m.forward(image=x[:1])["conv2"]
    seed = np.zeros_like(out)
    seed[0, 5, 3, 2] = 1.0
    g = m.backward(wrt=["image"], output="conv2", grad=seed)["image"][0, 0]
    (r0, rs, rj), (c0, cs, cj) = receptive_fields(model.net, "image")["conv2"]
    top, left = r0 + 3 * rj, c0 + 2 * cj
    inside = np.zeros_like(g, dtype=bool)
    inside[max(top, 0):top + rs, max(left, 0):left + cs] = True
    assert np.abs(g[inside]).sum() > 0 and np.all(g[~inside] == 0)
    # exposing a layer leaves the model's own outputs as they were
    np.testing.assert_allclose(m.forward(image=x[:4])["logits"], model.forward(image=x[:4])["logits"], atol=1e-5)


def test_top_patches_are_the_layers_strongest_units(trained):
    _, model, _, x = trained
    found = top_patches(model, x, "conv2", 5, 6)
    acts = model.layer_outputs(["conv2"], image=x)["conv2"][:, 5]
    per_sample = acts.reshape(len(acts), -1).max(axis=1)
    assert [s for s, *_ in found] == list(np.argsort(-per_sample, kind="stable")[:6])
    values = [v for *_, v, _ in found]
    assert values == sorted(values, reverse=True)
    (r0, rs, rj), (c0, cs, cj) = receptive_fields(model.net, "image")["conv2"]
    for s, r, c, v, patch in found:
        assert v == pytest.approx(float(acts[s, r, c]), rel=1e-6) and v == pytest.approx(float(per_sample[s]))
        top, left = r0 + r * rj, c0 + c * cj
        np.testing.assert_array_equal(patch, x[s][:, max(top, 0):top + rs, max(left, 0):left + cs])


def test_class_model_ascent_raises_the_regularised_score(trained):
    _, model, _, _ = trained
    img, history = class_model(model, "logits", 3, steps=15, lr=0.01, l2=0.05)
    assert img.shape == (1, 16, 16)
    assert history[-1] > history[0] + 0.5
    assert all(b >= a - 1e-4 for a, b in zip(history, history[1:]))     # small steps: each one climbs
    logits = model.forward(image=img[None])["logits"][0]
    assert history[-1] == pytest.approx(float(logits[3]) - 0.05 * float((img.astype(np.float64) ** 2).sum()),
                                        rel=1e-5)
    img, _ = class_model(model, "logits", 3, steps=100, lr=0.1, l2=0.01)     # the CLI's defaults, fewer steps
    assert int(np.argmax(model.forward(image=img[None])["logits"][0])) == 3


def test_dream_raises_the_layers_norm_and_its_gradient_is_the_norms(trained):
    _, model, _, x = trained
    start = x[:1]
    out, norms = dream(model, start, "conv2", steps=5, lr=0.01)
    assert norms[-1] > norms[0] and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, start)
    # the gradient the ascent follows is that of 0.5 ||layer||^2; conv1's output is linear in the
    # image (no kinks before it), so a central difference of the quadratic is exact
    m = model.with_outputs(["conv1"])
    a = m.forward(image=start)["conv1"]
    g = m.backward(wrt=["image"], output="conv1", grad=a)["image"].astype(np.float64)
    d = np.random.default_rng(0).standard_normal(start.shape).astype(np.float32)
    eps = 1e-2

    def half_sq(z):
        return 0.5 * float((m.forward(image=z)["conv1"].astype(np.float64) ** 2).sum())

    fd = (half_sq(start + eps * d) - half_sq(start - eps * d)) / (2 * eps)
    assert fd == pytest.approx(float((g * d).sum()), rel=1e-3)


def test_the_cli_writes_each_picture(trained, tmp_path, capsys):
    ckpt, _, png, _ = trained
    for kind, extra, head in [
        ("patches", ["--data", "digits", "--layer", "conv2", "--limit", "200"],
         "the 9 digits samples (of 200) that most activate channels 0 to 7 of conv2"),
        ("patches", ["--data", "digits", "--layer", "relu1", "--channel", "2", "--top", "4"],
         "the 4 digits samples (of 1000) that most activate channel 2 of relu1"),
        ("class", ["--class", "4", "--steps", "20"], "the input maximising logits[4] - 0.01 ||input||^2, 20 steps"),
        ("dream", ["--input", png, "--layer", "conv2", "--steps", "3"], f"{png} changed by 3 steps"),
    ]:
        out = tmp_path / f"{kind}.png"
        assert _inspect(ckpt, kind, *extra, "-o", str(out)) == 0
        line = capsys.readouterr().out
        assert line.startswith(f"wrote {out}: {head}"), line
        with Image.open(out) as img:
            assert img.size[0] > 100


@pytest.mark.parametrize("args, message", [
    (["patches", "--layer", "conv2"], "patches needs a dataset to search: --data SOURCE"),
    (["patches", "--data", "digits", "--layer", "fc1"], "no (channels, height, width) maps"),
    (["patches", "--data", "digits", "--layer", "conv2", "--channel", "32"], "conv2 has channels 0 to 31"),
    (["patches", "--data", "digits", "--layer", "conv2", "--top", "0"], "--top 0: give 1 or more"),
    (["class", "--class", "10"], "--class 10: digits_cnn has classes 0 to 9"),
    (["class", "--steps", "0"], "--steps 0: give 1 or more"),
    (["class", "--l2", "-1"], "--l2 -1.0: give 0 or more"),
    (["dream", "--layer", "conv2"], "dream needs an image: --input IMG"),
    (["dream", "--input", "x.png"], "dream needs a layer: --layer NAME"),
    (["dream", "--input", "x.png", "--layer", "conv9"], "digits_cnn has no layer `conv9`"),
])
def test_mistakes_get_diagnostics(trained, tmp_path, capsys, args, message):
    ckpt = trained[0]
    assert _inspect(ckpt, *args, "-o", str(tmp_path / "o.png")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
