"""Any inputs, any targets: data maps the network's input names to arrays.

A classification + localisation network (models/cls_loc.net: an image, a class label and a box)
trains through the installed `dslc` command on digits placed at random on a larger canvas, and
both loss terms, reported per term in the metrics, fall; an autoencoder whose loss compares with
its own input (no label input at all) trains through Model.fit and `dslc run`; synthetic data and
.npz files are made and checked per input, with errors that name the input.
"""
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dslc.cli_train import _DataSpec
from dslc.compiler import compile_file, compile_source
from dslc.diagnostics import Source
from dslc.runtime.data import Dataset, InputSpec, load_inputs, named_batches
from dslc.runtime.errors import DataError, RuntimeUserError
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer, data_roles

ROOT = Path(__file__).resolve().parents[2]
CLS_LOC = ROOT / "models" / "cls_loc.net"
CANVAS = 24

AUTOENCODER = """network ae
input image: [64]
recon = image -> enc: dense(16) -> relu -> dec: dense(64)
output recon
loss mse(recon, image)
train { optimizer adam(lr = 1e-2) batch 32 epochs 4 }
"""

# Image-and-caption pairs: the image's features start the LSTM that reads the caption's words and
# predicts each next word. T is left open: the data says how long captions are.
CAPTIONER = """network captioner(vocab = 12)
input image: [16]
input words: int[T]
input next: int[T]
h0 = image -> dense(16) -> tanh
logits = words -> embed(vocab, 8) -> lstm(h0, hidden = 16) -> dense(vocab)
loss cross_entropy(logits, next)
train { optimizer adam(lr = 1e-2) batch 16 epochs 3 }
"""


def dslc_command():
    exe = Path(sys.executable).with_name("dslc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dslc.cli"]


def localisation_set(n, seed=0):
    """sklearn's 8x8 digits, each scaled up to 8..12 pixels and placed at random on a 24x24
    canvas; box = (x0, y0, x1, y1) of the placement as fractions of the canvas side."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(digits.images), n)
    image = np.zeros((n, 1, CANVAS, CANVAS), np.float32)
    box = np.zeros((n, 4), np.float32)
    for k, i in enumerate(pick):
        side = int(rng.integers(8, 13))
        src = (np.arange(side) * 8 // side)
        glyph = digits.images[i][np.ix_(src, src)] / 16.0
        x0, y0 = (int(v) for v in rng.integers(0, CANVAS - side + 1, 2))
        image[k, 0, y0:y0 + side, x0:x0 + side] = glyph
        box[k] = np.array([x0, y0, x0 + side, y0 + side], np.float32) / CANVAS
    return {"image": image, "label": digits.target[pick].astype(np.int64), "box": box}


# ---- data, without training ------------------------------------------------------------------

def test_roles_of_one_input_several_inputs_and_a_self_target():
    net, _ = compile_file(str(CLS_LOC), {})
    assert data_roles(net) == (None, None)             # three inputs: data must name them
    ae, _ = compile_source(Source("ae.net", AUTOENCODER))
    assert data_roles(ae) == ("image", None)           # the loss compares with the input itself
    spec = _DataSpec(net)
    assert spec.classic is None and spec.label == "label" and spec.classes == 10
    assert spec.inputs["label"] == InputSpec((), "int64", 10, True)
    assert spec.inputs["box"] == InputSpec((4,), "float32", None, True)
    assert spec.inputs["image"].target is False


def test_synthetic_data_for_every_input():
    net, _ = compile_file(str(CLS_LOC), {})
    train, val = _DataSpec(net).load("synthetic", val_fraction=0.25, seed=0, limit=40)
    assert (len(train), len(val)) == (30, 10)
    a = train.arrays
    assert set(a) == {"image", "label", "box"} and train.classes == 10
    assert a["image"].shape == (30, 1, CANVAS, CANVAS) and a["image"].dtype == np.float32
    assert a["label"].dtype == np.int64 and a["label"].min() >= 0 and a["label"].max() < 10
    assert a["box"].shape == (30, 4) and 0 <= a["box"].min() and a["box"].max() < 1   # a target: [0, 1)


def test_embedding_ids_stay_below_the_vocabulary():
    src = """network tagger(vocab = 7)
input tokens: int[T]
input tags: int[T]
logits = tokens -> embed(vocab, 8) -> dense(3)
loss cross_entropy(logits, tags)
"""
    net, _ = compile_source(Source("tagger.net", src))
    spec = _DataSpec(net)
    ds, _ = load_inputs("synthetic", {**spec.inputs, "extra": InputSpec((2,), "int64", 5)}, val_fraction=0,
                        limit=200)
    assert ds.arrays["tokens"].max() < 7 and ds.arrays["extra"].max() < 5
    assert spec.inputs["tags"].classes == 3


def test_npz_errors_name_the_missing_or_misshaped_input(tmp_path):
    net, _ = compile_file(str(CLS_LOC), {})
    spec = _DataSpec(net)
    data = localisation_set(20)
    path = tmp_path / "data.npz"
    np.savez(path, image=data["image"], label=data["label"])
    with pytest.raises(DataError) as e:
        spec.load(str(path), val_fraction=0, seed=0, limit=None)
    assert "`box` is missing from data.npz: the network's inputs are image, label, box" in e.value.message
    assert "box=" in e.value.hint
    np.savez(path, **{**data, "box": data["box"][:, :3]})
    with pytest.raises(DataError, match=r"box in dataset 'data.npz' has samples of shape \(3,\).*input `box`"):
        spec.load(str(path), val_fraction=0, seed=0, limit=None)
    np.savez(path, **{**data, "box": data["box"][:10]})
    with pytest.raises(DataError, match="has 10 samples but `image` has 20"):
        spec.load(str(path), val_fraction=0, seed=0, limit=None)
    np.savez(path, **{**data, "label": data["label"] + 10})
    with pytest.raises(DataError, match="below 10"):
        spec.load(str(path), val_fraction=0, seed=0, limit=None)
    with pytest.raises(DataError, match="inputs image, label, box"):
        spec.load("digits", val_fraction=0, seed=0, limit=None)
    np.savez(path, **data)
    train, val = spec.load(str(path), val_fraction=0.25, seed=0, limit=None)
    assert (len(train), len(val)) == (15, 5) and train.classes == 10


def test_a_one_input_network_reads_npz_arrays_by_input_name_or_as_x_and_y(tmp_path):
    net, _ = compile_file(str(ROOT / "models" / "digits_cnn.net"), {})
    spec = _DataSpec(net)
    rng = np.random.default_rng(0)
    image, label = rng.random((10, 1, 16, 16), dtype=np.float32), rng.integers(0, 10, 10)
    np.savez(tmp_path / "named.npz", image=image, label=label)
    np.savez(tmp_path / "xy.npz", x=image, y=label)
    named, _ = spec.load(str(tmp_path / "named.npz"), val_fraction=0, seed=0, limit=None)
    xy, _ = spec.load(str(tmp_path / "xy.npz"), val_fraction=0, seed=0, limit=None)
    assert set(named.arrays) == {"image", "label"} and set(xy.arrays) == {"x", "y"}
    assert np.array_equal(named.arrays["image"], xy.x) and np.array_equal(named.arrays["label"], xy.y)


def test_named_batches_cut_every_array_alike():
    ds = Dataset(arrays={"a": np.arange(10), "b": np.arange(10) * 10})
    got = list(named_batches(ds, 4, shuffle=True, rng=np.random.default_rng(0), drop_last=True))
    assert len(got) == 2 and all(np.array_equal(b["b"], b["a"] * 10) for b in got)
    shorthand = Dataset(np.zeros((3, 2)), np.arange(3), "s", 3)
    assert set(shorthand.arrays) == {"x", "y"} and len(shorthand) == 3 and shorthand.y[2] == 2


def test_a_missing_input_is_named_before_training():
    net, _ = compile_file(str(CLS_LOC), {})
    data = localisation_set(8)
    del data["box"]
    with pytest.raises(RuntimeUserError, match="`box` is missing from the training data"):
        Trainer(Model(net), TrainConfig.from_network(net), Dataset(name="arrays", arrays=data), None,
                progress=False)


# ---- training --------------------------------------------------------------------------------

@pytest.mark.slow
def test_classification_and_localisation_lowers_both_losses_through_dslc_run(tmp_path):
    data = localisation_set(1200)
    np.savez(tmp_path / "loc.npz", **data)
    proc = subprocess.run([*dslc_command(), "run", str(CLS_LOC), "--data", "loc.npz", "--epochs", "4",
                           "--quiet", "--checkpoint", "ck", "--metrics", "m.jsonl"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    for part in ("train_terms", "val_terms"):
        assert set(first[part]) == {"cross_entropy", "smooth_l1"}
        for term in ("cross_entropy", "smooth_l1"):
            assert last[part][term] < 0.8 * first[part][term], (part, term, first[part], last[part])
    # the total is the weighted sum of the terms (2 * smooth_l1 in cls_loc.net)
    t = last["train_terms"]      # per batch the loss is the weighted sum, and so are the epoch's means
    assert last["train_loss"] == pytest.approx(t["cross_entropy"] + 2 * t["smooth_l1"], rel=1e-5)
    t = last["val_terms"]
    assert last["val_loss"] == pytest.approx(t["cross_entropy"] + 2 * t["smooth_l1"], rel=1e-5)
    assert last["val_accuracy"] > 0.3
    assert "cross_entropy" in proc.stderr and "smooth_l1" in proc.stderr      # the epoch lines name each term
    proc = subprocess.run([*dslc_command(), "eval", str(CLS_LOC), "--weights", "ck/last.ckpt", "--data", "loc.npz",
                           "--format", "json"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["samples"] == 1200 and report["accuracy"] > 0.3 and set(report["terms"]) == {"cross_entropy",
                                                                                              "smooth_l1"}


@pytest.mark.slow
def test_an_autoencoder_without_a_label_input_trains_through_dslc_run(tmp_path):
    from sklearn.datasets import load_digits
    x = (load_digits().data / 16.0).astype(np.float32)
    (tmp_path / "ae.net").write_text(AUTOENCODER)
    np.savez(tmp_path / "pixels.npz", image=x[:512])
    for source in ("pixels.npz", "digits"):          # named like the input; and digits, its labels unused
        proc = subprocess.run([*dslc_command(), "run", "ae.net", "--data", source, "--quiet", "--overwrite",
                               "--checkpoint", "ck", "--metrics", f"{source}.jsonl"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(line) for line in (tmp_path / f"{source}.jsonl").read_text().splitlines()]
        assert records[-1]["val_loss"] < 0.7 * records[0]["val_loss"], records
        assert records[-1]["val_accuracy"] is None


@pytest.mark.slow
def test_image_and_caption_pairs_train_with_the_caption_length_from_the_data(tmp_path):
    """Two captions, which one told by the image alone: the words after the first need the image."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((256, 16)).astype(np.float32)
    captions = np.array([[1, 2, 3, 4, 5, 6, 7], [1, 9, 10, 11, 3, 2, 8]])[(image[:, 0] > 0).astype(int)]
    np.savez(tmp_path / "captions.npz", image=image, words=captions[:, :6], next=captions[:, 1:])
    (tmp_path / "captioner.net").write_text(CAPTIONER)
    proc = subprocess.run([*dslc_command(), "run", "captioner.net", "--data", "captions.npz", "--quiet",
                           "--checkpoint", "ck", "--metrics", "m.jsonl"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "T is not set" not in proc.stderr            # T = 6, from the arrays
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert records[-1]["val_accuracy"] > 0.95, records



def _cls_loc_trainer(checkpoint_dir, data):
    net, _ = compile_file(str(CLS_LOC), {})
    cfg = TrainConfig.from_network(net, epochs=2, batch=16, seed=0)
    train = Dataset(name="loc", arrays={k: v[:64] for k, v in data.items()})
    val = Dataset(name="loc", arrays={k: v[64:] for k, v in data.items()})
    return Trainer(Model(net, seed=0), cfg, train, val, progress=False, checkpoint_dir=str(checkpoint_dir),
                   log=lambda s: None)


@pytest.mark.slow
def test_an_interrupted_then_resumed_run_of_several_inputs_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    """Batches of several arrays and the per-term sums resume bit for bit (Ctrl-C in step 3 of 8)."""
    data = localisation_set(80)
    straight = _cls_loc_trainer(tmp_path / "a", data)
    straight.fit()
    interrupted = _cls_loc_trainer(tmp_path / "b", data)
    calls = {"n": 0}
    original = interrupted._step

    def step_then_interrupt(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return original(*a, **kw)

    monkeypatch.setattr(interrupted, "_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = _cls_loc_trainer(tmp_path / "b", data)
    resumed.resume()
    resumed.fit()
    for k, v in straight.model.params.items():
        assert np.array_equal(resumed.model.params[k], v), k
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in straight.history]
    assert [{k: v for k, v in r.items() if k != "samples_per_s"} for r in resumed.history] == strip
    assert set(strip[-1]["train_terms"]) == {"cross_entropy", "smooth_l1"}
