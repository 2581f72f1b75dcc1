"""Pretext-task metrics of a trained method on held-out images, through one interface."""

from __future__ import annotations

import numpy as np
import torch

from selfsup.data import ImageSource
from selfsup.methods import Method
from selfsup.models import load_method, random_method  # noqa: F401  (re-exported)


@torch.no_grad()
def evaluate_pretext(
    method: Method,
    source: ImageSource,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Average ``method.pretext_metrics`` over ``source`` in batches (weighted by batch size)."""
    device = torch.device(device)
    method = method.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    totals: dict[str, float] = {}
    count = 0
    for start in range(0, len(source), batch_size):
        idx = np.arange(start, min(start + batch_size, len(source)))
        if len(idx) < 2:
            continue
        images = source.as_tensor_chw(idx).to(device)
        for key, value in method.pretext_metrics(images, generator).items():
            totals[key] = totals.get(key, 0.0) + value * len(idx)
        count += len(idx)
    return {key: value / max(count, 1) for key, value in totals.items()}
