"""Exponential-moving-average weights (runtime/ema.py): the average follows its recurrence, is
saved and resumed with the run, and `dslc eval` scores it."""
import json

import numpy as np
import pytest

from dslc.cli import main
from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.ema import EMA
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.model import Model

TINY = """network tiny(classes = 3)

input x: [4]
input label: int

logits = x -> fc: dense(classes)

loss cross_entropy(logits, label)

train {
  optimizer sgd(lr = 0.1)
  epochs 2
  batch 8
  ema 0.9
}
"""


def _model():
    net, _ = compile_source(Source("tiny.net", TINY))
    return Model(net)


def test_update_follows_the_recurrence_with_its_ramp():
    m = _model()
    ema = EMA(m, 0.9)
    w0 = m.params["fc.weight"].copy()
    expected = w0.astype(np.float64)
    rng = np.random.default_rng(0)
    for n in range(100):
        w = rng.standard_normal(w0.shape).astype(np.float32)
        m.set_param("fc.weight", w)
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))        # the ramp: 0.1, 0.18, ... then 0.9
        expected = d * expected + (1 - d) * w
    np.testing.assert_allclose(ema.avg["fc.weight"], expected, rtol=1e-5, atol=1e-6)
    assert ema.steps == 100 and ema.current_decay() == 0.9     # (1 + n) / (10 + n) passes 0.9 at n = 81


def test_applied_swaps_the_averages_in_and_back():
    m = _model()
    ema = EMA(m, 0.5)
    trained = m.params["fc.weight"].copy()
    ema.avg["fc.weight"][:] = 7.0
    with ema.applied():
        assert np.all(m.params["fc.weight"] == 7.0)
    np.testing.assert_array_equal(m.params["fc.weight"], trained)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, float("nan"), True])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    net, _ = compile_source(Source("tiny.net", TINY.replace("  ema 0.9\n", "")))
    with pytest.raises(RuntimeUserError, match="ema must be a decay between 0 and 1"):
        Model(net).fit(np.zeros((8, 4), np.float32), np.zeros(8, np.int64), epochs=1, progress=False, ema=decay)


def test_the_train_sections_ema_is_checked_by_the_compiler():
    from dslc.diagnostics import CompileError
    with pytest.raises(CompileError, match="ema"):
        compile_source(Source("tiny.net", TINY.replace("ema 0.9", "ema 2")))


@pytest.mark.slow
def test_saved_resumed_and_scored_by_eval(tmp_path, capsys):
    net = tmp_path / "tiny.net"
    net.write_text(TINY)
    run = ["run", str(net), "--data", "synthetic", "--limit", "64", "--quiet"]
    assert main(run + ["--checkpoint", str(tmp_path / "a"), "--metrics", str(tmp_path / "m.jsonl")]) == 0
    said = capsys.readouterr().err         # the run line and epoch lines go to stderr
    assert ", ema 0.9, " in said and "ema 0.9 weights: val loss" in said
    arrays, _ = load_checkpoint(str(tmp_path / "a" / "last.ckpt"))
    assert int(arrays["ema_steps"]) == 2 * (51 // 8)
    assert not np.allclose(arrays["ema/fc.weight"], arrays["param/fc.weight"])
    # eval scores the averages: its loss on the run's validation split is the run's ema_val_loss
    assert main(["eval", str(net), "--weights", str(tmp_path / "a" / "last.ckpt"), "--format", "json"]) == 0
    captured = capsys.readouterr()
    scored = json.loads(captured.out)
    last = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    assert scored["loss"] == pytest.approx(last["ema_val_loss"], rel=1e-6)
    assert scored["loss"] != pytest.approx(last["val_loss"], rel=1e-6)
    assert "exponential-moving-average (--ema) weights" in captured.err
    # an interrupted-and-resumed run ends with the same averages as the straight one
    assert main(run + ["--checkpoint", str(tmp_path / "b"), "--epochs", "1"]) == 0
    assert main(run + ["--checkpoint", str(tmp_path / "b"), "--epochs", "2", "--resume"]) == 0
    resumed, _ = load_checkpoint(str(tmp_path / "b" / "last.ckpt"))
    np.testing.assert_array_equal(resumed["ema/fc.weight"], arrays["ema/fc.weight"])
    assert int(resumed["ema_steps"]) == int(arrays["ema_steps"])
