"""Data augmentation: each transform against a per-sample reference, determinism, and bounds."""
import numpy as np
import pytest
import torch

from dslc.runtime.augment import Augment


def image_batch(n=6, c=2, h=5, w=7, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32) + 1.0


def test_random_crop_matches_padded_crop_per_sample():
    x = image_batch()
    pad = 2
    out = Augment(random_crop_pad=pad)(x, np.random.default_rng(7))
    # The same draws, in the documented order: tops, then lefts.
    draws = np.random.default_rng(7)
    tops = draws.integers(0, 2 * pad + 1, size=len(x))
    lefts = draws.integers(0, 2 * pad + 1, size=len(x))
    padded = torch.nn.functional.pad(torch.tensor(x), (pad, pad, pad, pad)).numpy()
    h, w = x.shape[2:]
    for i, (top, left) in enumerate(zip(tops, lefts)):
        np.testing.assert_array_equal(out[i], padded[i, :, top:top + h, left:left + w])
    assert out.shape == x.shape and out.dtype == np.float32


def test_random_crop_reaches_every_offset():
    x = image_batch(n=400, c=1, h=3, w=3)
    out = Augment(random_crop_pad=1)(x, np.random.default_rng(0))
    # Shifting a constant-ish image leaves a zero border on the side it moved away from;
    # count distinct zero patterns, one per (top, left) offset.
    patterns = {tuple((out[i, 0] == 0).ravel()) for i in range(len(x))}
    assert len(patterns) == 9


def test_hflip_flips_about_half_and_only_horizontally():
    x = image_batch(n=200)
    out = Augment(hflip=True)(x, np.random.default_rng(3))
    flipped = np.array([np.array_equal(out[i], x[i, :, :, ::-1]) for i in range(len(x))])
    unchanged = np.array([np.array_equal(out[i], x[i]) for i in range(len(x))])
    assert np.all(flipped ^ unchanged)
    assert 70 < flipped.sum() < 130


def test_brightness_adds_one_bounded_offset_per_sample():
    x = image_batch(n=100)
    out = Augment(brightness=0.25)(x, np.random.default_rng(4))
    offsets = (out - x).reshape(len(x), -1)
    np.testing.assert_allclose(offsets, offsets[:, :1].repeat(offsets.shape[1], axis=1), atol=1e-6)
    assert np.all(np.abs(offsets) <= 0.25 + 1e-6)
    assert offsets[:, 0].std() > 0.05


def test_deterministic_given_rng_state_and_leaves_input_alone():
    x = image_batch()
    before = x.copy()
    aug = Augment(random_crop_pad=2, hflip=True, brightness=0.1)
    a = aug(x, np.random.default_rng(11))
    b = aug(x, np.random.default_rng(11))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, before)
    assert not np.array_equal(a, aug(x, np.random.default_rng(12)))


def test_everything_off_returns_an_equal_float32_copy():
    x = image_batch().astype(np.float64)
    out = Augment()(x, np.random.default_rng(0))
    assert out.dtype == np.float32 and out is not x
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_rejects_non_image_batches_and_bad_settings():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        Augment(hflip=True)(np.zeros((2, 8), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError):
        Augment(random_crop_pad=-1)
    with pytest.raises(ValueError):
        Augment(brightness=-0.5)
