"""Polyak / exponential-moving-average weights (`train { ema 0.999 }` or `dslc run --ema 0.999`).

After every optimizer step each trainable parameter's average moves toward it:
    avg = d * avg + (1 - d) * param,   d = min(decay, (1 + n) / (10 + n))
where n counts the steps taken before this one. The ramp of d over the first steps (as
TensorFlow's ExponentialMovingAverage with num_updates does) keeps the average from being
dominated by the initial weights on short runs: with a fixed 0.999 the initialisation would
still weigh e^-1 after a thousand steps. Batchnorm's running statistics and other buffers are
not averaged: evaluating the averaged weights uses the model's current buffers.

The trainer calls update() after each step, end_epoch() after each epoch (the validation loss
and accuracy of the averaged weights join the epoch's record as `ema_val_loss` and
`ema_val_accuracy`, and a line reports them), and arrays()/load() to save and resume the
averages (`ema/NAME` arrays in the checkpoint beside `param/NAME`). `dslc eval` and
`dslc predict` use the `ema/` arrays when a checkpoint holds them (and say so).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .errors import RuntimeUserError

PREFIX = "ema/"
STEPS_KEY = "ema_steps"


def check_decay(decay, where: str = "ema") -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1 \
            or not math.isfinite(decay):
        raise RuntimeUserError(f"training setting: {where} must be a decay between 0 and 1 (exclusive), got {decay!r}",
                               "e.g. --ema 0.999 (or `ema 0.999` in the train section)")
    return float(decay)


class EMA:
    def __init__(self, model, decay: float):
        self.model = model
        self.decay = check_decay(decay)
        self.names = list(model.trainable_names())
        self.steps = 0
        # Kept on the host: one copy per parameter, updated in place.
        host = model.params
        self.avg = {k: np.array(host[k], dtype=np.float32, copy=True) for k in self.names}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    def update(self):
        d = self.current_decay()
        dev, to_host = self.model._dev, self.model.device.to_host
        for k in self.names:
            a = self.avg[k]
            a *= d
            a += (1.0 - d) * to_host(dev[k])
        self.steps += 1

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own afterwards."""
        saved = {k: np.array(self.model.device.to_host(self.model._dev[k]), copy=True) for k in self.names}
        try:
            for k in self.names:
                self.model.set_param(k, self.avg[k])
            yield self.model
        finally:
            for k, v in saved.items():
                self.model.set_param(k, v)

    def end_epoch(self, trainer, record: dict):
        """The averaged weights' validation loss and accuracy into `record`, and a line saying them."""
        if trainer.val is None or not len(trainer.val):
            return
        with self.applied():
            v = trainer.evaluate(trainer.val)
        record["ema_val_loss"], record["ema_val_accuracy"] = v["loss"], v["accuracy"]
        acc = f"  val acc {v['accuracy']:.4f}" if v["accuracy"] is not None else ""
        trainer.log(f"  ema {self.decay:g} weights: val loss {v['loss']:.4f}{acc}")

    def arrays(self) -> dict:
        out = {PREFIX + k: v for k, v in self.avg.items()}
        out[STEPS_KEY] = np.array(self.steps, dtype=np.int64)
        return out

    def load(self, arrays: dict):
        """The averages of a checkpoint; one saved without them (EMA newly switched on) starts
        them from the current parameters."""
        if STEPS_KEY not in arrays:
            return
        for k in self.names:
            if PREFIX + k in arrays:
                self.avg[k] = np.array(arrays[PREFIX + k], dtype=np.float32, copy=True)
        self.steps = int(arrays[STEPS_KEY])


def averaged_params(arrays: dict) -> dict | None:
    """A checkpoint's parameters with the EMA averages in place of the trained values (buffers
    as trained), or None when it holds no averages."""
    if not any(k.startswith(PREFIX) for k in arrays):
        return None
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    for k, v in arrays.items():
        if k.startswith(PREFIX):
            params[k[len(PREFIX):]] = v
    return params
