"""Feature extraction, once per (encoder, dataset), cached on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selfsup.augment import build_pipeline
from selfsup.backbones import Backbone
from selfsup.data import ImageSource
from selfsup.methods.base import normalization
from selfsup.train.precision import autocast_dtype


def match_channels(images: Tensor, channels: int) -> Tensor:
    """Make a uint8/float batch (N, C, H, W) have ``channels`` channels (grey <-> RGB)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(images.dtype)
    raise ValueError(f"cannot map {c}-channel images to a {channels}-channel encoder")


@torch.no_grad()
def extract_features(
    encoder: Backbone,
    source: ImageSource,
    *,
    image_size: int,
    normalize: str,
    in_channels: int,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> Tensor:
    """Encoder features (N, D) float32 of every image in ``source``, without augmentation."""
    device = torch.device(device)
    mean, std = normalization(normalize, in_channels)
    pipeline = build_pipeline("eval", image_size, mean, std)
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = autocast_dtype(device, precision)
    encoder = encoder.to(device).eval()
    out = []
    for start in range(0, len(source), batch_size):
        idx = np.arange(start, min(start + batch_size, len(source)))
        x = source.as_tensor_chw(idx).to(device, non_blocking=True)
        x = pipeline(match_channels(x, in_channels), generator)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            f = encoder(x)
        out.append(f.float().cpu())
    return torch.cat(out)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup")) / "features"


def cached_features(
    encoder: Backbone,
    identity: str,
    source: ImageSource,
    dataset_key: str,
    *,
    image_size: int,
    normalize: str,
    in_channels: int,
    cache_dir: Path | None = None,
    **kwargs: object,
) -> Tensor:
    """:func:`extract_features`, memoised on disk by (encoder identity, dataset, preprocessing)."""
    cache_dir = cache_dir or default_cache_dir()
    key = hashlib.sha256(
        f"{identity}|{dataset_key}|{len(source)}|{image_size}|{normalize}|{in_channels}".encode()
    ).hexdigest()[:24]
    path = cache_dir / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    feats = extract_features(
        encoder,
        source,
        image_size=image_size,
        normalize=normalize,
        in_channels=in_channels,
        **kwargs,  # type: ignore[arg-type]
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(feats, tmp)
    os.replace(tmp, path)
    return feats
