"""Shared fixtures: small data sets made on the fly (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest


def make_pattern_images(n: int, size: int = 16, classes: int = 4, seed: int = 0):
    """Images whose class decides a colour and a stripe orientation, plus noise.

    Returns (images uint8 (n, size, size, 3), labels int64 (n,)).
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((n, size, size, 3), dtype=np.float32)
    palette = rng.uniform(40, 215, size=(classes, 3))
    for i, c in enumerate(labels):
        stripes = np.sin((xx if c % 2 else yy) * (0.6 + 0.3 * (c // 2)) + rng.uniform(0, 6))
        img = palette[c][None, None, :] + 35 * stripes[..., None]
        images[i] = img + rng.normal(0, 12, size=img.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.getbasetemp() / "selfsup-cache"))


@pytest.fixture
def bf16_cpu(monkeypatch):
    """precision=auto picks bf16 here, as on a CPU with native bf16 (SELFSUP_FORCE_BF16=1)."""
    monkeypatch.setenv("SELFSUP_FORCE_BF16", "1")


@pytest.fixture
def tiny_npz(tmp_path):
    """A labeled .npz of 64 RGB 16x16 images in 4 classes; returns its path."""
    images, labels = make_pattern_images(64)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["a", "b", "c", "d"]))
    return path
