"""Small synthetic image batches shared by the method tests (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def random_images(n: int = 8, seed: int = 0, size: int = 16, channels: int = 3) -> torch.Tensor:
    """uint8 (n, channels, size, size) uniform noise from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def position_images(n: int, size: int) -> torch.Tensor:
    """uint8 (n, 3, size, size): red is each pixel's row, green its column (size <= 256)."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8).expand(n, -1, -1, -1)


def blobs(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size): a soft bright blob near the centre on a dark background, random
    colours, size and noise. Each tile's shading says where it sits relative to the centre."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2 + (2 * torch.rand(n, 2, generator=g) - 1) * size / 16
    sigma = size * (0.25 + 0.15 * torch.rand(n, generator=g))
    r2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    bump = torch.exp(-r2 / (2 * sigma[:, None, None] ** 2)).unsqueeze(1)
    fg = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)
    bg = 0.3 * torch.rand(n, 3, 1, 1, generator=g)
    img = bg + (fg - bg) * bump + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


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


def pattern_tensors(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`make_pattern_images` as tensors: uint8 ``(n, 3, 16, 16)`` and labels ``(n,)``."""
    images, labels = make_pattern_images(n, seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def pattern_batches(n_train: int = 160, n_test: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test splits (uint8 ``(n, 3, 16, 16)``) of one set of pattern images (one
    palette for both)."""
    images, _ = pattern_tensors(n_train + n_test)
    return images[:n_train], images[n_train:]


def train_briefly(method, train, steps=80, lr=3e-3, batch=32):  # type: ignore[no-untyped-def]
    """A plain AdamW loop over random batches of ``train``; returns the method in eval mode."""
    opt = torch.optim.AdamW(method.parameters(), lr=lr, weight_decay=0.0)
    method.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        idx = torch.randperm(len(train), generator=g)[:batch]
        loss, _ = method(train[idx], None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return method.eval()


def upright_scenes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) 'landscapes': a bright sky fading downwards above a random
    horizon, dark ground below, random colours and noise. Upright is readable; nothing else is."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.linspace(0, 1, size).view(1, 1, size, 1)
    horizon = 0.35 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    sky = 0.6 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    ground = 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    img = torch.where(rows < horizon, sky * (1 - 0.5 * rows), ground)
    img = img + 0.08 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


class FixedLogits(nn.Module):
    """A head that ignores its input and answers ``logits`` (kept differentiable)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(features)] + 0 * features.sum()
