"""Gradients with respect to inputs (net.backward(wrt=...)) against torch autograd: in eval mode
(batchnorm on running statistics), from a class score (saliency without labels) and from the
loss, with every parameter frozen, and through fan-out (a tensor read by several steps)."""
import numpy as np
import pytest
import torch

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.model import Model

from .test_plan import FAN_OUT
from .torch_reference import OPS

SMALL_CNN = """
network small_cnn
input image: [1, 8, 8]
input label: int
logits = image
  -> conv1: conv(4, 3x3, pad = 1) -> bn1: batchnorm -> relu -> maxpool(2x2)
  -> flatten -> fc1: dense(6) -> relu -> dropout(0.5) -> fc2: dense(3)
loss cross_entropy(logits, label)
"""


def _model(source, seed=0):
    net, _ = compile_source(Source("grads.net", source))
    model = Model(net, seed=seed)
    rng = np.random.default_rng(seed + 1)
    # running statistics away from (0, 1), so that eval-mode batchnorm is not the identity
    for name in model.specs:
        if name.endswith("running_mean"):
            model.set_param(name, rng.standard_normal(model.params[name].shape) * 0.3)
        elif name.endswith("running_var"):
            model.set_param(name, rng.uniform(0.5, 2.0, model.params[name].shape))
    return model


def _torch_eval(net, params, feeds, wrt, output=None, index=None):
    """d(scalar)/d(wrt inputs) by torch autograd in eval mode (float64): the scalar is the loss, or
    the sum over the batch of output[:, index]."""
    ops = dict(OPS)
    ops["batchnorm"] = lambda xs, p, a: torch.nn.functional.batch_norm(
        xs[0], p["running_mean"], p["running_var"], p["weight"], p["bias"], False, a["momentum"], a["eps"])
    tparams = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in params.items()}
    vals = {}
    for node in net.nodes():
        if node.is_input:
            if node.name not in feeds:
                continue
            v = feeds[node.name]
            vals[node.name] = (torch.tensor(v) if v.dtype.kind == "i"
                               else torch.tensor(v.astype(np.float64), requires_grad=node.name in wrt))
            continue
        if not all(i in vals for i in node.inputs):
            continue            # the loss, when no labels were fed
        p = {k: tparams[f"{node.name}.{k}"] for k in node.params}
        vals[node.name] = ops[node.op]([vals[i] for i in node.inputs], p, node.attrs)
    scalar = vals[net.loss] if output is None else vals[net.tensors[output]][:, index].sum()
    scalar.backward()
    return {name: vals[name].grad.numpy() for name in wrt}


def test_saliency_of_a_class_score_in_eval_mode_matches_torch():
    model = _model(SMALL_CNN)
    model.freeze("conv1", "bn1", "fc1", "fc2")          # nothing trainable: the input still gets its gradient
    rng = np.random.default_rng(3)
    image = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    out = model.forward(image=image)
    before = {k: v.copy() for k, v in model.params.items()}
    for k in range(3):
        got = model.backward(wrt=["image"], output="logits", index=k)
        want = _torch_eval(model.net, model.params, {"image": image}, ["image"], "logits", k)
        assert got["image"].shape == image.shape
        np.testing.assert_allclose(np.abs(got["image"]), np.abs(want["image"]), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["image"], want["image"], atol=1e-4, rtol=0)
    # an eval-mode input gradient leaves the parameters (running statistics included) alone,
    # and the forward's outputs are those of the rerun
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
    np.testing.assert_allclose(model.forward(image=image)["logits"], out["logits"], atol=1e-6)


def test_gradient_of_the_loss_with_respect_to_the_input_matches_torch():
    model = _model(SMALL_CNN, seed=4)
    rng = np.random.default_rng(5)
    feeds = {"image": rng.standard_normal((4, 1, 8, 8)).astype(np.float32),
             "label": rng.integers(0, 3, 4).astype(np.int64)}
    model.forward(**feeds)
    got = model.backward(wrt=["image"])
    want = _torch_eval(model.net, model.params, feeds, ["image"])
    np.testing.assert_allclose(got["image"], want["image"], atol=1e-5, rtol=0)
    # a custom seed: d(sum(grad * logits)) / d image is linear in the seed
    seed = rng.standard_normal((4, 3)).astype(np.float32)
    combined = model.backward(wrt=["image"], output="logits", grad=seed)["image"]
    parts = sum(seed[:, k].reshape(4, 1, 1, 1) * model.backward(wrt="image", output="logits", index=k)["image"]
                for k in range(3))
    np.testing.assert_allclose(combined, parts, atol=1e-5, rtol=0)


def test_input_gradient_through_fan_out_matches_torch():
    # FAN_OUT reads its stem's output five times (residual adds, concat, an auxiliary head)
    model = _model(FAN_OUT, seed=2)
    rng = np.random.default_rng(7)
    feeds = {"image": rng.standard_normal((3, 3, 6, 6)).astype(np.float32),
             "label": rng.integers(0, 5, 3).astype(np.int64)}
    model.forward(**feeds)
    got = model.backward(wrt=["image"])
    want = _torch_eval(model.net, model.params, feeds, ["image"])
    np.testing.assert_allclose(got["image"], want["image"], atol=1e-5, rtol=0)


def test_parameter_gradients_after_an_input_gradient_are_unchanged():
    model = _model(SMALL_CNN)
    rng = np.random.default_rng(9)
    feeds = {"image": rng.standard_normal((4, 1, 8, 8)).astype(np.float32),
             "label": rng.integers(0, 3, 4).astype(np.int64)}
    model.ctx.rng = np.random.default_rng(0)
    model.forward(training=True, **feeds)
    want = model.backward()
    model.ctx.rng = np.random.default_rng(0)
    model.forward(training=True, **feeds)
    stats = {k: v.copy() for k, v in model.params.items() if "running" in k}
    model.backward(wrt=["image"])           # reruns the forward: the running statistics stay as they were
    for k, v in stats.items():
        np.testing.assert_array_equal(model.params[k], v)
    got = model.backward()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (dict(wrt=["label"], output="logits", index=0), "integer inputs have no gradient"),
    (dict(wrt=["imag"], output="logits", index=0), "not an input"),
    (dict(wrt=["image"], output="logit", index=0), "not an output"),
    (dict(wrt=["image"], output="logits", index=3), "out of range"),
    (dict(wrt=["image"], output="logits", grad=np.ones((2, 2))), "grad has shape"),
    (dict(wrt=["image"]), "labels too"),
    (dict(index=1), "name the output"),
])
def test_input_gradient_errors_name_the_fix(call, message):
    model = _model(SMALL_CNN)
    model.forward(image=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(RuntimeUserError, match=message) as e:
        model.backward(**call)
    assert e.value.hint
