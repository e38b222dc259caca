"""Training settings: a network's `train { }` section with command-line flags on top.

One TrainConfig decides everything the trainer does besides the data; it is saved in every
training checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from dslc.train_section import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_SHORTHANDS,
    OPTIMIZERS,
    optimizer_settings,
    schedule_settings,
    split_call,
)

from .errors import RuntimeUserError

_SETTINGS_HINT = "the optimizers, schedules and their arguments: docs/LANGUAGE.md, section \"Training settings\""


@dataclass
class TrainConfig:
    epochs: int = 10
    batch: int = 32
    optimizer: str = DEFAULT_OPTIMIZER
    lr: float = 1e-3
    # The optimizer's other arguments, every one once validate() has run (defaults filled in):
    # what was given is what is used, and describe() shows it all. With the train section's
    # `lr_mult(...)`, also "lr_mult": {layer: multiplier}, which make_optimizer takes beside them.
    optimizer_args: dict = field(default_factory=dict)
    schedule: str = "constant"
    schedule_args: dict = field(default_factory=dict)
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    augment: dict = field(default_factory=dict)
    seed: int = 0
    val_fraction: float = 0.2
    # Exponential-moving-average weights' decay (runtime/ema.py), None: none kept.
    ema: float | None = None
    # Optimizer arguments of the train section that an optimizer chosen by flag does not take
    # ("momentum 0.9" when `--optimizer adam` replaces `sgd(momentum = 0.9)`), for describe().
    dropped: list = field(default_factory=list)

    @classmethod
    def from_network(cls, net, **flags):
        """The network's `train { }` section, then any flag that is not None on top.

        Flags that name an argument of the optimizer in effect (`lr`, `momentum`, ...) set it; one
        the optimizer does not take is refused. A flag `optimizer` that differs from the section's
        keeps the section's arguments the new optimizer takes and drops (and reports) the others.
        """
        cfg = cls()
        args = {}
        for key, v in net.train.items():
            if key == "optimizer":
                name, _, kwargs = split_call(v)
                cfg.optimizer = str(name)
                args.update(kwargs)
            elif key in OPTIMIZER_SHORTHANDS:
                args[key] = v
            elif key == "schedule":
                name, _, kwargs = split_call(v)
                cfg.schedule, cfg.schedule_args = str(name), kwargs
            elif key == "augment":
                cfg.augment = split_call(v)[2]
            elif key == "lr_mult":
                args["lr_mult"] = dict(split_call(v)[2])
            elif key != "init":            # the model reads `init` when it creates the parameters
                setattr(cfg, key, v)
        flags = {k: v for k, v in flags.items() if v is not None}
        name = flags.pop("optimizer", None)
        if name is not None and name != cfg.optimizer:
            takes = OPTIMIZERS.get(name, {})
            cfg.dropped = [f"{k} {_show(v)}" for k, v in args.items() if k not in takes and k != "lr_mult"]
            args = {k: v for k, v in args.items() if k in takes or k == "lr_mult"}
            cfg.optimizer = str(name)
        optimizer_words = {k for table in OPTIMIZERS.values() for k in table}
        for key, v in flags.items():
            if key == "lr_mult":
                args["lr_mult"] = {**args.get("lr_mult", {}), **v}
            elif key in optimizer_words:
                args[key] = v
            elif key in cls.__dataclass_fields__ and key not in ("optimizer_args", "dropped"):
                setattr(cfg, key, v)
            else:
                known = sorted(set(cls.__dataclass_fields__) - {"optimizer_args", "dropped"} | optimizer_words)
                raise RuntimeUserError(f"unknown training option `{key}`", "options: " + ", ".join(known))
        cfg.lr = args.pop("lr", cfg.lr)
        cfg.optimizer_args = args
        cfg.validate()
        if "lr_mult" in args and hasattr(net, "nodes"):
            _check_lr_mult(args["lr_mult"], net)
        return cfg

    def validate(self):
        """Check every setting and fill in the optimizer's and schedule's defaults."""
        def bad(what, hint):
            raise RuntimeUserError(f"training setting: {what}", hint)
        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad(f"epochs must be a whole number >= 1, got {self.epochs}", "e.g. --epochs 10")
        if not isinstance(self.batch, int) or self.batch < 1:
            bad(f"batch must be a whole number >= 1, got {self.batch}", "e.g. --batch 32")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0 or not math.isfinite(self.lr):
            bad(f"learning rate must be a positive number, got {self.lr}", "e.g. --lr 0.01")
        lr_mult = self.optimizer_args.get("lr_mult")
        if lr_mult is not None:
            if not isinstance(lr_mult, dict) or not lr_mult or any(
                    not isinstance(k, str) or isinstance(m, bool) or not isinstance(m, (int, float))
                    or not m >= 0 or not math.isfinite(m) for k, m in lr_mult.items()):
                bad(f"lr_mult takes layer names with multipliers >= 0, got {lr_mult!r}",
                    "e.g. lr_mult(conv1 = 0.1, fc = 2) in the train section")
        try:
            given = {k: v for k, v in self.optimizer_args.items() if k != "lr_mult"}
            full = optimizer_settings(self.optimizer, {**given, "lr": self.lr})
            self.schedule_args = schedule_settings(self.schedule or "constant", self.schedule_args)
        except ValueError as e:
            bad(str(e), _SETTINGS_HINT)
        self.schedule = self.schedule or "constant"
        self.optimizer_args = {k: v for k, v in full.items() if k != "lr"}
        if lr_mult is not None:
            self.optimizer_args["lr_mult"] = dict(lr_mult)
        if not isinstance(self.seed, int) or self.seed < 0:
            bad(f"seed must be a whole number >= 0, got {self.seed}", "e.g. --seed 1")
        if self.ema is not None:
            from .ema import check_decay
            self.ema = check_decay(self.ema)
        unknown = set(self.augment) - {"crop", "flip", "brightness"}
        if unknown:
            bad(f"augment takes crop, flip and brightness, not {', '.join(sorted(unknown))}",
                "e.g. augment(crop = 4, flip = true, brightness = 0.1)")

    def describe(self) -> str:
        """Every setting that shapes the updates, as the run line shows them:
        "sgd lr 0.05 momentum 0.9 nesterov false weight_decay 0, schedule constant, no clipping, ..."."""
        parts = [" ".join([self.optimizer, "lr", _show(self.lr)]
                          + [f"{k} {_show(v)}" for k, v in self.optimizer_args.items() if k != "lr_mult"])]
        if self.optimizer_args.get("lr_mult"):
            parts[0] += " lr_mult " + " ".join(f"{k} {_show(v)}" for k, v in self.optimizer_args["lr_mult"].items())
        if self.dropped:
            parts[0] += f" (not taken by {self.optimizer}: {', '.join(self.dropped)})"
        parts.append(" ".join(["schedule", self.schedule] + [f"{k} {_show(v)}" for k, v in self.schedule_args.items()]))
        clips = [f"{k} {_show(getattr(self, k))}" for k in ("clip_grad_norm", "clip_grad_value") if getattr(self, k)]
        parts.append(", ".join(clips) or "no clipping")
        if self.ema is not None:
            parts.append(f"ema {_show(self.ema)}")
        if self.augment:
            parts.append(" ".join(["augment"] + [f"{k} {_show(v)}" for k, v in self.augment.items()]))
        parts.append(f"batch {self.batch}, {self.epochs} epoch{'' if self.epochs == 1 else 's'}, seed {self.seed}")
        return ", ".join(parts)


def _check_lr_mult(lr_mult: dict, net):
    """Every key of `lr_mult` names a parameter, or a layer or block that holds some."""
    from dslc.diagnostics import did_you_mean
    names = [f"{node.name}.{p}" for node in net.nodes() if not node.shares for p in node.params]
    prefixes = sorted({".".join(p.split(".")[:i]) for p in names for i in range(1, p.count(".") + 2)})
    for key in lr_mult:
        if key not in prefixes:
            layers = sorted({p.rsplit(".", 1)[0] for p in names})
            raise RuntimeUserError(
                f"training setting: lr_mult names `{key}`, which holds no parameters of {net.name}",
                did_you_mean(key, prefixes) or f"layers with parameters: {', '.join(layers[:12])}"
                + (", ..." if len(layers) > 12 else ""))


def _show(v) -> str:
    """A setting as the language writes it: `true`, `0.9`, `0`."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
