"""The benchmark networks: where each .net file is, its batch, and a synthetic batch of data.

Six CIFAR-sized networks (bench/models/, issue 5's table) and two of the zoo's ImageNet-sized
ones (models/, at 3x224x224), plus the scaling series (SCALING): one network measured at
several batch sizes or sequence lengths.

The data is random (inputs from a normal distribution, labels uniform over the classes):
throughput and memory do not depend on the values, and both frameworks get the same arrays.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
ZOO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")

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
    zoo_file: str | None = None  # the .net file's name in the zoo (models/) for an ImageNet row
    overrides: tuple = ()       # (parameter, value) pairs given to the compiler, e.g. (("T", 128),)

    @property
    def net_file(self) -> str:
        if self.zoo_file:
            return os.path.join(ZOO_DIR, self.zoo_file)
        return os.path.join(MODELS_DIR, f"{self.name}.net")

    @property
    def imagenet(self) -> bool:
        return self.zoo_file is not None

    def with_length(self, length: int) -> "BenchModel":
        """A sequence network at another sequence length T (the .net file's parameter T)."""
        if not self.sequence:
            raise ValueError(f"{self.name} is not a sequence network")
        return replace(self, x_shape=(length,), overrides=(("T", length),))

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
    # the ImageNet rows: the zoo's networks as published, at batch 16
    BenchModel("resnet50_224", 16, "image", "label", (3, 224, 224), 1000, zoo_file="resnet50.net"),
    BenchModel("densenet121_224", 16, "image", "label", (3, 224, 224), 1000, zoo_file="densenet121.net"),
)}
CIFAR_MODELS = tuple(name for name, m in MODELS.items() if not m.imagenet)
IMAGENET_MODELS = tuple(name for name, m in MODELS.items() if m.imagenet)


@dataclass(frozen=True)
class ScalingSeries:
    """One network trained at several sizes of one dimension: the batch, or the sequence length T."""
    name: str                   # the series' name on the command line (--scaling NAME)
    model: str                  # a key of MODELS
    dimension: str              # "batch" or "T"
    values: tuple

    def point(self, value: int) -> tuple[BenchModel, int]:
        """(network, batch) of one point of the series."""
        spec = MODELS[self.model]
        if self.dimension == "batch":
            return spec, value
        return spec.with_length(value), spec.batch


SCALING = {s.name: s for s in (
    ScalingSeries("batch", "resnet18_cifar", "batch", (16, 32, 64, 128, 256)),
    ScalingSeries("length", "lstm_lm", "T", (32, 64, 128, 256, 512)),
)}
