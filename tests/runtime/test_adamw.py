"""AdamW (decoupled weight decay) against torch.optim.AdamW, and its place in the one optimizer table;
per-layer learning-rate multipliers (`train { lr_mult(conv1 = 0.1) }`) against torch's parameter groups."""
import numpy as np
import pytest
import torch

from dslc.compiler import CompileError, compile_source
from dslc.diagnostics import Source
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


# ---- per-layer learning-rate multipliers ------------------------------------------------------------
@pytest.mark.parametrize("name", ["momentum", "adamw"])
def test_lr_mult_matches_torch_parameter_groups(name):
    rng = np.random.default_rng(2)
    shapes = {"conv1.weight": (3, 2), "conv1.bias": (3,), "block.fc.weight": (2, 2), "block.out.weight": (4,)}
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    t = {n: torch.tensor(a.copy(), requires_grad=True) for n, a in params.items()}
    lr = 0.05
    # block.fc is covered by both "block" and "block.fc": the longer key wins.
    mult = {"conv1": 0.1, "block": 2.0, "block.fc": 0.0}
    groups = [{"params": [t["conv1.weight"], t["conv1.bias"]], "lr": lr * 0.1},
              {"params": [t["block.fc.weight"]], "lr": 0.0}, {"params": [t["block.out.weight"]], "lr": lr * 2}]
    if name == "momentum":
        topt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
        opt = make_optimizer(name, params, lr=lr, lr_mult=mult)
    else:
        topt = torch.optim.AdamW(groups, lr=lr)
        opt = make_optimizer(name, params, lr=lr, lr_mult=mult)
    before = params["block.fc.weight"].copy()
    for _ in range(3):
        grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        for n, x in t.items():
            x.grad = torch.tensor(grads[n])
        topt.step()
        opt.step(grads, lr)
    for n, x in t.items():
        np.testing.assert_allclose(params[n], x.detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=n)
    np.testing.assert_array_equal(params["block.fc.weight"], before)      # multiplier 0: not moved


NET = """
network tiny(classes = 3)
input image: [4]
input label: int
logits = image -> dense(8) -> relu -> dense(classes)
loss cross_entropy(logits, label)
train {{
  {line}
}}
"""


def _net(line):
    return compile_source(Source("tiny.net", NET.format(line=line)))[0]


def test_lr_mult_in_the_train_section_trains_that_layer_slower():
    from dslc.runtime.model import Model
    net = _net("lr_mult(dense1 = 0)")
    cfg = TrainConfig.from_network(net)
    assert cfg.optimizer_args["lr_mult"] == {"dense1": 0} and "lr_mult dense1 0" in cfg.describe()
    model = Model(net)
    start = {k: v.copy() for k, v in model.params.items()}
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32), epochs=1, batch=8,
              progress=False, val_fraction=0)
    np.testing.assert_array_equal(model.params["dense1.weight"], start["dense1.weight"])
    assert not np.array_equal(model.params["dense2.weight"], start["dense2.weight"])


def test_lr_mult_mistakes():
    with pytest.raises(RuntimeUserError, match="lr_mult names `dense`, which holds no parameters") as e:
        TrainConfig.from_network(_net("lr_mult(dense = 0.1)"))
    assert "did you mean `dense1`" in str(e.value)
    with pytest.raises(CompileError) as e:
        _net("lr_mult(dense1 = -1)")
    assert e.value.diagnostics[0].message == "`lr_mult` for `dense1` takes a number >= 0, found `-1`"
    with pytest.raises(CompileError) as e:
        _net("lr_mult(0.1)")
    assert e.value.diagnostics[0].message == "`lr_mult` takes layer names with their learning-rate multipliers"


@pytest.mark.parametrize("name", ["adamw", "momentum"])
def test_device_optimizers_take_lr_mult_too(name):
    """The CUDA optimizers (in Numba's simulator here) scale each parameter's lr as the CPU ones do."""
    from numba import cuda

    from dslc.runtime.cuda.optim import make_cuda_optimizer
    rng = np.random.default_rng(3)
    params = {"a.w": rng.standard_normal((3, 2)).astype(np.float32), "b.w": rng.standard_normal(4).astype(np.float32)}
    dev = {k: cuda.to_device(v) for k, v in params.items()}
    cpu = make_optimizer(name, params, lr=0.05, lr_mult={"a": 0.1})
    gpu = make_cuda_optimizer(name, dev, lr=0.05, lr_mult={"a": 0.1})
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        cpu.step(grads, 0.05)
        gpu.step({k: cuda.to_device(v) for k, v in grads.items()}, 0.05)
    for k in params:
        np.testing.assert_allclose(dev[k].copy_to_host(), params[k], rtol=1e-5, atol=1e-6, err_msg=k)
