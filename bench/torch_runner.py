"""One benchmark network in PyTorch: the training step a PyTorch user writes, and inference.

Training: forward in train mode, cross-entropy (over every step for the language model),
backward, torch.optim.SGD with momentum 0.9 (the same learning rate as dslc's runner).
Inference: eval mode under torch.inference_mode(), the fastest eager setting.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .suite import LEARNING_RATE, MOMENTUM, BenchModel
from .torch_models import TORCH_MODELS, parameter_count


class TorchRunner:
    framework = "torch"

    def __init__(self, spec: BenchModel, batch: int, seed: int = 0):
        torch.manual_seed(seed)
        x, y = spec.make_batch(batch, seed)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.model = TORCH_MODELS[spec.name]()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def parameter_count(self) -> int:
        return parameter_count(self.model)

    def train_step(self) -> float:
        self.model.train()
        self.optimizer.zero_grad()
        logits = self.model(self.x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.reshape(-1))
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def infer_step(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self.x)
