"""Training-time data augmentation for image batches (N, C, H, W), vectorised over the batch.

Random numbers are drawn from the caller's generator in a fixed order (crop offsets, flip
flags, brightness offsets), each as one array over the batch, so the result depends only on
the generator's state and a checkpointed generator resumes the same augmentations.
"""
from __future__ import annotations

import numpy as np


class Augment:
    """random_crop_pad: torchvision RandomCrop(size=(H, W), padding=pad) with zero fill;
    hflip: horizontal flip with probability 0.5; brightness: add one uniform offset in
    [-brightness, brightness] to every pixel of a sample (no clipping, since inputs may be
    normalised)."""

    def __init__(self, random_crop_pad: int = 0, hflip: bool = False, brightness: float = 0.0):
        if random_crop_pad < 0:
            raise ValueError(f"random_crop_pad must not be negative, got {random_crop_pad}")
        if brightness < 0:
            raise ValueError(f"brightness must not be negative, got {brightness}")
        self.pad = random_crop_pad
        self.hflip = hflip
        self.brightness = brightness

    def __call__(self, x_batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new float32 batch; `x_batch` is left unchanged."""
        if x_batch.ndim != 4:
            raise ValueError(f"augmentation needs image batches (N, C, H, W), got shape {x_batch.shape}")
        n, _, h, w = x_batch.shape
        out = np.array(x_batch, dtype=np.float32, copy=True)
        if self.pad:
            p = self.pad
            padded = np.zeros((n, out.shape[1], h + 2 * p, w + 2 * p), dtype=np.float32)
            padded[:, :, p:p + h, p:p + w] = out
            # Top-left corner of each sample's crop inside the padded image.
            top = rng.integers(0, 2 * p + 1, size=n)
            left = rng.integers(0, 2 * p + 1, size=n)
            rows = (top[:, None] + np.arange(h))[:, None, :, None]
            cols = (left[:, None] + np.arange(w))[:, None, None, :]
            samples = np.arange(n)[:, None, None, None]
            channels = np.arange(out.shape[1])[None, :, None, None]
            out = padded[samples, channels, rows, cols]
        if self.hflip:
            flip = rng.random(n) < 0.5
            out[flip] = out[flip, :, :, ::-1]
        if self.brightness:
            offsets = rng.uniform(-self.brightness, self.brightness, size=n).astype(np.float32)
            out += offsets[:, None, None, None]
        return out
