"""The learning-rate range test (runtime/lr_find.py, `dslc run --lr-find`): the rate rises
exponentially, the loss is recorded per step, the model is left as it was and nothing is saved."""
import os

import numpy as np
import pytest

from dslc.cli import main
from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.data import Dataset
from dslc.runtime.lr_find import lr_range_test
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig

TINY = """network tiny(classes = 3)

input x: [4]
input label: int

logits = x -> fc: dense(classes)

loss cross_entropy(logits, label)

train {
  optimizer sgd(lr = 0.1)
  batch 8
}
"""


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    return x, y


def test_the_rate_rises_exponentially_and_the_model_is_left_as_it_was():
    net, _ = compile_source(Source("tiny.net", TINY))
    model = Model(net)
    before = {k: v.copy() for k, v in model.params.items()}
    x, y = _data()
    cfg = TrainConfig.from_network(net)
    r = lr_range_test(model, cfg, Dataset(x, y, name="tiny"), 1e-4, 1e3, 40)
    lrs = np.array(r["lr"])
    assert lrs[0] == pytest.approx(1e-4)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e3 / 1e-4) ** (1 / 39), rtol=1e-9)
    assert len(r["loss"]) == len(lrs) and all(np.isfinite(r["smoothed"]))
    assert r["lr"][0] <= r["suggested"] <= r["lowest"] <= r["lr"][-1]
    # a rate of hundreds on a linear softmax diverges: the test stops before its 40 steps
    assert r["stopped"] is not None and len(lrs) < 40
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_useful_rates_lower_the_loss_and_the_suggestion_is_one():
    net, _ = compile_source(Source("tiny.net", TINY))
    x, y = _data(256)
    r = lr_range_test(Model(net), TrainConfig.from_network(net), Dataset(x, y, name="tiny"), 1e-6, 10.0, 60)
    s = np.array(r["smoothed"])
    assert min(s) < 0.9 * s[0]                      # larger ones train
    assert 1e-3 < r["suggested"] < 10


@pytest.mark.slow
def test_the_command_prints_and_draws_and_saves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.net").write_text(TINY)
    assert main(["run", "tiny.net", "--data", "synthetic", "--limit", "200", "--lr-find", "lr.png",
                 "--lr-find-steps", "30"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{'lr':>10}  {'loss':>8}  {'smoothed':>8}")
    assert "suggested lr " in out and "wrote lr.png" in out
    assert (tmp_path / "lr.png").stat().st_size > 1000
    assert sorted(os.listdir(tmp_path)) == ["lr.png", "tiny.net"]      # no runs/ directory, no checkpoint


@pytest.mark.parametrize("extra, message", [
    (["--checkpoint", "d"], "--lr-find trains nothing to keep: --checkpoint does not go with it"),
    (["--lr-find-steps", "2"], "--lr-find-steps 2: give 5 or more"),
])
def test_flags_that_do_not_fit_are_refused(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.net").write_text(TINY)
    assert main(["run", "tiny.net", "--data", "synthetic", "--lr-find", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_the_lr_find_command_is_run_with_lr_find(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.net").write_text(TINY)
    assert main(["lr-find", "tiny.net", "--data", "synthetic", "--limit", "200", "-o", "lr.png",
                 "--steps", "30"]) == 0
    out = capsys.readouterr().out
    assert "suggested lr " in out and "wrote lr.png" in out
    assert sorted(os.listdir(tmp_path)) == ["lr.png", "tiny.net"]


def test_the_lr_find_command_names_its_own_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.net").write_text(TINY)
    assert main(["lr-find", "tiny.net", "--data", "synthetic", "--steps", "2"]) == 2
    assert "--steps 2: give 5 or more" in capsys.readouterr().err
