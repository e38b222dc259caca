"""The learning-rate range test (L. N. Smith, "Cyclical Learning Rates for Training Neural
Networks", 2017; popularised as fastai's lr_find): train from the current weights with a
rate that grows exponentially from `start` to `end` over `steps` batches, record the loss at
each, and stop once it diverges. The suggested rate is where the smoothed loss falls fastest
against log(rate), within three decades below its lowest point; the rate of the lowest
smoothed loss is reported too (a tenth of it is the other common choice). The model's
parameters, buffers and random state are restored afterwards: the test trains nothing and
writes nothing.
"""
from __future__ import annotations

import math

import numpy as np

from .data import named_batches
from .errors import RuntimeUserError

# The loss is smoothed as fastai does (an exponential average, debiased); the test stops when it
# passes DIVERGED times its lowest value.
SMOOTHING = 0.98
DIVERGED = 4.0


def lr_range_test(model, cfg, train, start: float = 1e-7, end: float = 10.0, steps: int = 100) -> dict:
    """{"lr": [...], "loss": [...], "smoothed": [...], "suggested": rate, "lowest": rate,
    "stopped": why or None} for `steps` batches of `train` (cycled) under `cfg`'s optimizer."""
    from .train import Trainer
    if not (0 < start < end) or not math.isfinite(end):
        raise RuntimeUserError(f"the range test needs 0 < start < end, got {start:g} to {end:g}",
                               "e.g. from 1e-7 to 10")
    if steps < 5:
        raise RuntimeUserError(f"the range test needs at least 5 steps, got {steps}", "e.g. 100 steps")
    saved = {k: np.array(v, copy=True) for k, v in model.params.items()}
    saved_rng = model.ctx.rng
    trainer = Trainer(model, cfg, train, None, progress=False, log=lambda _line: None)
    rng = np.random.default_rng([cfg.seed, 1])
    drop_last = len(train) >= cfg.batch

    def batches():
        while True:
            yield from named_batches(train, cfg.batch, shuffle=True, rng=rng, drop_last=drop_last)

    lrs, losses, smoothed = [], [], []
    avg, stopped = 0.0, None
    try:
        it = batches()
        for i in range(steps):
            lr = start * (end / start) ** (i / (steps - 1))
            try:
                loss = trainer._step(trainer._feeds(next(it)), lr)[0]
            except RuntimeUserError:
                if not losses:
                    raise
                stopped = f"the loss became non-finite at rate {lr:.3g}"
                break
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            lrs.append(lr)
            losses.append(float(loss))
            smoothed.append(avg / (1 - SMOOTHING ** (i + 1)))
            if i > 5 and smoothed[-1] > DIVERGED * min(smoothed):
                stopped = f"the loss passed {DIVERGED:g} times its lowest at rate {lr:.3g}"
                break
    finally:
        for k, v in saved.items():
            model.set_param(k, v)
        model.ctx.rng = saved_rng
    s = np.array(smoothed)
    low = int(np.argmin(s))
    # The steepest fall in the three decades of rate below the lowest point: further down the
    # loss is flat and its wanderings (batch to batch noise) would give spurious slopes.
    lr_arr = np.array(lrs)
    first = max(max(1, len(s) // 10), int(np.searchsorted(lr_arr, lr_arr[low] / 1000)))
    if low - first >= 2:
        slope = np.gradient(s[first:low + 1], np.log(lr_arr[first:low + 1]))
        steep = first + int(np.argmin(slope))
    else:
        steep = low
    return {"lr": lrs, "loss": losses, "smoothed": smoothed, "suggested": lrs[steep], "lowest": lrs[low],
            "stopped": stopped}
