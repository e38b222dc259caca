"""A variational autoencoder written in the language: `sample` (the reparameterisation trick)
between an MLP encoder and decoder, and a loss of reconstruction plus `kl_gaussian`.

Its loss and every parameter gradient equal a torch module's with the same weights and the same
noise (eps is the first draw of the model's seeded stream, np.random.default_rng(seed), which
only `sample` draws from here), in training; in evaluation `sample` is mu; and it trains
through the Python API with the loss falling.
"""
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.data import Dataset
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer

pytestmark = pytest.mark.slow      # Numba compiles the kernels on first use

LATENT = 4

VAE = f"""network vae(latent = {LATENT})
input image: [16]
input target: [16]
h = image -> enc: dense(12) -> relu
mu = h -> mu: dense(latent)
logvar = h -> logvar: dense(latent)
z = sample(mu, logvar)
recon = z -> dec1: dense(12) -> relu -> dec2: dense(16)    # logits of each pixel
output recon, mu
loss bce(recon, target) - 0.5 * mse(recon, target, weight) + 0.5 * kl_gaussian(mu, logvar)
input weight: []
"""


def _net():
    net, warnings = compile_source(Source("vae.net", VAE))
    return net


def _torch_vae(params, image, target, weight, eps):
    """The same network in torch: loss and parameter gradients."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    x, t, w = (torch.tensor(a, dtype=torch.float64) for a in (image, target, weight))
    h = F.relu(F.linear(x, p["enc.weight"], p["enc.bias"]))
    mu = F.linear(h, p["mu.weight"], p["mu.bias"])
    logvar = F.linear(h, p["logvar.weight"], p["logvar.bias"])
    z = mu + torch.exp(0.5 * logvar) * torch.tensor(eps, dtype=torch.float64) if eps is not None else mu
    recon = F.linear(F.relu(F.linear(z, p["dec1.weight"], p["dec1.bias"])), p["dec2.weight"], p["dec2.bias"])
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / x.shape[0]
    masked_mse = (w[:, None] * (recon - t) ** 2).mean()
    loss = F.binary_cross_entropy_with_logits(recon, t) - 0.5 * masked_mse + 0.5 * kl
    loss.backward()
    return float(loss.detach()), recon.detach().numpy(), {k: v.grad.numpy() for k, v in p.items()}


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.random((n, 16)) < 0.3).astype(np.float32)
    return image, image.copy(), (rng.random(n) < 0.7).astype(np.float32)


def test_loss_and_every_gradient_match_torch_with_the_same_noise():
    seed = 5
    model = Model(_net(), seed=seed)
    image, target, weight = _data(6)
    params = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(training=True, image=image, target=target, weight=weight)
    grads = model.backward()
    # The model's stream is np.random.default_rng(seed); sample's eps is its first draw.
    eps = np.random.default_rng(seed).standard_normal((6, LATENT), dtype=np.float32)
    ref_loss, ref_recon, ref_grads = _torch_vae(params, image, target, weight, eps)
    np.testing.assert_allclose(out["loss"], ref_loss, rtol=1e-5)
    np.testing.assert_allclose(out["recon"], ref_recon, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_evaluation_decodes_the_mean():
    model = Model(_net(), seed=2)
    image, target, weight = _data(4, seed=1)
    out = model.forward(training=False, image=image, target=target, weight=weight)
    ref_loss, ref_recon, _ = _torch_vae(model.params, image, target, weight, None)
    np.testing.assert_allclose(out["loss"], ref_loss, rtol=1e-5)
    np.testing.assert_allclose(out["recon"], ref_recon, rtol=1e-4, atol=1e-5)
    again = model.forward(training=False, image=image, target=target, weight=weight)
    np.testing.assert_array_equal(again["recon"], out["recon"])


def test_training_draws_fresh_noise_each_step():
    model = Model(_net(), seed=2)
    image, target, weight = _data(4, seed=1)
    a = model.forward(training=True, image=image, target=target, weight=weight)["recon"]
    b = model.forward(training=True, image=image, target=target, weight=weight)["recon"]
    assert not np.array_equal(a, b)


VAE_FIT = """network vae_fit(latent = 4)
input image: [16]
input target: [16]
h = image -> dense(32) -> relu
mu = h -> dense(latent)
logvar = h -> dense(latent)
recon = sample(mu, logvar) -> dense(32) -> relu -> dense(16)
loss bce(recon, target) + 0.1 * kl_gaussian(mu, logvar)
"""


def _prototypes(n=128):
    """Two prototypes with a little noise: a structure the latent code can carry."""
    rng = np.random.default_rng(0)
    prototypes = (rng.random((2, 16)) < 0.5).astype(np.float32)
    x = prototypes[rng.integers(0, 2, size=n)]
    return np.where(rng.random(x.shape) < 0.05, 1 - x, x).astype(np.float32)


def test_trains_through_the_python_api_with_the_loss_falling():
    net, _ = compile_source(Source("vae_fit.net", VAE_FIT))
    model = Model(net, seed=0)
    x = _prototypes()
    history = model.fit(x, x, epochs=6, batch=16, lr=1e-2, optimizer="adam", progress=False)
    losses = [h["train_loss"] for h in history]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def _trainer(checkpoint_dir):
    net, _ = compile_source(Source("vae_fit.net", VAE_FIT))
    x = _prototypes(64)
    cfg = TrainConfig.from_network(net, epochs=2, batch=16, lr=1e-2, optimizer="adam", seed=0)
    return Trainer(Model(net, seed=0), cfg, Dataset(x, x, "arrays", None), None, progress=False,
                   checkpoint_dir=str(checkpoint_dir), log=lambda s: None)


def test_an_interrupted_then_resumed_run_draws_the_same_noise(tmp_path, monkeypatch):
    """sample draws from the stream checkpoints save: resuming gives the uninterrupted run's weights."""
    straight = _trainer(tmp_path / "a")
    straight.fit()
    interrupted = _trainer(tmp_path / "b")
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
    resumed = _trainer(tmp_path / "b")
    resumed.resume()
    resumed.fit()
    for k, v in straight.model.params.items():
        assert np.array_equal(resumed.model.params[k], v), k
