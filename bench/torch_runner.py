"""One benchmark network in PyTorch: the training step a PyTorch user writes, and inference.

Training: forward in train mode, cross-entropy (over every step for the language model),
backward, torch.optim.SGD with momentum 0.9 (the same learning rate as dslc's runner).
Inference: eval mode under torch.inference_mode(), the fastest eager setting.
TorchCompiledRunner: the same steps with the model wrapped in torch.compile (inductor, default
mode), the way a PyTorch 2 user speeds up a model; its first calls compile (timed apart).
"""
from __future__ import annotations

import os
import shutil

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


def compile_unavailable() -> str | None:
    """Why inductor cannot compile on this machine, or None when it may: it builds its kernels
    with a C++ compiler (the CXX variable's, or the first of torch's candidates on PATH)."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in candidates):
        return f"no C++ compiler ({' / '.join(candidates)}) on PATH, which inductor needs"
    return None


class TorchCompiledRunner(TorchRunner):
    framework = "torch.compile"

    def __init__(self, spec: BenchModel, batch: int, seed: int = 0):
        super().__init__(spec, batch, seed)
        # the optimizer holds the eager module's parameters, which the compiled module shares
        self.model = torch.compile(self.model)

    def parameter_count(self) -> int:
        return parameter_count(self.model._orig_mod)
