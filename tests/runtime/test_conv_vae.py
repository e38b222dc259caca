"""models/conv_vae.net as shipped: its loss and every parameter gradient equal a torch module's
with the same weights and the same noise (eps is the first draw of the model's seeded stream,
np.random.default_rng(seed), which only `sample` draws from here)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dslc.compiler import compile_file
from dslc.runtime.model import Model

pytestmark = pytest.mark.slow      # Numba compiles the kernels on first use

ZOO_FILE = Path(__file__).resolve().parents[2] / "models" / "conv_vae.net"


def _torch_conv_vae(params, image, eps):
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(image, dtype=torch.float64)
    h = F.relu(F.conv2d(x, p["enc1.weight"], p["enc1.bias"], stride=2, padding=1))
    h = F.relu(F.conv2d(h, p["enc2.weight"], p["enc2.bias"], stride=2, padding=1)).flatten(1)
    mu = F.linear(h, p["mu.weight"], p["mu.bias"])
    logvar = F.linear(h, p["logvar.weight"], p["logvar.bias"])
    z = mu + torch.exp(0.5 * logvar) * torch.tensor(eps, dtype=torch.float64)
    d = F.relu(F.linear(z, p["dec0.weight"], p["dec0.bias"])).reshape(-1, 32, 2, 2)
    d = F.relu(F.conv_transpose2d(d, p["dec1.weight"], p["dec1.bias"], stride=2))
    recon = F.conv_transpose2d(d, p["dec2.weight"], p["dec2.bias"], stride=2)
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum() / x.shape[0]
    loss = F.binary_cross_entropy_with_logits(recon, x) + kl / 64
    loss.backward()
    return float(loss.detach()), recon.detach().numpy(), {k: v.grad.numpy() for k, v in p.items()}


def test_the_zoo_file_matches_torch_in_loss_and_every_gradient():
    net, _ = compile_file(str(ZOO_FILE))
    seed = 3
    model = Model(net, seed=seed)
    rng = np.random.default_rng(0)
    image = rng.random((5, 1, 8, 8)).astype(np.float32)
    params = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(training=True, image=image)
    grads = model.backward()
    eps = np.random.default_rng(seed).standard_normal((5, 8), dtype=np.float32)
    ref_loss, ref_recon, ref_grads = _torch_conv_vae(params, image, eps)
    np.testing.assert_allclose(out["loss"], ref_loss, rtol=1e-5)
    np.testing.assert_allclose(out["recon"], ref_recon, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6, err_msg=name)
