"""Device optimizers and gradient clipping against the CPU ones (runtime/optim.py), in Numba's
CUDA simulator without a GPU."""
import numpy as np
import pytest
from numba import cuda

from dslc.runtime.cuda.optim import clip_grad_norm as cuda_clip_grad_norm
from dslc.runtime.cuda.optim import make_cuda_optimizer
from dslc.runtime.optim import OPTIMIZER_ARGS, OPTIMIZERS, clip_grad_norm, make_optimizer

SHAPES = {"w": (3, 4), "b": (5,)}
ALL_SETTINGS = {"lr": 0.05, "weight_decay": 0.01, "momentum": 0.8, "beta1": 0.8, "beta2": 0.9, "eps": 1e-6,
                "alpha": 0.9}


def settings(name):
    """ALL_SETTINGS that optimizer `name` takes (it refuses the others)."""
    return {k: v for k, v in ALL_SETTINGS.items() if k in OPTIMIZER_ARGS[name]}


def _arrays(rng):
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


def _to_device(arrays):
    return {n: cuda.to_device(a) for n, a in arrays.items()}


def _to_host(arrays):
    return {n: a.copy_to_host() for n, a in arrays.items()}


def _assert_same(device_arrays, host_arrays):
    assert device_arrays.keys() == host_arrays.keys()
    for n, a in host_arrays.items():
        np.testing.assert_allclose(device_arrays[n], a, rtol=1e-5, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_steps_and_state_match_cpu(name):
    rng = np.random.default_rng(0)
    cpu_params = _arrays(rng)
    dev_params = _to_device(cpu_params)
    cpu_opt = make_optimizer(name, cpu_params, **settings(name))
    dev_opt = make_cuda_optimizer(name, dev_params, **settings(name))
    for step in range(3):
        grads = _arrays(rng)
        if step == 1:
            del grads["b"]          # a parameter that skips a step keeps its own state
        lr = 0.05 / (step + 1)
        cpu_opt.step(grads, lr)
        dev_grads = _to_device(grads)
        dev_opt.step(dev_grads, lr)
        _assert_same(_to_host(dev_grads), grads)           # gradients are not modified
    _assert_same(_to_host(dev_params), cpu_params)
    _assert_same(dev_opt.state_dict(), cpu_opt.state_dict())


@pytest.mark.parametrize("name", ["nesterov", "adam"])
def test_state_dict_round_trips_between_devices(name):
    """CPU state loaded on the device (and back) continues exactly like the CPU run."""
    rng = np.random.default_rng(1)
    cpu_params = _arrays(rng)
    cpu_opt = make_optimizer(name, cpu_params, **settings(name))
    cpu_opt.step(_arrays(rng), 0.05)
    dev_params = _to_device(cpu_params)
    dev_opt = make_cuda_optimizer(name, dev_params, **settings(name))
    dev_opt.load_state_dict(cpu_opt.state_dict())
    grads = _arrays(rng)
    cpu_opt.step(grads, 0.05)
    dev_opt.step(_to_device(grads), 0.05)
    _assert_same(_to_host(dev_params), cpu_params)
    resumed = make_optimizer(name, _to_host(dev_params), **settings(name))
    resumed.load_state_dict(dev_opt.state_dict())
    _assert_same(resumed.state_dict(), cpu_opt.state_dict())


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_cuda_optimizer("lbfgs", {}, lr=0.1)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_cpu(max_norm):
    grads = _arrays(np.random.default_rng(2))
    dev_grads = _to_device(grads)
    total = cuda_clip_grad_norm(dev_grads, max_norm)
    expected = clip_grad_norm(grads, max_norm)
    np.testing.assert_allclose(total.copy_to_host()[0], expected, rtol=1e-5)
    _assert_same(_to_host(dev_grads), grads)
