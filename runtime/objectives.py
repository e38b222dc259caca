"""Training a network with several named objectives (`loss d: ... trains disc`), e.g. a GAN.

Per batch the objectives are stepped in the network's `alternate` order: for each one, a
training forward, a backward from that objective's total into its own parameters only (every
other parameter is frozen for that pass, so a generator's step moves nothing of the
discriminator it differentiates through), and a step of that objective's own optimizer. Each
forward draws fresh randomness from the run's one stream, so a resumed run replays it exactly.

The Trainer keeps one `opt`; here it is an ObjectiveOptimizers, whose state_dict holds every
objective's optimizer state under the objective's name, so checkpoints keep them all.
"""
from __future__ import annotations

import dataclasses
import math

from .errors import RuntimeUserError, divergence
from .plan import Plan


class ObjectiveOptimizers:
    """One optimizer per objective, saved and restored together (keys `NAME/...`)."""

    def __init__(self, optimizers: dict):
        self.optimizers = optimizers

    def state_dict(self) -> dict:
        return {f"{name}/{k}": v for name, opt in self.optimizers.items() for k, v in opt.state_dict().items()}

    def load_state_dict(self, d: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict({k[len(name) + 1:]: v for k, v in d.items() if k.startswith(name + "/")})


class Objectives:
    """The trainer's step for a network with named objectives (see the module's docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        model, cfg, net = trainer.model, trainer.cfg, trainer.net
        if trainer.ranks > 1 and trainer.sync_batchnorm:
            raise RuntimeUserError(f"`{net.name}` has several objectives, which train without "
                                   "synchronised batchnorm", "drop --sync-batchnorm")
        trainable = set(model.trainable_names())
        self.objectives = {o.name: o for o in net.objectives}
        self.order = list(net.alternate or self.objectives)
        self.trained = {}
        optimizers = {}
        for o in net.objectives:
            names = [p for p in o.params if p in trainable]
            if not names:
                raise RuntimeUserError(f"objective `{o.name}` trains {', '.join(o.trains)}, whose parameters are "
                                       "all frozen", "unfreeze some of them, or remove the objective")
            self.trained[o.name] = set(names)
            try:
                optimizers[o.name] = model.device.make_optimizer(cfg.optimizer, {k: model._dev[k] for k in names},
                                                                 lr=cfg.lr, **cfg.optimizer_args)
            except (ValueError, TypeError) as e:
                raise RuntimeUserError(f"training setting: {e}", "see docs/LANGUAGE.md, section train") from None
        self.opt = ObjectiveOptimizers(optimizers)
        self._plans = {}
        self._nets = {o.name: dataclasses.replace(net, loss=o.loss) for o in net.objectives}

    def plan(self, name, batch, symbols):
        """The training plan whose loss is objective `name`'s total and whose trainable
        parameters are that objective's (cached per batch size)."""
        key = (name, batch, tuple(sorted(symbols.items())))
        if key not in self._plans:
            m = self.trainer.model
            self._plans[key] = Plan(self._nets[name], m._dev, m.device, batch, symbols, True, self.trained[name])
        return self._plans[key]

    def step_one(self, name, feeds, lr) -> float:
        """One objective's forward, backward and optimizer step on `feeds`; returns its value."""
        t, m = self.trainer, self.trainer.model
        fed = m._feeds(feeds)
        batch, symbols = m._bindings(fed)
        plan = self.plan(name, batch, symbols)
        plan.set_inputs(fed)
        m.ctx.training = True
        plan.forward(m.ctx)
        value = plan.loss_value()
        if not math.isfinite(value):
            raise divergence(t.epoch, t.step_in_epoch, f"objective `{name}` is {value}", plan, t.net)
        grads = plan.param_grads
        average = t.comm.begin_gradient_average(grads, 1.0 / t.ranks, m.device, plan.gradient_order)
        plan.backward(m.ctx, average)
        if average is not None:
            average.finish()
        if t.cfg.clip_grad_norm:
            m.device.clip_grad_norm(grads, t.cfg.clip_grad_norm)
        if t.cfg.clip_grad_value:
            m.device.clip_grad_value(grads, t.cfg.clip_grad_value)
        self.opt.optimizers[name].step(grads, lr)
        return value

    def step(self, feeds, lr):
        """Every objective in turn on one batch: (their sum, no prediction, each one's value in
        the declaration order, which is the order of the trainer's terms)."""
        t = self.trainer
        xb = feeds.get(t.x_name)
        if t.augment is not None and xb is not None and xb.ndim == 4:
            feeds = {**feeds, t.x_name: t.augment(xb, t._sliced(t.aug_rng))}
        values = {}
        for name in self.order:
            values[name] = self.step_one(name, feeds, lr)
        if t.ema is not None:
            t.ema.update()
        terms = [values[o] for o in self.objectives]
        return sum(terms), None, terms
