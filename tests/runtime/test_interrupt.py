"""Interruption-safe training: a stop signal at any phase of a step leaves the state before or
after that step, never a mixture, so a resumed run ends bit for bit where an uninterrupted
run ends (every array of the final checkpoint: parameters, optimizer state, random streams).

The signal is delivered for real (signal.raise_signal) from inside each phase: after the
forward pass (batchnorm statistics moved, dropout masks drawn), after the backward pass, after
the optimizer update, after a validation pass and inside a checkpoint write. Networks: a CNN
with batchnorm, dropout and augmentation, and an LSTM; optimizers Adam and momentum SGD.
"""
import os
import signal

import numpy as np
import pytest

import dslc.runtime.train as train_module
from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.data import Dataset, load_dataset
from dslc.runtime.model import Model
from dslc.runtime.plan import Plan
from dslc.runtime.train import CHECKPOINT_NAME, Interrupted, TrainConfig, Trainer

pytestmark = pytest.mark.slow

OPTIMIZERS = {"adam": "adam(lr = 0.01)", "sgd_momentum": "sgd(lr = 0.05, momentum = 0.9)"}

CNN = """
network tiny_cnn(classes = 10)
input image: [1, 8, 8]
input label: int
logits = image -> conv(4, 3x3, pad = 1) -> batchnorm -> relu -> maxpool(2x2) -> flatten
  -> dense(16) -> relu -> dropout(0.3) -> dense(classes)
loss cross_entropy(logits, label)
train {{ optimizer {opt} batch 16 epochs 2 augment(brightness = 0.1) }}
"""

LSTM = """
network tiny_lstm(vocab = 8)
input text: int[6]
input next: int[6]
logits = text -> embed(vocab, 4) -> lstm(6) -> dense(vocab)
loss cross_entropy(logits, next)
train {{ optimizer {opt} batch 8 epochs 2 }}
"""

# 4 steps an epoch for both networks (CNN: 64 training samples / 16, LSTM: 32 / 8).
STEPS_PER_EPOCH = 4


def _data(kind):
    if kind == "cnn":
        return load_dataset("digits", x_shape=(1, 8, 8), x_dtype="float32", y_shape=(), y_dtype="int64",
                            limit=80, classes=10)
    rng = np.random.default_rng(7)
    text = rng.integers(0, 8, size=(40, 7))
    x, y = text[:, :-1].copy(), text[:, 1:].copy()
    return Dataset(x[:32], y[:32], "tokens", 8), Dataset(x[32:], y[32:], "tokens", 8)


def _trainer(kind, opt, directory):
    source = (CNN if kind == "cnn" else LSTM).format(opt=OPTIMIZERS[opt])
    net, _ = compile_source(Source(f"{kind}.net", source))
    model = Model(net, seed=0)
    train, val = _data(kind)
    cfg = TrainConfig.from_network(net)
    return Trainer(model, cfg, train, val, progress=False, checkpoint_dir=str(directory), log=lambda s: None)


def _final_checkpoint(directory):
    return load_checkpoint(os.path.join(directory, CHECKPOINT_NAME))


def assert_same_checkpoint(a_dir, b_dir):
    (a, a_meta), (b, b_meta) = _final_checkpoint(a_dir), _final_checkpoint(b_dir)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"array {k} differs"
    assert (a_meta["epoch"], a_meta["step_in_epoch"]) == (b_meta["epoch"], b_meta["step_in_epoch"])
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert [h[key] for h in a_meta["history"]] == [h[key] for h in b_meta["history"]], key


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    """The uninterrupted runs, one per network and optimizer, trained once for the module."""
    done = {}

    def get(kind, opt):
        if (kind, opt) not in done:
            d = tmp_path_factory.mktemp(f"straight_{kind}_{opt}")
            _trainer(kind, opt, d).fit()
            done[kind, opt] = d
        return done[kind, opt]
    return get


def _hook(monkeypatch, trainer, phase, k):
    """Raise SIGINT from inside the k-th call (1-based) of `phase`, after the call has done its
    work: the step's state is then half changed."""
    calls = {"n": 0}

    def fire():
        calls["n"] += 1
        if calls["n"] == k:
            signal.raise_signal(signal.SIGINT)

    if phase in ("forward", "validation"):
        original = trainer.model.forward
        training = phase == "forward"

        def forward(*a, **kw):
            out = original(*a, **kw)
            if kw.get("training", False) == training:
                fire()
            return out
        monkeypatch.setattr(trainer.model, "forward", forward)
    elif phase == "backward":
        original_backward = Plan.backward

        def backward(self, *a, **kw):
            out = original_backward(self, *a, **kw)
            fire()
            return out
        monkeypatch.setattr(Plan, "backward", backward)
    elif phase == "update":
        original_step = trainer.opt.step

        def step(*a, **kw):
            out = original_step(*a, **kw)
            fire()
            return out
        monkeypatch.setattr(trainer.opt, "step", step)
    elif phase == "checkpoint":
        original_save = train_module.save_checkpoint

        def save(*a, **kw):
            fire()      # inside the write: before the file is replaced
            return original_save(*a, **kw)
        monkeypatch.setattr(train_module, "save_checkpoint", save)
    return calls


# (phase, k): where the signal lands. Steps 1-4 are epoch 1, 5-8 epoch 2; step 4 is the last of
# epoch 1 (the state saved is "all steps done, validation not yet").
POINTS = [("forward", 1), ("forward", 4), ("forward", 6), ("backward", 3), ("backward", 7), ("update", 2),
          ("update", 5), ("validation", 1), ("checkpoint", 1)]


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["cnn", "lstm"])
@pytest.mark.parametrize("phase,k", POINTS, ids=[f"{p}{k}" for p, k in POINTS])
def test_signal_inside_a_phase_then_resume_equals_uninterrupted(kind, opt, phase, k, baselines, tmp_path,
                                                                monkeypatch):
    straight = baselines(kind, opt)
    interrupted = _trainer(kind, opt, tmp_path)
    calls = _hook(monkeypatch, interrupted, phase, k)
    with pytest.raises(Interrupted) as stop:
        interrupted.fit()
    monkeypatch.undo()
    # The run stops right after the call the signal landed in; at an epoch's end that is after
    # both of its writes (last.ckpt, and best.ckpt, which epoch 1 always writes).
    assert calls["n"] == (k + 1 if phase == "checkpoint" else k)
    assert stop.value.signum == signal.SIGINT and stop.value.exit_code == 130
    assert stop.value.path == os.path.join(str(tmp_path), CHECKPOINT_NAME)
    _, meta = _final_checkpoint(tmp_path)
    if phase in ("forward", "backward", "update"):     # the step the signal landed in, completed
        assert meta["epoch"] * STEPS_PER_EPOCH + meta["step_in_epoch"] == k
    else:                                               # the end of epoch 1, validated and saved
        assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)
    resumed = _trainer(kind, opt, tmp_path)
    resumed.resume()
    resumed.fit()
    assert_same_checkpoint(straight, tmp_path)


def test_sigterm_is_handled_like_sigint(baselines, tmp_path, monkeypatch):
    trainer = _trainer("cnn", "adam", tmp_path)
    original = trainer.opt.step
    n = {"steps": 0}

    def step(*a, **kw):
        original(*a, **kw)
        n["steps"] += 1
        if n["steps"] == 3:
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(trainer.opt, "step", step)
    with pytest.raises(Interrupted) as stop:
        trainer.fit()
    monkeypatch.undo()
    assert stop.value.signum == signal.SIGTERM and stop.value.exit_code == 143
    resumed = _trainer("cnn", "adam", tmp_path)
    resumed.resume()
    resumed.fit()
    assert_same_checkpoint(baselines("cnn", "adam"), tmp_path)


def test_a_second_signal_stops_at_once_and_the_last_checkpoint_stays_whole(baselines, tmp_path, monkeypatch):
    """The second Ctrl-C while the first waits for the step to end: nothing is saved (the state
    is mid-step); the checkpoint of the end of epoch 1 stays, and resuming from it is exact."""
    trainer = _trainer("cnn", "sgd_momentum", tmp_path)
    original_backward = Plan.backward
    n = {"calls": 0}

    def backward(self, *a, **kw):
        original_backward(self, *a, **kw)
        n["calls"] += 1
        if n["calls"] == 6:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(Plan, "backward", backward)
    with pytest.raises(Interrupted) as stop:
        trainer.fit()
    monkeypatch.undo()
    assert stop.value.path is None
    _, meta = _final_checkpoint(tmp_path)
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 0)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    resumed = _trainer("cnn", "sgd_momentum", tmp_path)
    resumed.resume()
    resumed.fit()
    assert_same_checkpoint(baselines("cnn", "sgd_momentum"), tmp_path)


def test_handlers_are_restored_after_fit(tmp_path):
    def mine(signum, frame):
        pass
    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _trainer("cnn", "adam", tmp_path).fit()
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_without_a_checkpoint_directory_the_stop_says_nothing_was_saved(monkeypatch):
    lines = []
    source = CNN.format(opt=OPTIMIZERS["adam"])
    net, _ = compile_source(Source("cnn.net", source))
    train, val = _data("cnn")
    trainer = Trainer(Model(net, seed=0), TrainConfig.from_network(net), train, val, progress=False,
                      log=lines.append)
    original = trainer.opt.step

    def step(*a, **kw):
        original(*a, **kw)
        signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(trainer.opt, "step", step)
    with pytest.raises(Interrupted) as stop:
        trainer.fit()
    assert stop.value.path is None and trainer.step_in_epoch == 1
    assert "nothing saved" in lines[-1]
