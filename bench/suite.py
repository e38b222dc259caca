"""The six benchmark networks: where each .net file is, its batch, and a synthetic batch of data.

The data is random (inputs from a normal distribution, labels uniform over the classes):
throughput and memory do not depend on the values, and both frameworks get the same arrays.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

# the optimizer of both frameworks' training step: SGD with momentum; the rate is small
# enough that a few dozen steps on random labels stay finite
LEARNING_RATE = 0.01
MOMENTUM = 0.9


@dataclass(frozen=True)
class BenchModel:
    name: str
    batch: int
    x_name: str                 # the data input of the .net file
    y_name: str                 # its label input
    x_shape: tuple              # one sample's input shape
    classes: int                # labels lie in [0, classes)
    sequence: bool = False      # x holds token ids (int64) and y a label per step

    @property
    def net_file(self) -> str:
        return os.path.join(MODELS_DIR, f"{self.name}.net")

    def make_batch(self, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        if self.sequence:
            x = rng.integers(0, self.classes, size=(batch, *self.x_shape), dtype=np.int64)
            y = rng.integers(0, self.classes, size=(batch, *self.x_shape), dtype=np.int64)
        else:
            x = rng.standard_normal((batch, *self.x_shape), dtype=np.float32)
            y = rng.integers(0, self.classes, size=batch, dtype=np.int64)
        return x, y


# the batches are those of the table (issue 5), so the figures compare with it
MODELS = {m.name: m for m in (
    BenchModel("lenet5_relu", 64, "image", "label", (1, 32, 32), 10),
    BenchModel("resnet18_cifar", 64, "image", "label", (3, 32, 32), 10),
    BenchModel("vgg11_bn_cifar", 64, "image", "label", (3, 32, 32), 10),
    BenchModel("googlenet_cifar", 32, "image", "label", (3, 32, 32), 10),
    BenchModel("densenet_cifar", 64, "image", "label", (3, 32, 32), 10),
    BenchModel("lstm_lm", 32, "text", "next", (64,), 65, sequence=True),
)}
