"""Optimizers and gradient-norm clipping on the device: the CUDA twins of runtime/optim.py.

Same formulas (torch.optim's, see runtime/optim.py), same hyperparameters and the same
state_dict keys, so a checkpoint written by one resumes on the other. Parameters, gradients
and per-parameter state (momentum buffers, Adagrad sums, RMSprop / Adam averages) are device
arrays updated in place by one elementwise kernel per parameter; the only host state is the
step counters, which turn into bias-correction scalars passed to the Adam kernel. state_dict
copies the device state to the host; load_state_dict copies it back.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from dslc.runtime.cuda.devicekernels import fill
from dslc.runtime.cuda.launch import THREADS_1D, blocks_1d
from dslc.runtime.cuda.reduce import block_sum
from dslc.runtime.optim import Optimizer, param_lr_mult
from dslc.train_section import optimizer_settings

# Every kernel first forms the effective gradient g + weight_decay * p (L2, as torch) without
# modifying the gradient array, which the plan owns.


@cuda.jit
def _sgd_update(param, grad, buf, weight_decay, lr, momentum, use_buffer, first, nesterov):
    i = cuda.grid(1)
    if i < param.size:
        g = grad[i] + weight_decay * param[i]
        direction = g
        if use_buffer:
            # torch starts the buffer at the first gradient, not at zero.
            b = g if first else momentum * buf[i] + g
            buf[i] = b
            direction = g + momentum * b if nesterov else b
        param[i] -= lr * direction


@cuda.jit
def _adagrad_update(param, grad, acc, weight_decay, lr, eps):
    i = cuda.grid(1)
    if i < param.size:
        g = grad[i] + weight_decay * param[i]
        a = acc[i] + g * g
        acc[i] = a
        param[i] -= lr * (g / (math.sqrt(a) + eps))


@cuda.jit
def _rmsprop_update(param, grad, square_avg, weight_decay, lr, alpha, one_minus_alpha, eps):
    i = cuda.grid(1)
    if i < param.size:
        g = grad[i] + weight_decay * param[i]
        s = alpha * square_avg[i] + one_minus_alpha * (g * g)
        square_avg[i] = s
        param[i] -= lr * (g / (math.sqrt(s) + eps))


@cuda.jit
def _adam_update(param, grad, exp_avg, exp_avg_sq, weight_decay, step_size, beta1, one_minus_beta1,
                 beta2, one_minus_beta2, sqrt_bias_correction2, eps, shrink):
    # `shrink` is AdamW's decoupled decay, 1 - lr * weight_decay (1 for Adam, whose decay is the
    # L2 term `weight_decay`, 0 for AdamW).
    i = cuda.grid(1)
    if i < param.size:
        p = param[i]
        g = grad[i] + weight_decay * p
        m = beta1 * exp_avg[i] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = p * shrink - step_size * (m / (math.sqrt(v) / sqrt_bias_correction2 + eps))


SLOTS = {"adagrad": ("sum",), "rmsprop": ("square_avg",), "adam": ("exp_avg", "exp_avg_sq", "step"),
         "adamw": ("exp_avg", "exp_avg_sq", "step")}


class CudaOptimizer(Optimizer):
    """One of OPTIMIZERS over device parameters. Inherits the CPU optimizer's state layout
    (`state[slot][param_name]`, `step_count`) and its checkpoint validation."""

    def __init__(self, name, params, *, weight_decay, momentum=0.0, nesterov=False, betas=(0.9, 0.999), eps=1e-8,
                 alpha=0.99):
        self.name = name
        # As on the CPU, SGD keeps a momentum buffer only with a momentum above 0.
        self.slots = ("momentum_buffer",) if momentum else SLOTS.get(name, ())
        self.scalar_slots = ("step",) if name in ("adam", "adamw") else ()
        super().__init__(params, weight_decay=weight_decay)
        self.momentum = np.float32(momentum)
        self.nesterov = name == "nesterov" or bool(nesterov)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = np.float32(eps)
        self.alpha = float(alpha)

    def _slot(self, slot, pname, param):
        """The device state array `slot` of parameter `pname`, created as zeros on first use."""
        arrays = self.state[slot]
        if pname not in arrays:
            arrays[pname] = cuda.device_array(param.shape, dtype=param.dtype)
            fill(arrays[pname], 0)
        return arrays[pname]

    def step(self, grads, lr):
        """Update every parameter named in `grads` with learning rate `lr` (times its multiplier)."""
        base_lr = lr
        # AdamW's decay shrinks the parameter (`shrink` below); every other optimizer's is L2.
        wd = np.float32(0 if self.name == "adamw" else self.weight_decay)
        for pname, grad in grads.items():
            param = self.params[pname]
            if grad.shape != param.shape:
                raise ValueError(f"gradient of {pname!r} has shape {grad.shape}, "
                                 f"parameter has {param.shape}")
            lr = base_lr * self.lr_mult.get(pname, 1.0)
            grid = blocks_1d(param.size), THREADS_1D
            p, g = param.ravel(), grad.ravel()
            if self.name in ("sgd", "momentum", "nesterov"):
                use_buffer = bool(self.slots)
                first = use_buffer and pname not in self.state["momentum_buffer"]
                # Without a buffer the kernel never touches `buf`: the parameter stands in.
                buf = self._slot("momentum_buffer", pname, param).ravel() if use_buffer else p
                _sgd_update[grid](p, g, buf, wd, np.float32(lr), self.momentum, use_buffer, first,
                                  self.nesterov)
            elif self.name == "adagrad":
                _adagrad_update[grid](p, g, self._slot("sum", pname, param).ravel(), wd, np.float32(lr), self.eps)
            elif self.name == "rmsprop":
                _rmsprop_update[grid](p, g, self._slot("square_avg", pname, param).ravel(), wd,
                                      np.float32(lr), np.float32(self.alpha), np.float32(1 - self.alpha),
                                      self.eps)
            else:
                steps = self.state["step"]
                t = float(steps[pname]) + 1 if pname in steps else 1.0
                steps[pname] = np.array(t)
                _adam_update[grid](p, g, self._slot("exp_avg", pname, param).ravel(),
                                   self._slot("exp_avg_sq", pname, param).ravel(), wd,
                                   np.float32(lr / (1 - self.beta1 ** t)),
                                   np.float32(self.beta1), np.float32(1 - self.beta1),
                                   np.float32(self.beta2), np.float32(1 - self.beta2),
                                   np.float32(math.sqrt(1 - self.beta2 ** t)), self.eps,
                                   np.float32(1 - lr * self.weight_decay if self.name == "adamw" else 1))
        self.step_count += 1

    def state_dict(self):
        """Host copies of the state, under the CPU optimizer's keys."""
        out = {f"{self.name}.step": np.array(self.step_count, dtype=np.int64)}
        for slot, arrays in self.state.items():
            for pname, arr in arrays.items():
                out[f"{self.name}.{slot}/{pname}"] = (arr.copy() if slot in self.scalar_slots
                                                      else arr.copy_to_host())
        return out

    def load_state_dict(self, d):
        """Validate and restore like the CPU optimizer, then move the state to the device."""
        super().load_state_dict(d)
        for slot, arrays in self.state.items():
            if slot not in self.scalar_slots:
                for pname, arr in arrays.items():
                    arrays[pname] = cuda.to_device(arr.astype(self.params[pname].dtype, copy=False))


def make_cuda_optimizer(name: str, params: dict, lr_mult: dict | None = None, **args) -> CudaOptimizer:
    """dslc.runtime.optim.make_optimizer over device arrays: same names, arguments and checks."""
    opt = _make(name, params, args)
    opt.lr_mult = param_lr_mult(lr_mult, params)
    return opt


def _make(name: str, params: dict, args: dict) -> CudaOptimizer:
    a = optimizer_settings(name, args)
    if name in ("sgd", "momentum", "nesterov"):
        return CudaOptimizer(name, params, weight_decay=a["weight_decay"], momentum=a["momentum"],
                             nesterov=a.get("nesterov", False))
    if name in ("adam", "adamw"):
        return CudaOptimizer(name, params, weight_decay=a["weight_decay"], betas=(a["beta1"], a["beta2"]),
                             eps=a["eps"])
    return CudaOptimizer(name, params, weight_decay=a["weight_decay"], eps=a["eps"], alpha=a.get("alpha", 0.99))


# --- gradient clipping -----------------------------------------------------------------------

@cuda.jit
def _add_sum_of_squares(g, total):
    """total[0] += sum(g^2): a tree reduction per block, then one atomic add per block."""
    scratch = cuda.shared.array(THREADS_1D, float32)
    partial = float32(0)
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        partial += g[i] * g[i]
    block_total = block_sum(scratch, partial)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(total, 0, block_total)


@cuda.jit
def _clip(g, sum_of_squares, max_norm):
    i = cuda.grid(1)
    if i < g.size:
        coef = max_norm / (math.sqrt(sum_of_squares[0]) + float32(1e-6))
        if coef < 1 or math.isnan(coef):
            g[i] *= coef


@cuda.jit
def _sqrt_in_place(a):
    if cuda.grid(1) == 0:
        a[0] = math.sqrt(a[0])


def clip_grad_norm(grads: dict, max_norm: float):
    """Scale the device gradients in place so their joint L2 norm is at most `max_norm`.

    dslc.runtime.optim.clip_grad_norm's formula, computed on the device. Returns the total norm
    before clipping as a shape (1,) device array, so the caller decides whether to pay for a
    copy to the host (e.g. only when logging).
    """
    total = cuda.device_array(1, dtype=np.float32)
    fill(total, 0)
    for g in grads.values():
        if g.size:
            _add_sum_of_squares[min(blocks_1d(g.size), THREADS_1D), THREADS_1D](g.ravel(), total)
    for g in grads.values():
        if g.size:
            _clip[blocks_1d(g.size), THREADS_1D](g.ravel(), total, np.float32(max_norm))
    _sqrt_in_place[1, 1](total)
    return total
