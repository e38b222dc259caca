"""LeNet-5 as shipped (models/lenet5.net: sgd(lr = 0.05, momentum = 0.9), batch 64) reaches what
PyTorch reaches with the same settings and data.

Both train on the bundled digits upsampled to 32x32 (dslc's loader does the upsampling for a
32x32 input), on the same split, from the same initial parameters, in the same batch order
(the trainer's data stream is replayed), with torch.optim.SGD(lr = 0.05, momentum = 0.9) and a
mean cross-entropy. Any difference in the optimizer's formula, the loss's reduction or a
silently dropped setting moves the validation accuracy by more than the 1 point allowed.
"""
import numpy as np
import pytest
import torch
from torch import nn

from dslc.compiler import compile_file
from dslc.runtime.config import TrainConfig
from dslc.runtime.data import batches, load_dataset
from dslc.runtime.model import Model
from dslc.runtime.train import Trainer

EPOCHS = 3


class LeNet5(nn.Module):
    """models/lenet5.net layer for layer: tanh, 2x2 average pools, C5 as a 5x5 conv."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, classes)

    def forward(self, x):
        x = nn.functional.avg_pool2d(torch.tanh(self.c1(x)), 2)
        x = nn.functional.avg_pool2d(torch.tanh(self.c3(x)), 2)
        x = torch.flatten(torch.tanh(self.c5(x)), 1)
        return self.output(torch.tanh(self.f6(x)))


def _accuracy(logits, y):
    return float(np.mean(np.argmax(logits, axis=1) == y))


@pytest.mark.slow
def test_lenet5_as_shipped_matches_torch_within_one_point():
    net, _ = compile_file("models/lenet5.net")
    cfg = TrainConfig.from_network(net, epochs=EPOCHS)
    assert (cfg.optimizer, cfg.lr, cfg.optimizer_args["momentum"], cfg.batch) == ("sgd", 0.05, 0.9, 64)
    train, val = load_dataset("digits", x_shape=(1, 32, 32), x_dtype="float32", y_shape=(), y_dtype="int64",
                              val_fraction=cfg.val_fraction, seed=cfg.seed, classes=10)

    model = Model(net, seed=cfg.seed)
    initial = {k: v.copy() for k, v in model.params.items()}
    trainer = Trainer(model, cfg, train, val, progress=False, log=lambda s: None)
    trainer.fit()
    ours = trainer.evaluate(val)["accuracy"]

    torch.manual_seed(0)
    ref = LeNet5()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.from_numpy(initial[name]))
    opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, momentum=cfg.optimizer_args["momentum"])
    loss_fn = nn.CrossEntropyLoss()
    data_rng = np.random.default_rng([cfg.seed, 1])          # the trainer's data-order stream
    for _ in range(EPOCHS):
        for xb, yb in batches(train, cfg.batch, shuffle=True, rng=data_rng, drop_last=True):
            opt.zero_grad()
            loss_fn(ref(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
            opt.step()
    with torch.no_grad():
        theirs = _accuracy(ref(torch.from_numpy(val.x)).numpy(), val.y)

    assert theirs > 0.8, f"the reference itself did not learn ({theirs:.3f})"
    assert abs(ours - theirs) <= 0.01, f"dslc {ours:.4f}, torch {theirs:.4f}"
