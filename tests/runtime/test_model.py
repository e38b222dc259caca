"""Model's ways of reading a network's inside: with_outputs and layer_outputs."""
import numpy as np

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.model import Model

NET = """network small
input image: [1, 8, 8]
input label: int
logits = image
  -> conv1: conv(4, 3x3, pad = 1) -> bn1: batchnorm -> relu1: relu
  -> pool1: maxpool(2) -> flatten -> fc: dense(3)
loss cross_entropy(logits, label)
"""


def _model():
    net, _ = compile_source(Source("small.net", NET))
    return Model(net, seed=0)


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_layer_outputs_match_an_exposed_forward_and_keep_one_plan_per_batch():
    """layer_outputs gives what with_outputs' forward gives, and a caller going through data in
    chunks of one size builds one plan, not one per chunk (dslc inspect's tsne and patches)."""
    model = _model()
    x = _images(10)
    chunks = [model.layer_outputs(["conv1", "pool1"], image=x[i:i + 4]) for i in range(0, 10, 4)]
    exposed = model.with_outputs(["conv1", "pool1"]).forward(image=x)
    for layer in ("conv1", "pool1"):
        np.testing.assert_allclose(np.concatenate([c[layer] for c in chunks]), exposed[layer], rtol=1e-6)
    _, copy = model._exposed
    assert len(copy._plans) == 2        # batches of 4 and the last 2
    assert model._plans == {}           # the model's own plans are untouched
    # another list of layers replaces the kept copy: one copy's workspaces are held at a time
    model.layer_outputs(["fc"], image=x[:4])
    layers, other = model._exposed
    assert layers == ("fc",) and other is not copy


def test_layer_outputs_follow_parameter_changes():
    """The kept copy shares the model's parameters: a weight set after a first call shows."""
    model = _model()
    x = _images(2)
    before = model.layer_outputs(["conv1"], image=x)["conv1"]
    model.set_param("conv1.bias", model.params["conv1.bias"] + 1.0)
    after = model.layer_outputs(["conv1"], image=x)["conv1"]
    np.testing.assert_allclose(after, before + 1.0, rtol=1e-5, atol=1e-5)


def test_kernel_calls_make_the_plan_s_calls():
    """Plan.kernel_calls (per-kernel profiles) runs the calls forward() and backward() make:
    the same logits and the same parameter gradients, and it names each call's step."""
    model = _model()
    x, y = _images(4), np.array([0, 1, 2, 1])
    assert model.last_plan is None
    logits = model.forward(training=False, image=x)["logits"]
    plan = model.last_plan
    calls = plan.kernel_calls(model.ctx, backward=False)
    assert {p for p, _, _ in calls} == {"forward"}
    # conv1 absorbs bn1 and relu1 in an inference plan
    assert [s.node for _, s, _ in calls][0] == "conv1" and calls[0][1].kernel.describe().endswith("+batchnorm +relu")
    (output,) = model.net.outputs
    plan.out[output].fill(0.0)
    for _, _, run in calls:
        run()
    np.testing.assert_array_equal(plan.out[output], logits)

    model.forward(training=True, image=x, label=y)
    train_plan = model.last_plan
    train_plan.backward(model.ctx)
    grads = {k: v.copy() for k, v in train_plan.param_grads.items()}
    calls = train_plan.kernel_calls(model.ctx)
    assert [p for p, _, _ in calls].count("backward") > 0
    for g in train_plan.param_grads.values():
        g.fill(0.0)
    for _, _, run in calls:
        run()
    for name, g in train_plan.param_grads.items():
        np.testing.assert_allclose(g, grads[name], rtol=1e-6, atol=1e-7)
