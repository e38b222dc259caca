"""AdamW (decoupled weight decay) against torch.optim.AdamW, and its place in the one optimizer table."""
import numpy as np
import pytest
import torch

from dslc.runtime.config import TrainConfig
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.optim import make_optimizer
from dslc.train_section import OPTIMIZERS, optimizer_settings

SHAPES = {"w": (4, 3), "b": (5,)}


@pytest.mark.parametrize("args", [{}, {"lr": 0.01, "weight_decay": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6}])
def test_adamw_matches_torch(args):
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    tparams = {n: torch.tensor(a.copy(), requires_grad=True) for n, a in params.items()}
    full = optimizer_settings("adamw", args)
    topt = torch.optim.AdamW(list(tparams.values()), lr=full["lr"], betas=(full["beta1"], full["beta2"]),
                             eps=full["eps"], weight_decay=full["weight_decay"])
    opt = make_optimizer("adamw", params, **args)
    for step in range(5):
        grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
        lr = full["lr"] / (step + 1)             # as a schedule would change it
        for group in topt.param_groups:
            group["lr"] = lr
        for n, t in tparams.items():
            t.grad = torch.tensor(grads[n])
        topt.step()
        opt.step(grads, lr)
        for n, t in tparams.items():
            np.testing.assert_allclose(params[n], t.detach().numpy(), rtol=0, atol=1e-6, err_msg=n)
    assert opt.state_dict()["adamw.step"] == 5


def test_adamw_defaults_are_torchs():
    d = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    full = optimizer_settings("adamw", {})
    assert full["weight_decay"] == d["weight_decay"] == 0.01
    assert (full["lr"], (full["beta1"], full["beta2"]), full["eps"]) == (d["lr"], d["betas"], d["eps"])


def test_adamw_decay_is_not_adams_l2():
    """With a zero gradient Adam's L2 decay moves a parameter by ~lr (normalised), AdamW's by lr * wd * p."""
    p_adam, p_adamw = {"w": np.full(3, 2.0, np.float32)}, {"w": np.full(3, 2.0, np.float32)}
    make_optimizer("adam", p_adam, weight_decay=0.01).step({"w": np.zeros(3, np.float32)}, 0.1)
    make_optimizer("adamw", p_adamw, weight_decay=0.01).step({"w": np.zeros(3, np.float32)}, 0.1)
    np.testing.assert_allclose(p_adamw["w"], 2.0 * (1 - 0.1 * 0.01))
    np.testing.assert_allclose(p_adam["w"], 2.0 - 0.1, rtol=1e-5)


def test_adamw_in_train_config():
    assert "adamw" in OPTIMIZERS

    class Net:
        train = {"optimizer": ("call", "adamw", (), (("weight_decay", 0.05),))}

    cfg = TrainConfig.from_network(Net())
    assert cfg.optimizer == "adamw" and cfg.optimizer_args["weight_decay"] == 0.05
    assert "adamw lr 0.001 beta1 0.9 beta2 0.999 eps 1e-08 weight_decay 0.05" in cfg.describe()
    with pytest.raises(RuntimeUserError, match="adamw"):
        TrainConfig.from_network(Net(), momentum=0.9)
