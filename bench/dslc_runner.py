"""One benchmark network in dslc: a training step exactly as `dslc run` takes it, and inference.

The training step is dslc.runtime.train.Trainer's: Model.forward(training=True), the plan's
backward, then SGD with momentum 0.9 on the plan's parameter gradients. This module must not
import torch: bench/worker.py measures dslc's peak memory with it.
"""
from __future__ import annotations

import os

from dslc.compiler import compile_file
from dslc.runtime import compile_ahead
from dslc.runtime.data import Dataset
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer
from dslc.summary import totals

from .suite import LEARNING_RATE, MOMENTUM, BenchModel


def forked_children() -> list[int]:
    """Children of this process that run its own program (forked, not exec'ed: compile-ahead
    helpers, not e.g. inductor's compile workers); empty where /proc cannot tell."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            mine = f.read()
        children = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                children += [int(pid) for pid in f.read().split()]
    except OSError:
        return []
    forked = []
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == mine:
                    forked.append(pid)
        except OSError:          # it ended meanwhile
            pass
    return forked


class DslcRunner:
    framework = "dslc"

    def __init__(self, spec: BenchModel, batch: int, seed: int = 0):
        self.x, self.y = spec.make_batch(batch, seed)
        net, _warnings = compile_file(spec.net_file, dict(spec.overrides))
        self.model = Model(net, seed=seed)
        cfg = TrainConfig.from_network(net, optimizer="momentum", lr=LEARNING_RATE, momentum=MOMENTUM,
                                       weight_decay=0.0, batch=batch, seed=seed)
        self.trainer = Trainer(self.model, cfg, Dataset(self.x, self.y, spec.name, spec.classes), None,
                               progress=False)
        self.x_name = spec.x_name

    def busy(self) -> bool:
        """Whether a compile-ahead helper may still be running: one not yet asked to stop (that
        happens after a plan's first complete step), or a forked child of this process (its
        command line is this process's) still ending. The warm-up goes on until none is."""
        if compile_ahead.helpers_unstopped():
            return True
        return bool(forked_children())

    def parameter_count(self) -> int:
        """Trainable parameters, as torch counts them (batchnorm running statistics are buffers)."""
        return totals(self.model.net)["parameters"]

    def train_step(self) -> float:
        feeds = self.trainer._feeds({"x": self.x, "y": self.y})
        loss, _prediction, _terms = self.trainer._step(feeds, LEARNING_RATE)
        return loss

    def infer_step(self) -> None:
        self.model.forward(training=False, **{self.x_name: self.x})
