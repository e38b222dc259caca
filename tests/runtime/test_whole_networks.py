"""Whole blocks against PyTorch with the same weights: the plan's schedule, fan-out accumulation and BPTT.

Each network is compiled from source, run forward + backward by dslc's CPU plan, and by the
torch interpreter in torch_reference.py; loss and every parameter gradient must agree.
"""
import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.model import Model

from .torch_reference import run_torch

RESNET_BASIC = """
network basic_block
input image: [8, 8, 8]
input label: int
block basic(c, stride = 1) {
  residual {
    conv(c, 3x3, stride = stride, pad = 1, bias = false) -> batchnorm -> relu
    -> conv(c, 3x3, pad = 1, bias = false) -> batchnorm
  } shortcut auto
  -> relu
}
logits = image -> basic(8) -> basic(16, stride = 2) -> avgpool(global) -> dense(5)
loss cross_entropy(logits, label)
"""

RESNET_BOTTLENECK = """
network bottleneck_block
input image: [8, 6, 6]
input label: int
block bottleneck(c, stride = 1) {
  residual {
    conv(c, 1x1, bias = false) -> batchnorm -> relu
    -> conv(c, 3x3, stride = stride, pad = 1, bias = false) -> batchnorm -> relu
    -> conv(4 * c, 1x1, bias = false) -> batchnorm
  } shortcut auto
  -> relu
}
logits = image -> bottleneck(2) -> bottleneck(4, stride = 2) -> avgpool(global) -> dense(4)
loss cross_entropy(logits, label)
"""

INCEPTION = """
network inception_module
input image: [6, 7, 7]
input label: int
block inception(c1, c3r, c3, c5r, c5, pp) {
  concat {
      conv(c1, 1x1) -> relu
    | conv(c3r, 1x1) -> relu -> conv(c3, 3x3, pad = 1) -> relu
    | conv(c5r, 1x1) -> relu -> conv(c5, 5x5, pad = 2) -> relu
    | maxpool(3x3, stride = 1, pad = 1) -> conv(pp, 1x1) -> relu
  }
}
logits = image -> inception(4, 3, 5, 2, 3, 3) -> avgpool(global) -> dense(3)
loss cross_entropy(logits, label)
"""

DENSE_BLOCK = """
network dense_block
input image: [4, 6, 6]
input label: int
block dense_layer(growth) {
  concat { identity | batchnorm -> relu -> conv(4 * growth, 1x1, bias = false) -> batchnorm -> relu
                      -> conv(growth, 3x3, pad = 1, bias = false) }
}
logits = image -> dense_layer(3) * 3 -> batchnorm -> relu -> avgpool(global) -> dense(3)
loss cross_entropy(logits, label)
"""

LSTM = """
network lstm_lm(vocab = 11)
input text: int[T]
input next: int[T]
logits = text -> embed(vocab, 6) -> lstm(7, layers = 2) -> dense(vocab)
loss cross_entropy(logits, next)
"""

GRU = LSTM.replace("lstm(7, layers = 2)", "gru(7, layers = 2)").replace("lstm_lm", "gru_lm")

SKIP_AND_HEADS = """
network two_heads
input image: [3, 8, 8]
input label: int
stem = image -> conv(4, 3x3, pad = 1) -> relu
deep = stem -> conv(4, 3x3, pad = 1) -> relu -> add(stem) -> maxpool(2x2)
main = deep -> flatten -> dense(5)
aux = stem -> avgpool(global) -> dense(5)
loss cross_entropy(main, label) + 0.3 * cross_entropy(aux, label)
"""


def _feeds(net, rng, batch=3, T=12):
    g = net.graph
    feeds = {}
    for name in net.inputs:
        t = g.nodes[name]["node"].type
        shape = tuple(batch if d == "N" else (T if isinstance(d, str) else d) for d in t.shape)
        if t.dtype == "int64":
            high = 3
            for n in g.successors(name):
                if g.nodes[n]["node"].op == "embed":
                    high = g.nodes[n]["node"].attrs["vocab"]
                elif g.nodes[n]["node"].op in ("cross_entropy", "hinge"):
                    logits = g.nodes[g.nodes[n]["node"].inputs[0]]["node"].type
                    high = logits.shape[g.nodes[n]["node"].attrs["class_axis"]]
            feeds[name] = rng.integers(0, high, size=shape).astype(np.int64)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("source", [RESNET_BASIC, RESNET_BOTTLENECK, INCEPTION, DENSE_BLOCK, LSTM, GRU, SKIP_AND_HEADS],
                         ids=["resnet_basic", "resnet_bottleneck", "inception", "dense_block", "lstm_T12", "gru_T12",
                              "skip_and_two_heads"])
def test_loss_and_every_gradient_match_torch(source):
    net, _ = compile_source(Source("test.net", source))
    model = Model(net, seed=1)
    rng = np.random.default_rng(0)
    feeds = _feeds(net, rng)
    before = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(training=True, **feeds)
    grads = model.backward()
    ref_loss, _, ref_grads = run_torch(net, before, feeds)
    assert out["loss"] == pytest.approx(ref_loss, rel=1e-4, abs=1e-5)
    trainable = [k for k in model.trainable_names()]
    assert sorted(grads) == sorted(trainable)
    for k in trainable:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=2e-3, atol=2e-5, err_msg=k)


def test_frozen_parameters_get_no_gradient_and_do_not_move():
    net, _ = compile_source(Source("test.net", RESNET_BASIC))
    model = Model(net, seed=1)
    model.freeze("basic1")
    feeds = _feeds(net, np.random.default_rng(0))
    model.forward(training=True, **feeds)
    grads = model.backward()
    assert grads and not any(k.startswith("basic1.") for k in grads)
    assert any(k.startswith("basic2.") for k in grads)


def test_inference_without_labels_returns_named_outputs():
    net, _ = compile_source(Source("test.net", SKIP_AND_HEADS))
    model = Model(net)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = model.forward(image=x)
    assert set(out) == {"main", "aux"}
    assert out["main"].shape == (2, 5)
