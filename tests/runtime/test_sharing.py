"""Weight sharing at runtime: a discriminator applied to real and generated images is one set of
parameters. Forward binds both applications to the same arrays, and backward adds the gradient
of every use into one buffer: the loss and every gradient equal a torch module called twice."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.model import Model

pytestmark = pytest.mark.slow      # Numba compiles the kernels on first use

GAN = """network gan
input z: [6]
input image: [10]
input real_t: [1]
input fake_t: [1]

block discriminator(h = 8) {
  dense(h) -> tanh -> dense(1)
}

fake = z -> gen: (dense(8) -> relu -> dense(10) -> tanh)
d_real = image -> disc: discriminator()
d_fake = fake -> disc
output d_real, d_fake
loss bce(d_real, real_t) + 0.5 * bce(d_fake, fake_t)
"""


def _model(source=GAN, seed=0):
    net, _ = compile_source(Source("gan.net", source))
    return Model(net, seed=seed)


def _feeds(rng, n=5):
    return {"z": rng.standard_normal((n, 6)).astype(np.float32),
            "image": rng.standard_normal((n, 10)).astype(np.float32),
            "real_t": np.ones((n, 1), np.float32), "fake_t": np.zeros((n, 1), np.float32)}


def _torch_gan(params, feeds):
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    x = {k: torch.tensor(v, dtype=torch.float64) for k, v in feeds.items()}

    def disc(h):       # one module, called twice
        return F.linear(torch.tanh(F.linear(h, p["disc.dense1.weight"], p["disc.dense1.bias"])),
                        p["disc.dense2.weight"], p["disc.dense2.bias"])

    fake = torch.tanh(F.linear(F.relu(F.linear(x["z"], p["gen.0.weight"], p["gen.0.bias"])),
                               p["gen.2.weight"], p["gen.2.bias"]))
    loss = (F.binary_cross_entropy_with_logits(disc(x["image"]), x["real_t"])
            + 0.5 * F.binary_cross_entropy_with_logits(disc(fake), x["fake_t"]))
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in p.items()}


def test_one_parameter_set_for_both_applications():
    m = _model()
    assert sorted(m.params) == ["disc.dense1.bias", "disc.dense1.weight", "disc.dense2.bias", "disc.dense2.weight",
                                "gen.0.bias", "gen.0.weight", "gen.2.bias", "gen.2.weight"]
    assert m.net.node("disc_2.dense1").shares == "disc.dense1"


def test_loss_and_gradients_equal_torch_module_called_twice():
    m = _model()
    feeds = _feeds(np.random.default_rng(1))
    out = m.forward(training=True, **feeds)
    grads = m.backward()
    loss, want = _torch_gan(m.params, feeds)
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    assert sorted(grads) == sorted(want)
    for k in want:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    # the shared gradient is the sum of both uses: neither use alone gives it
    assert np.abs(grads["disc.dense1.weight"]).max() > 0


def test_gradients_are_the_same_in_a_second_step():
    """The accumulation starts afresh each backward (the first use writes, later uses add)."""
    m = _model()
    feeds = _feeds(np.random.default_rng(2))
    m.forward(training=True, **feeds)
    first = m.backward()
    m.forward(training=True, **feeds)
    second = m.backward()
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


def test_a_shared_op_instance():
    src = """network tied
input x: [5]
input t: [3]
a = x -> enc: dense(3)
b = x -> relu -> enc
loss mse(a, t) + mse(b, t)
"""
    m = _model(src)
    assert sorted(m.params) == ["enc.bias", "enc.weight"]
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    m.forward(training=True, x=x, t=t)
    grads = m.backward()
    w = torch.tensor(m.params["enc.weight"], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(m.params["enc.bias"], dtype=torch.float64, requires_grad=True)
    xt, tt = torch.tensor(x, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    loss = F.mse_loss(F.linear(xt, w, bias), tt) + F.mse_loss(F.linear(F.relu(xt), w, bias), tt)
    loss.backward()
    np.testing.assert_allclose(grads["enc.weight"], w.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["enc.bias"], bias.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_save_load_keeps_sharing(tmp_path):
    m = _model()
    feeds = _feeds(np.random.default_rng(4), n=8)
    before = m.forward(**feeds)
    m.save(tmp_path / "gan.ckpt")
    m2 = Model.load(tmp_path / "gan.ckpt")
    assert sorted(m2.params) == sorted(m.params)
    assert m2.net.node("disc_2.dense2").shares == "disc.dense2"
    after = m2.forward(**feeds)
    np.testing.assert_array_equal(before["d_fake"], after["d_fake"])
    # a change to the one array changes both applications' outputs
    m2.set_param("disc.dense2.bias", m2.params["disc.dense2.bias"] + 1.0)
    moved = m2.forward(**feeds)
    np.testing.assert_allclose(moved["d_real"], before["d_real"] + 1.0, rtol=1e-5)
    np.testing.assert_allclose(moved["d_fake"], before["d_fake"] + 1.0, rtol=1e-5)


def test_a_shared_conv_applied_twice_to_one_input():
    """Both applications read the same tensor (where a plan fuses sibling calls, the follower's
    gradient is added in by the leader's call)."""
    src = """network siblings
input x: [3, 5, 5]
input t: [4, 5, 5]
a = x -> enc: conv(4, 1x1)
b = x -> enc -> tanh
loss mse(a, t) + mse(b, t)
"""
    m = _model(src)
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((2, 3, 5, 5)).astype(np.float32), rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    out = m.forward(training=True, x=x, t=t)
    grads = m.backward()
    w = torch.tensor(m.params["enc.weight"], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(m.params["enc.bias"], dtype=torch.float64, requires_grad=True)
    xt, tt = torch.tensor(x, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    loss = F.mse_loss(F.conv2d(xt, w, bias), tt) + F.mse_loss(torch.tanh(F.conv2d(xt, w, bias)), tt)
    loss.backward()
    assert out["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    np.testing.assert_allclose(grads["enc.weight"], w.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["enc.bias"], bias.grad.numpy(), rtol=1e-4, atol=1e-6)
