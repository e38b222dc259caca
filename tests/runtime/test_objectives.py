"""Several objectives (runtime/objectives.py): a GAN's discriminator and generator steps each
move only their own parameters, the generator's gradient (through the frozen discriminator)
equals torch's, and an interrupted run resumes bit-exactly with both optimizer states."""
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.data import Dataset
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer

pytestmark = pytest.mark.slow       # Numba compiles and training steps

BLOCKS = """
block tinygen() {
  deconv(3, 4x4) -> relu -> deconv(1, 2x2, stride = 2) -> sigmoid      # [1, 8, 8]
}
block tinydisc() {
  conv(2, 3x3, stride = 2, pad = 1) -> leaky_relu(0.2) -> flatten -> dense(1)
}
"""
OBJECTIVES = """
fake = z -> gen: tinygen()
d_real = image -> disc: tinydisc()
d_fake = fake -> detach -> disc
d_gen = fake -> disc
ones = d_real -> detach -> scale(0) -> shift(1)
zeros = d_real -> detach -> scale(0)
output fake
loss d: bce(d_real, ones) + bce(d_fake, zeros) trains disc
loss g: bce(d_gen, ones) trains gen
train {
  optimizer adam(lr = 1e-2, beta1 = 0.5)
  alternate d, g
}
"""
# The noise as an input, so that torch can be fed the same.
GAN_Z = "network tinygan\ninput z: [4, 1, 1]\ninput image: [1, 8, 8]\n" + BLOCKS + OBJECTIVES
# The noise drawn from the run's stream, as models/dcgan.net does.
GAN_NOISE = ("network tinygan\ninput image: [1, 8, 8]\n" + BLOCKS
             + "z = image -> flatten -> slice(axis = 1, start = 0, end = 4) -> reshape(4, 1, 1) -> gaussian_like\n"
             + OBJECTIVES)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 4, 1, 1)).astype(np.float32),
            rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32))


def _trainer(source, arrays, checkpoint_dir=None, epochs=1, batch=8):
    net, _ = compile_source(Source("tinygan.net", source))
    cfg = TrainConfig.from_network(net, epochs=epochs, batch=batch, seed=0)
    return Trainer(Model(net, seed=0), cfg, Dataset(arrays=arrays, name="arrays"), None, progress=False,
                   checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir), log=lambda s: None)


def _changed(before, after):
    return sorted(k for k in before if not np.array_equal(before[k], after[k]))


def test_each_step_moves_only_its_own_parameters():
    z, image = _data(8)
    t = _trainer(GAN_Z, {"z": z, "image": image})
    feeds = t._feeds({"z": z, "image": image})
    p0 = {k: v.copy() for k, v in t.model.params.items()}
    t.objectives.step_one("d", feeds, 1e-2)
    p1 = {k: v.copy() for k, v in t.model.params.items()}
    assert _changed(p0, p1) == sorted(k for k in p0 if k.startswith("disc."))
    t.objectives.step_one("g", feeds, 1e-2)
    p2 = {k: v.copy() for k, v in t.model.params.items()}
    assert _changed(p1, p2) == sorted(k for k in p0 if k.startswith("gen."))


def _torch_losses(params, z, image):
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}

    def gen(x):
        x = F.relu(F.conv_transpose2d(x, p["gen.deconv1.weight"], p["gen.deconv1.bias"]))
        return torch.sigmoid(F.conv_transpose2d(x, p["gen.deconv2.weight"], p["gen.deconv2.bias"], stride=2))

    def disc(x):
        x = F.leaky_relu(F.conv2d(x, p["disc.conv1.weight"], p["disc.conv1.bias"], stride=2, padding=1), 0.2)
        return F.linear(x.flatten(1), p["disc.dense1.weight"], p["disc.dense1.bias"])

    fake = gen(torch.tensor(z))
    real = disc(torch.tensor(image))
    d = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
         + F.binary_cross_entropy_with_logits(disc(fake.detach()), torch.zeros_like(real)))
    g = F.binary_cross_entropy_with_logits(disc(fake), torch.ones_like(real))
    return p, d, g


@pytest.mark.parametrize("name", ["d", "g"])
def test_each_objectives_gradient_equals_torchs(name):
    z, image = _data(8)
    t = _trainer(GAN_Z, {"z": z, "image": image})
    m = t.model
    fed = m._feeds(t._feeds({"z": z, "image": image}))
    plan = t.objectives.plan(name, *m._bindings(fed))
    plan.set_inputs(fed)
    m.ctx.training = True
    plan.forward(m.ctx)
    value = plan.loss_value()
    plan.backward(m.ctx)
    grads = {k: m.device.to_host(v) for k, v in plan.param_grads.items()}
    p, d, g = _torch_losses(m.params, z, image)
    loss = {"d": d, "g": g}[name]
    loss.backward()
    assert value == pytest.approx(loss.item(), rel=1e-5)
    own = "disc." if name == "d" else "gen."
    assert sorted(grads) == sorted(k for k in p if k.startswith(own))      # the other group is frozen
    for k, gk in grads.items():
        np.testing.assert_allclose(gk, p[k].grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=k)


def test_an_interrupted_run_resumes_bit_exactly_with_both_optimizer_states(tmp_path, monkeypatch):
    _, image = _data(64)
    straight = _trainer(GAN_NOISE, {"image": image}, tmp_path / "a", epochs=2, batch=16)
    history = straight.fit()
    assert set(history[-1]["train_terms"]) == {"d", "g"}
    arrays, _ = load_checkpoint(str(tmp_path / "a" / "last.ckpt"))
    assert any(k.startswith("opt/d/") for k in arrays) and any(k.startswith("opt/g/") for k in arrays)
    interrupted = _trainer(GAN_NOISE, {"image": image}, tmp_path / "b", epochs=2, batch=16)
    calls = {"n": 0}
    original = interrupted._step

    def step_then_interrupt(*a, **kw):     # Ctrl-C in step 3 of 8: it takes effect after that step
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return original(*a, **kw)

    monkeypatch.setattr(interrupted, "_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = _trainer(GAN_NOISE, {"image": image}, tmp_path / "b", epochs=2, batch=16)
    resumed.resume()
    resumed.fit()
    for k, v in straight.model.params.items():
        assert np.array_equal(resumed.model.params[k], v), k
    for k, v in straight.opt.state_dict().items():
        assert np.array_equal(resumed.opt.state_dict()[k], v), k
