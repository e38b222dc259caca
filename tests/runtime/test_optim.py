"""Optimizers, schedules and clipping against torch.optim, on a few steps of random gradients."""
import math

import numpy as np
import pytest
import torch

from dslc.runtime.errors import CheckpointError
from dslc.runtime.optim import (
    OPTIMIZERS,
    SCHEDULE_ARGS,
    SCHEDULES,
    clip_grad_norm,
    clip_grad_value,
    make_optimizer,
    make_schedule,
)

SHAPES = {"conv1.weight": (4, 3, 2, 2), "conv1.bias": (4,), "fc.weight": (5, 6)}
LRS = [0.1, 0.05, 0.05, 0.02, 0.01]           # a different lr per step, as a schedule gives


def random_params(seed):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def random_grads(rng):
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def torch_optimizer(name, tensors, lr, weight_decay):
    if name == "sgd":
        return torch.optim.SGD(tensors, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(tensors, lr=lr, momentum=0.9, nesterov=name == "nesterov",
                               weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(tensors, lr=lr, eps=1e-8, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(tensors, lr=lr, alpha=0.99, eps=1e-8, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(tensors, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    return torch.optim.Adam(tensors, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_matches_torch(name, weight_decay):
    params = random_params(0)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ours = make_optimizer(name, params, lr=LRS[0], weight_decay=weight_decay)
    theirs = torch_optimizer(name, list(tensors.values()), LRS[0], weight_decay)
    rng = np.random.default_rng(1)
    for lr in LRS:
        grads = random_grads(rng)
        grads_before = {k: g.copy() for k, g in grads.items()}
        ours.step(grads, lr)
        for group in theirs.param_groups:
            group["lr"] = lr
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        theirs.step()
        for k in grads:
            np.testing.assert_array_equal(grads[k], grads_before[k])   # gradients left alone
    for k, t in tensors.items():
        assert params[k].dtype == np.float32
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_step_updates_only_params_with_gradients():
    params = random_params(0)
    frozen = params["fc.weight"].copy()
    opt = make_optimizer("adam", params, lr=0.1)
    grads = random_grads(np.random.default_rng(1))
    del grads["fc.weight"]
    opt.step(grads, 0.1)
    np.testing.assert_array_equal(params["fc.weight"], frozen)
    assert not any(key.endswith("/fc.weight") for key in opt.state_dict())


def test_adam_keeps_a_step_count_per_parameter_like_torch():
    params = random_params(0)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ours = make_optimizer("adam", params, lr=0.1)
    theirs = torch.optim.Adam(list(tensors.values()), lr=0.1)
    rng = np.random.default_rng(2)
    for step in range(4):
        grads = random_grads(rng)
        if step < 2:                          # fc.weight joins only at the third step
            del grads["fc.weight"]
        ours.step(grads, 0.1)
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k]) if k in grads else None
        theirs.step()
    for k, t in tensors.items():
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_bit_identically(name):
    rng = np.random.default_rng(3)
    grads = [random_grads(rng) for _ in range(4)]

    straight = random_params(0)
    opt = make_optimizer(name, straight, lr=0.05, weight_decay=0.01)
    for g in grads:
        opt.step(g, 0.05)

    interrupted = random_params(0)
    first = make_optimizer(name, interrupted, lr=0.05, weight_decay=0.01)
    for g in grads[:2]:
        first.step(g, 0.05)
    saved_state = first.state_dict()
    saved_params = {k: v.copy() for k, v in interrupted.items()}
    assert saved_state[f"{name}.step"].shape == () and int(saved_state[f"{name}.step"]) == 2
    first.step(grads[2], 0.05)                # state_dict returned copies, not live views

    resumed = saved_params
    second = make_optimizer(name, resumed, lr=0.05, weight_decay=0.01)
    second.load_state_dict(saved_state)
    for g in grads[2:]:
        second.step(g, 0.05)
    assert second.step_count == 4
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_state_dict_names():
    params = random_params(0)
    opt = make_optimizer("adam", params, lr=0.1)
    opt.step(random_grads(np.random.default_rng(0)), 0.1)
    keys = set(opt.state_dict())
    assert "adam.step" in keys
    assert "adam.exp_avg/conv1.weight" in keys and "adam.exp_avg_sq/fc.weight" in keys


def test_loading_another_optimizers_state_is_a_checkpoint_error():
    params = random_params(0)
    sgd = make_optimizer("momentum", params, lr=0.1)
    sgd.step(random_grads(np.random.default_rng(0)), 0.1)
    adam = make_optimizer("adam", params, lr=0.1)
    with pytest.raises(CheckpointError) as err:
        adam.load_state_dict(sgd.state_dict())
    assert "'momentum'" in err.value.message and "'adam'" in err.value.message


def test_loading_state_of_another_network_is_a_checkpoint_error():
    params = random_params(0)
    opt = make_optimizer("adam", params, lr=0.1)
    opt.step(random_grads(np.random.default_rng(0)), 0.1)
    state = opt.state_dict()
    other = make_optimizer("adam", {"fc.weight": params["fc.weight"]}, lr=0.1)
    with pytest.raises(CheckpointError, match="conv1"):
        other.load_state_dict(state)
    state["adam.exp_avg/fc.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(CheckpointError, match=r"shape \(2, 2\)"):
        make_optimizer("adam", params, lr=0.1).load_state_dict(state)


def test_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_optimizer("lamb", random_params(0), lr=0.1)
    for name in OPTIMIZERS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_matches_torch(name):
    epochs, base_lr = 12, 0.1
    args = {k: v for k, v in {"step_size": 4, "gamma": 0.5, "min_lr": 0.001}.items() if k in SCHEDULE_ARGS[name]}
    ours = make_schedule(name, base_lr, epochs=epochs, **args)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    if name == "constant":
        theirs = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    elif name == "step":
        theirs = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    elif name == "exponential":
        theirs = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    else:
        theirs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0.001)
    for epoch in range(epochs):
        assert ours(epoch) == pytest.approx(theirs.get_last_lr()[0], rel=1e-9, abs=1e-12)
        opt.step()
        theirs.step()


def test_no_schedule_is_constant():
    assert make_schedule(None, 0.3, epochs=5)(4) == 0.3


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_schedule("linear", 0.1, epochs=3)
    for name in SCHEDULES:
        assert name in str(err.value)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    grads = random_grads(np.random.default_rng(4))
    tensors = [torch.tensor(g, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    total = clip_grad_norm(grads, max_norm)
    assert total == pytest.approx(float(expected_norm), rel=1e-6)
    for t, g in zip(tensors, grads.values()):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6, atol=1e-7)
    clipped = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    assert clipped <= max_norm * (1 + 1e-5)


def test_clip_grad_value_matches_torch():
    grads = random_grads(np.random.default_rng(5))
    tensors = [torch.tensor(g, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_value_(tensors, 0.3)
    clip_grad_value(grads, 0.3)
    for t, g in zip(tensors, grads.values()):
        np.testing.assert_array_equal(g, t.grad.numpy())
