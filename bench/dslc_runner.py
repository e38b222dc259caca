"""One benchmark network in dslc: a training step exactly as `dslc run` takes it, and inference.

The training step is dslc.runtime.train.Trainer's: Model.forward(training=True), the plan's
backward, then SGD with momentum 0.9 on the plan's parameter gradients. This module must not
import torch: bench/worker.py measures dslc's peak memory with it.
"""
from __future__ import annotations

from dslc.compiler import compile_file
from dslc.runtime.data import Dataset
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer
from dslc.summary import totals

from .suite import LEARNING_RATE, MOMENTUM, BenchModel


class DslcRunner:
    framework = "dslc"

    def __init__(self, spec: BenchModel, batch: int, seed: int = 0):
        self.x, self.y = spec.make_batch(batch, seed)
        net, _warnings = compile_file(spec.net_file, {})
        self.model = Model(net, seed=seed)
        cfg = TrainConfig.from_network(net, optimizer="momentum", lr=LEARNING_RATE, momentum=MOMENTUM,
                                       weight_decay=0.0, batch=batch, seed=seed)
        self.trainer = Trainer(self.model, cfg, Dataset(self.x, self.y, spec.name, spec.classes), None,
                               progress=False)
        self.x_name = spec.x_name

    def parameter_count(self) -> int:
        """Trainable parameters, as torch counts them (batchnorm running statistics are buffers)."""
        return totals(self.model.net)["parameters"]

    def train_step(self) -> float:
        feeds = self.trainer._feeds({"x": self.x, "y": self.y})
        loss, _prediction, _terms = self.trainer._step(feeds, LEARNING_RATE)
        return loss

    def infer_step(self) -> None:
        self.model.forward(training=False, **{self.x_name: self.x})
