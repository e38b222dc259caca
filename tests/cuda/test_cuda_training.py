"""A whole training step on the (simulated) GPU equals the CPU step; no host round trip per op.

Runs in Numba's CUDA simulator in CI (tests/conftest.py), so shapes are tiny.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.data import Dataset
from dslc.runtime.devices import CUDA
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]

# whole training steps in the simulator: tens of seconds each
pytestmark = pytest.mark.slow

CNN = """
network sim_cnn(classes = 3)
input image: [1, 6, 6]
input label: int
logits = image -> conv(2, 3x3, pad = 1) -> batchnorm -> relu -> maxpool(2x2) -> flatten -> dense(classes)
loss cross_entropy(logits, label)
train { optimizer momentum(lr = 0.1) batch 4 epochs 1 }
"""

LSTM = """
network sim_lstm(vocab = 5)
input text: int[T]
input next: int[T]
logits = text -> embed(vocab, 3) -> lstm(4) -> dense(vocab)
loss cross_entropy(logits, next)
train { optimizer adam(lr = 0.01) batch 2 epochs 1 clip_grad_norm 1 }
"""


def _data(net, rng, n):
    if "text" in net.inputs:
        x = rng.integers(0, 5, size=(n, 3)).astype(np.int64)
        return Dataset(x, np.roll(x, -1, axis=1), "toy", 5)
    return Dataset(rng.standard_normal((n, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64),
                   "toy", 3)


@pytest.mark.parametrize("source", [CNN, LSTM], ids=["cnn", "lstm"])
def test_training_steps_on_the_device_equal_the_cpu(source):
    net, _ = compile_source(Source("sim.net", source))
    ds = _data(net, np.random.default_rng(0), 8)
    results = {}
    for device in ("cpu", "cuda"):
        model = Model(net, device=device, seed=0)
        cfg = TrainConfig.from_network(net)
        trainer = Trainer(model, cfg, ds, None, progress=False, log=lambda s: None)
        history = trainer.fit()
        results[device] = (history[-1]["train_loss"], model.params)
    assert results["cuda"][0] == pytest.approx(results["cpu"][0], rel=1e-4)
    for k, v in results["cpu"][1].items():
        np.testing.assert_allclose(results["cuda"][1][k], v, rtol=1e-3, atol=1e-5, err_msg=k)


def test_a_training_step_copies_only_metrics_to_the_host(monkeypatch):
    net, _ = compile_source(Source("sim.net", CNN))
    model = Model(net, device="cuda", seed=0)
    ds = _data(net, np.random.default_rng(0), 4)
    trainer = Trainer(model, TrainConfig.from_network(net), ds, None, progress=False, log=lambda s: None)
    copies = []
    real = CUDA.to_host
    monkeypatch.setattr(CUDA, "to_host", lambda self, a: copies.append(a.shape) or real(self, a))
    monkeypatch.setattr(CUDA, "scalar", lambda self, a: copies.append(("loss",)) or float(real(self, a)))
    trainer._step(trainer._feeds(ds.arrays), 0.1)
    # the loss and the logits (for accuracy): nothing per op, no parameter or gradient
    assert sorted(map(str, copies)) == sorted(map(str, [("loss",), (4, 3)]))


def test_dslc_run_on_the_simulated_device_matches_the_cpu(tmp_path):
    net_file = tmp_path / "sim.net"
    net_file.write_text(CNN)
    losses = {}
    for device in ("cpu", "cuda"):
        metrics = tmp_path / f"{device}.jsonl"
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        exe = Path(sys.executable).with_name("dslc")
        r = subprocess.run([str(exe), "run", str(net_file), "--data", "digits", "--limit", "24",
                            "--set", "classes=10", "--epochs", "1", "--batch", "8", "--quiet", "--device", device,
                            "--metrics", str(metrics)],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        import json
        losses[device] = json.loads(metrics.read_text().splitlines()[-1])["train_loss"]
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-4)
