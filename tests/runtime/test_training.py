"""Training end to end: the installed `dslc` command, resume bit-for-bit, damaged checkpoints, divergence."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.data import load_dataset
from dslc.runtime.errors import CheckpointError, RuntimeUserError
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"

SMALL_CNN = """
network tiny(classes = 10)
input image: [1, 8, 8]
input label: int
logits = image -> conv(4, 3x3, pad = 1) -> batchnorm -> relu -> maxpool(2x2) -> flatten
  -> dense(16) -> relu -> dropout(0.2) -> dense(classes)
loss cross_entropy(logits, label)
train { optimizer momentum(lr = 0.05) batch 16 epochs 2 augment(brightness = 0.1) }
"""


def dslc_command():
    """The installed console script, next to the interpreter running the tests."""
    exe = Path(sys.executable).with_name("dslc")
    return [str(exe)] if exe.exists() else [shutil.which("dslc") or "dslc"]


def run_dslc(*args, timeout=900):
    return subprocess.run(dslc_command() + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _trainer(tmp_path, limit=200):
    net, _ = compile_source(Source("tiny.net", SMALL_CNN))
    model = Model(net, seed=0)
    cfg = TrainConfig.from_network(net)
    train, val = load_dataset("digits", x_shape=(1, 8, 8), x_dtype="float32", y_shape=(), y_dtype="int64",
                              limit=limit, classes=10)
    return Trainer(model, cfg, train, val, progress=False, checkpoint_dir=str(tmp_path), log=lambda s: None)


def test_interrupted_then_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
    straight = _trainer(tmp_path / "a")
    straight.fit()
    expected = {k: v.copy() for k, v in straight.model.params.items()}

    interrupted = _trainer(tmp_path / "b")
    calls = {"n": 0}
    original = interrupted._step

    def step_then_interrupt(*a, **kw):     # Ctrl-C in step 13 of 20: it takes effect after that step
        calls["n"] += 1
        if calls["n"] == 13:
            signal.raise_signal(signal.SIGINT)
        return original(*a, **kw)

    monkeypatch.setattr(interrupted, "_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert (tmp_path / "b" / "last.ckpt").exists()

    resumed = _trainer(tmp_path / "b")
    meta = resumed.resume()
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 3)
    resumed.fit()
    for k, v in expected.items():
        assert np.array_equal(resumed.model.params[k], v), k
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_truncated_and_tampered_checkpoints_are_refused_clearly(tmp_path):
    t = _trainer(tmp_path, limit=60)
    t.cfg.epochs = 1
    t.fit()
    ckpt = tmp_path / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        _trainer(tmp_path, limit=60).resume()
    assert "last.ckpt" in str(e.value)
    flipped = bytearray(data)
    weights = t.model.params["dense1.weight"].tobytes()
    at = data.index(weights) + len(weights) // 2     # one bit of one stored weight
    flipped[at] ^= 0x01
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as e:
        _trainer(tmp_path, limit=60).resume()
    assert "help" in str(e.value)


def test_divergence_names_the_first_non_finite_layer(tmp_path):
    t = _trainer(tmp_path, limit=64)
    t.cfg.epochs = 1
    t.model.set_param("dense2.weight", np.full((10, 16), np.inf, np.float32))
    with pytest.raises(RuntimeUserError) as e:
        t.fit()
    assert "`dense2`" in str(e.value) and "learning rate" in str(e.value)


def test_a_nan_weight_under_a_relu_is_found(tmp_path):
    """relu(NaN) is NaN (as in torch): a first layer whose weights went NaN, followed by
    batchnorm -> relu, makes the loss NaN and is named, instead of a relu zeroing its output
    and training going on with a dead layer."""
    t = _trainer(tmp_path, limit=64)
    t.cfg.epochs = 1
    conv = next(name for name in t.model.params if name.endswith(".weight") and name.startswith("conv"))
    t.model.set_param(conv, np.full(t.model.params[conv].shape, np.nan, np.float32))
    with pytest.raises(RuntimeUserError) as e:
        t.fit()
    assert f"`{conv.split('.')[0]}`" in str(e.value)


def test_model_save_and_load_round_trip(tmp_path):
    net, _ = compile_source(Source("tiny.net", SMALL_CNN))
    m = Model(net, seed=3)
    m.save(tmp_path / "m.ckpt")
    import dslc
    m2 = dslc.load(str(tmp_path / "m.ckpt"))
    for k, v in m.params.items():
        assert np.array_equal(m2.params[k], v)
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(m2.forward(image=x)["logits"], m.forward(image=x)["logits"])


def test_partial_load_reports_what_matched():
    net, _ = compile_source(Source("tiny.net", SMALL_CNN))
    src = Model(net, seed=1).params
    other, _ = compile_source(Source("tiny.net", SMALL_CNN.replace("classes = 10", "classes = 3")))
    m = Model(other, seed=2)
    report = m.load_params(dict(src))
    assert "dense2.weight" in [n for n, _, _ in report.mismatched]
    assert "conv1.weight" in report.loaded
    assert np.array_equal(m.params["conv1.weight"], src["conv1.weight"])


@pytest.mark.slow
def test_dslc_run_digits_reaches_97_percent(tmp_path):
    metrics = tmp_path / "m.jsonl"
    r = run_dslc("run", "models/digits_cnn.net", "--data", "digits", "--epochs", "8",
                 "--metrics", str(metrics), "--checkpoint", str(tmp_path / "ck"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(rows) == 8
    assert set(rows[0]) >= {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "samples_per_s"}
    assert rows[-1]["val_accuracy"] >= 0.97, rows[-1]
    e = run_dslc("eval", "models/digits_cnn.net", "--weights", str(tmp_path / "ck" / "last.ckpt"), "--data", "digits")
    assert e.returncode == 0, e.stderr
    assert "top-1 accuracy" in e.stdout and "top-5 accuracy" in e.stdout


@pytest.mark.slow
def test_dslc_run_char_lstm_loss_falls_well_below_uniform(tmp_path):
    from dslc.runtime.data import CORPUS_PATH
    vocab = len(set(Path(CORPUS_PATH).read_text()))
    metrics = tmp_path / "m.jsonl"
    r = run_dslc("run", "models/charlstm.net", "--data", "chars", "--epochs", "2", "--limit", "600",
                 "--set", "T=32", "--set", "hidden=64", "--set", f"vocab={vocab}", "--batch", "16", "--lr", "0.01",
                 "--metrics", str(metrics), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    uniform = np.log(vocab)      # the loss of guessing every character equally likely
    assert rows[-1]["train_loss"] < 0.75 * uniform, (rows, uniform)


def test_resume_without_checkpoint_is_a_usage_error():
    r = run_dslc("run", "models/digits_cnn.net", "--resume")
    assert r.returncode == 2 and "--checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_train_section_init_chooses_the_scheme():
    he, _ = compile_source(Source("tiny.net", SMALL_CNN))
    xavier, _ = compile_source(Source("tiny.net", SMALL_CNN.replace("batch 16", "batch 16 init xavier")))
    w_he = Model(he, seed=0).params["conv1.weight"]          # followed by batchnorm -> relu: He by default
    w_xavier = Model(xavier, seed=0).params["conv1.weight"]
    fan_in, fan_out = 1 * 3 * 3, 4 * 3 * 3
    assert np.std(w_xavier) / np.std(w_he) == pytest.approx(np.sqrt(fan_in / (fan_in + fan_out)), rel=1e-6)


@pytest.mark.slow
def test_device_cuda_without_a_gpu_says_what_is_missing():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           capture_output=True, text=True, env=env)
    if probe.stdout.strip() == "True":
        pytest.skip("a real GPU is present")
    r = subprocess.run(dslc_command() + ["run", "models/digits_cnn.net", "--device", "cuda", "--epochs", "1"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "GPU" in r.stderr and "help:" in r.stderr and "Traceback" not in r.stderr
