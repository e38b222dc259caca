"""Training settings: a network's `train { }` section with command-line flags on top.

One TrainConfig decides everything the trainer does besides the data; it is saved in every
training checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import RuntimeUserError


@dataclass
class TrainConfig:
    epochs: int = 10
    batch: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str | None = None
    schedule_args: dict = field(default_factory=dict)
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    augment: dict = field(default_factory=dict)
    seed: int = 0
    val_fraction: float = 0.2

    @classmethod
    def from_network(cls, net, **flags):
        """The network's `train { }` section, then any flag that is not None on top."""
        cfg = cls()
        for key, v in net.train.items():
            cfg._apply_setting(key, v)
        for key, v in flags.items():
            if v is not None:
                if not hasattr(cfg, key):
                    raise RuntimeUserError(f"unknown training option `{key}`",
                                           "options: " + ", ".join(cls.__dataclass_fields__))
                setattr(cfg, key, v)
        cfg.validate()
        return cfg

    def _apply_setting(self, key, v):
        call = isinstance(v, tuple) and len(v) == 4 and v[0] == "call"
        if key == "optimizer":
            name, kwargs = (v[1], v[3]) if call else (str(v), {})
            self.optimizer = name
            for k, x in kwargs.items():
                if k not in ("lr", "weight_decay", "momentum"):
                    raise RuntimeUserError(f"train section: `{name}` takes no argument `{k}`",
                                           "optimizer arguments: lr, weight_decay, momentum")
                setattr(self, k, x)
        elif key == "schedule":
            self.schedule, self.schedule_args = (v[1], dict(v[3])) if call else (str(v), {})
        elif key == "augment":
            self.augment = dict(v[3]) if call else {}
        else:
            setattr(self, key, v)

    def validate(self):
        def bad(what, hint):
            raise RuntimeUserError(f"training setting: {what}", hint)
        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad(f"epochs must be a whole number >= 1, got {self.epochs}", "e.g. --epochs 10")
        if not isinstance(self.batch, int) or self.batch < 1:
            bad(f"batch must be a whole number >= 1, got {self.batch}", "e.g. --batch 32")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0 or not math.isfinite(self.lr):
            bad(f"learning rate must be a positive number, got {self.lr}", "e.g. --lr 0.01")
        unknown = set(self.augment) - {"crop", "flip", "brightness"}
        if unknown:
            bad(f"augment takes crop, flip and brightness, not {', '.join(sorted(unknown))}",
                "e.g. augment(crop = 4, flip = true, brightness = 0.1)")
