"""Optimizers, learning-rate schedules and gradient clipping on the CPU (numpy, in place).

Every formula follows torch.optim so that a network trained by dslc and the same network
trained by PyTorch take the same steps:
  - weight decay is L2 added to the gradient (torch's `weight_decay`), except AdamW's, which
    shrinks the parameter by lr * weight_decay of itself before the Adam step (decoupled);
  - SGD momentum starts its buffer at the first gradient (dampening 0), nesterov uses
    g + momentum * buf;
  - Adam is bias-corrected, with a step counter per parameter like torch;
  - Adagrad starts its accumulator at 0 with no lr decay; RMSprop is the uncentered form.
The optimizers, the arguments each takes and their defaults (torch's) are listed once, in
dslc/train_section.py, which the compiler checks `train { }` sections against.

Optimizers update parameters in place and never modify gradients: the plan owns both
arrays and reuses them every step (the clipping functions do scale gradients in place).
Arithmetic stays in the parameter's dtype (float32 in production), as in torch.

Scratch memory: an update works on the effective gradient (grad + L2 term) and one array of
intermediate terms. Neither carries anything from one parameter to the next, so all parameters
share two flat buffers sized for the largest one; and an update that only reads its gradient
(plain SGD and momentum) is handed the plan's gradient itself when there is no weight decay.
The first step pays for every fresh page it touches: with two scratch arrays per parameter,
VGG-11's (9.2M parameters) first SGD-momentum step took 0.25 s against 0.02 s for later ones.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dslc.runtime.errors import CheckpointError
from dslc.train_section import OPTIMIZERS as OPTIMIZER_ARGS
from dslc.train_section import SCHEDULES as SCHEDULE_ARGS
from dslc.train_section import optimizer_settings, schedule_settings

OPTIMIZERS = tuple(OPTIMIZER_ARGS)
SCHEDULES = tuple(SCHEDULE_ARGS)


class Optimizer:
    """Base class. Subclasses set `name` and their per-parameter state `slots`, and implement `_update`.

    State arrays live in `self.state[slot][param_name]`, created on a parameter's first
    update; slots named in `scalar_slots` hold one 0-d array per parameter instead of an
    array of the parameter's shape. `step_count` counts calls to `step()`.
    """
    name: str = ""
    slots: tuple[str, ...] = ()
    scalar_slots: tuple[str, ...] = ()
    # Whether `_update` may overwrite the gradient it is given; when not, and there is no weight
    # decay, it is given the caller's gradient itself instead of a copy.
    overwrites_grad: bool = True

    def __init__(self, params: dict[str, np.ndarray], *, weight_decay: float):
        self.params = params
        self.weight_decay = weight_decay
        self.state: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}
        self.step_count = 0
        # dtype -> the two flat scratch buffers every parameter's update shares (module docstring),
        # made on the first step that needs them, so later steps allocate nothing.
        self._scratch: dict[np.dtype, tuple[np.ndarray, np.ndarray]] = {}

    # Parameter name -> learning-rate multiplier, for those with one (make_optimizer's lr_mult).
    lr_mult: dict[str, float] = {}

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """Update every parameter named in `grads` with learning rate `lr` (times its multiplier)."""
        for pname, grad in grads.items():
            param = self.params[pname]
            if grad.shape != param.shape:
                raise ValueError(f"gradient of {pname!r} has shape {grad.shape}, "
                                 f"parameter has {param.shape}")
            eff_grad, work = self._scratch_like(param)
            if self.weight_decay:
                np.multiply(param, self.weight_decay, out=eff_grad)
                eff_grad += grad
            elif self.overwrites_grad:
                np.copyto(eff_grad, grad)
            else:
                eff_grad = grad
            self._update(pname, param, eff_grad, work, lr * self.lr_mult.get(pname, 1.0))
        self.step_count += 1

    def _scratch_like(self, param: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two scratch arrays of `param`'s shape and dtype, views of the shared buffers."""
        buffers = self._scratch.get(param.dtype)
        if buffers is None:
            size = max(p.size for p in self.params.values() if p.dtype == param.dtype)
            buffers = self._scratch[param.dtype] = (np.empty(size, param.dtype), np.empty(size, param.dtype))
        return tuple(b[:param.size].reshape(param.shape) for b in buffers)

    def _slot(self, slot: str, pname: str, param: np.ndarray) -> np.ndarray:
        """The state array `slot` of parameter `pname`, created as zeros on first use."""
        arrays = self.state[slot]
        if pname not in arrays:
            arrays[pname] = np.zeros_like(param)
        return arrays[pname]

    def _update(self, pname: str, param: np.ndarray, grad: np.ndarray, work: np.ndarray,
                lr: float) -> None:
        """Apply one step to `param`. `grad` (the effective gradient) and `work` are this
        parameter's scratch arrays; the update may overwrite both."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every state array under flat names "<optimizer>.<slot>/<param>",
        plus "<optimizer>.step", the number of steps taken, as a 0-d int64 array."""
        out = {f"{self.name}.step": np.array(self.step_count, dtype=np.int64)}
        for slot, arrays in self.state.items():
            for pname, arr in arrays.items():
                out[f"{self.name}.{slot}/{pname}"] = arr.copy()
        return out

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore what `state_dict` returned; later steps are bit-identical to an uninterrupted run.

        Raises CheckpointError when the state belongs to another optimizer or other parameters,
        which happens when a run is resumed with a different optimizer or network.
        """
        step_key = f"{self.name}.step"
        if step_key not in d:
            found = sorted({key[:-len(".step")] for key in d
                            if key.endswith(".step") and key[:-len(".step")] in OPTIMIZERS})
            raise CheckpointError(
                f"the checkpoint's optimizer state is for {' and '.join(map(repr, found)) or 'no optimizer'}, "
                f"but this run uses {self.name!r}",
                "resume with the optimizer the checkpoint was trained with, or start a new run")
        state: dict[str, dict[str, np.ndarray]] = {slot: {} for slot in self.slots}
        prefix = f"{self.name}."
        for key, arr in d.items():
            if key == step_key or not key.startswith(prefix):
                continue
            slot, _, pname = key[len(prefix):].partition("/")
            if slot not in state or pname not in self.params:
                raise CheckpointError(
                    f"the checkpoint's optimizer state {key!r} does not belong to this network",
                    "resume only with the network the checkpoint was trained with")
            expected = () if slot in self.scalar_slots else self.params[pname].shape
            if arr.shape != expected:
                raise CheckpointError(
                    f"the checkpoint's optimizer state {key!r} has shape {arr.shape}, "
                    f"expected {expected} for parameter {pname!r}",
                    "resume only with the network the checkpoint was trained with")
            state[slot][pname] = np.array(arr, copy=True)
        self.state = state
        self.step_count = int(d[step_key])


class SGD(Optimizer):
    """torch.optim.SGD: plain, with momentum, or with Nesterov momentum (dampening 0)."""

    def __init__(self, params, *, weight_decay: float, momentum: float, nesterov: bool, name: str):
        self.name = name
        self.slots = ("momentum_buffer",) if momentum else ()
        super().__init__(params, weight_decay=weight_decay)
        self.momentum = momentum
        self.nesterov = nesterov
        self.overwrites_grad = nesterov    # plain SGD and momentum only read their gradient

    def _update(self, pname, param, grad, work, lr):
        direction = grad
        if self.momentum:
            buffers = self.state["momentum_buffer"]
            buf = buffers.get(pname)
            if buf is None:
                # torch starts the buffer at the first gradient, not at zero.
                buf = buffers[pname] = grad.copy()
            else:
                buf *= self.momentum
                buf += grad
            if self.nesterov:
                np.multiply(buf, self.momentum, out=work)
                grad += work
            else:
                direction = buf
        np.multiply(direction, lr, out=work)
        param -= work


class Adagrad(Optimizer):
    """torch.optim.Adagrad with lr_decay 0 and initial_accumulator_value 0."""
    name = "adagrad"
    slots = ("sum",)

    def __init__(self, params, *, weight_decay: float, eps: float):
        super().__init__(params, weight_decay=weight_decay)
        self.eps = eps

    def _update(self, pname, param, grad, work, lr):
        acc = self._slot("sum", pname, param)
        np.multiply(grad, grad, out=work)
        acc += work
        np.sqrt(acc, out=work)
        work += self.eps
        grad /= work
        grad *= lr
        param -= grad


class RMSprop(Optimizer):
    """torch.optim.RMSprop, uncentered, without momentum."""
    name = "rmsprop"
    slots = ("square_avg",)

    def __init__(self, params, *, weight_decay: float, alpha: float, eps: float):
        super().__init__(params, weight_decay=weight_decay)
        self.alpha = alpha
        self.eps = eps

    def _update(self, pname, param, grad, work, lr):
        square_avg = self._slot("square_avg", pname, param)
        square_avg *= self.alpha
        np.multiply(grad, grad, out=work)
        work *= 1 - self.alpha
        square_avg += work
        np.sqrt(square_avg, out=work)
        work += self.eps
        grad /= work
        grad *= lr
        param -= grad


class Adam(Optimizer):
    """torch.optim.Adam (not AMSGrad), bias-corrected with a per-parameter step counter."""
    name = "adam"
    slots = ("exp_avg", "exp_avg_sq", "step")
    scalar_slots = ("step",)

    def __init__(self, params, *, weight_decay: float, betas: tuple[float, float], eps: float):
        super().__init__(params, weight_decay=weight_decay)
        self.beta1, self.beta2 = betas
        self.eps = eps

    def _update(self, pname, param, grad, work, lr):
        exp_avg = self._slot("exp_avg", pname, param)
        exp_avg_sq = self._slot("exp_avg_sq", pname, param)
        # Per parameter, as in torch, so a parameter that skips steps keeps its own bias
        # correction. Kept as a 0-d array so it travels in state_dict like the others.
        steps = self.state["step"]
        t = float(steps[pname]) + 1 if pname in steps else 1.0
        steps[pname] = np.array(t)
        exp_avg *= self.beta1
        np.multiply(grad, 1 - self.beta1, out=work)
        exp_avg += work
        exp_avg_sq *= self.beta2
        np.multiply(grad, grad, out=work)
        work *= 1 - self.beta2
        exp_avg_sq += work
        step_size = lr / (1 - self.beta1 ** t)
        np.sqrt(exp_avg_sq, out=work)
        work /= math.sqrt(1 - self.beta2 ** t)
        work += self.eps
        np.divide(exp_avg, work, out=grad)
        grad *= step_size
        param -= grad


class AdamW(Adam):
    """torch.optim.AdamW (not AMSGrad): Adam whose weight decay shrinks each parameter by
    lr * weight_decay of itself before the step, instead of entering the gradient's averages."""
    name = "adamw"

    def __init__(self, params, *, weight_decay: float, betas: tuple[float, float], eps: float):
        # The base class would add weight_decay * param to the gradient (L2); AdamW must not.
        super().__init__(params, weight_decay=0.0, betas=betas, eps=eps)
        self.decoupled_weight_decay = weight_decay

    def _update(self, pname, param, grad, work, lr):
        if self.decoupled_weight_decay:
            param *= param.dtype.type(1 - lr * self.decoupled_weight_decay)
        super()._update(pname, param, grad, work, lr)


def param_lr_mult(lr_mult: dict | None, names) -> dict[str, float]:
    """Parameter name -> multiplier from per-layer multipliers ({"conv1": 0.1, "stage2": 0.5}): a
    key names a parameter, or the layer or block its name starts with ("conv1" covers
    "conv1.weight"); the longest key that covers a parameter is its multiplier."""
    out = {}
    for pname in names:
        keys = [k for k in (lr_mult or {}) if pname == k or pname.startswith(k + ".")]
        if keys:
            out[pname] = float(lr_mult[max(keys, key=len)])
    return out


def make_optimizer(name: str, params: dict[str, np.ndarray], lr_mult: dict | None = None, **args) -> Optimizer:
    """The optimizer `name` (one of OPTIMIZERS) over `params`, updated in place by `step()`.

    `args` are the optimizer's arguments (dslc/train_section.py lists them, lr included); those
    not given take their defaults, and one it does not take raises ValueError, as does a bad
    value, so a mistake is reported before training. `lr` is the base learning rate; `step()`
    takes the learning rate of each call so that a schedule can change it. `lr_mult` (the train
    section's) scales it per layer (param_lr_mult).
    """
    opt = _make(name, params, args)
    opt.lr_mult = param_lr_mult(lr_mult, params)
    return opt


def _make(name: str, params: dict[str, np.ndarray], args: dict) -> Optimizer:
    a = optimizer_settings(name, args)
    if name in ("sgd", "momentum", "nesterov"):
        return SGD(params, weight_decay=a["weight_decay"], name=name, momentum=a["momentum"],
                   nesterov=name == "nesterov" or a.get("nesterov", False))
    if name == "adagrad":
        return Adagrad(params, weight_decay=a["weight_decay"], eps=a["eps"])
    if name == "rmsprop":
        return RMSprop(params, weight_decay=a["weight_decay"], alpha=a["alpha"], eps=a["eps"])
    adam = AdamW if name == "adamw" else Adam
    return adam(params, weight_decay=a["weight_decay"], betas=(a["beta1"], a["beta2"]), eps=a["eps"])


def make_schedule(name: str | None, base_lr: float, *, epochs: int, **args) -> Callable[[int], float]:
    """A function from epoch index (0-based) to learning rate, by torch's closed forms.

    "step": StepLR (lr * gamma ** (epoch // step_size)); "exponential": ExponentialLR
    (lr * gamma ** epoch); "cosine": CosineAnnealingLR with T_max = epochs and
    eta_min = min_lr. `args` are the schedule's own arguments (dslc/train_section.py), the
    rest at their defaults; one the schedule does not take raises ValueError.
    """
    name = name or "constant"
    a = schedule_settings(name, args)
    if name == "constant":
        return lambda epoch: base_lr
    if name == "step":
        step_size, gamma = a["step_size"], a["gamma"]
        return lambda epoch: base_lr * gamma ** (epoch // step_size)
    if name == "exponential":
        gamma = a["gamma"]
        return lambda epoch: base_lr * gamma ** epoch
    if epochs < 1:
        raise ValueError(f"cosine schedule needs epochs >= 1, got {epochs}")
    min_lr = a["min_lr"]
    return lambda epoch: min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient in place so their joint L2 norm is at most `max_norm`.

    torch.nn.utils.clip_grad_norm_'s formula: coef = max_norm / (total + 1e-6), applied when
    below 1. Returns the total norm before clipping (inf/nan propagate, as in torch).
    """
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        for g in grads.values():
            g *= coef
    return total


def clip_grad_value(grads: dict[str, np.ndarray], value: float) -> None:
    """Clamp every gradient element into [-value, value] in place (torch's clip_grad_value_)."""
    for g in grads.values():
        np.clip(g, -value, value, out=g)
