"""Feature extraction, once per (encoder, dataset), cached on disk.

Images are prepared as the encoder saw them in training, by its ``input_space`` (recorded in
``encoder.json``; see :mod:`selfsup.augment.color`): ``rgb`` — channel-matched (grey <-> RGB)
and normalised with the run's ``normalize`` statistics; ``lab_l`` / ``lab`` — RGB (grey is
expanded) converted to CIE Lab and scaled exactly as in training (``(L - 50) / 50``, ab / 110),
so a grey- or Lab-input encoder is judged on the same RGB data as every other encoder.

Precision: every evaluation protocol (features for kNN, the linear probe, clustering, OOD and
robustness; fine-tuning; the trainer's online kNN monitor) computes in
:data:`EVAL_PRECISION`, fp32, unless a caller asks otherwise, and results record it. Training's
``precision: auto`` picks bf16 on CPUs with native bf16 and fp32 elsewhere; evaluating that way
would give one model different numbers on different CPUs (and different numbers from two
protocols that put the autocast boundary in different places).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.augment import build_pipeline
from selfsup.augment.color import input_channels, rgb_to_input
from selfsup.backbones import Backbone
from selfsup.data import ImageSource
from selfsup.methods.base import NORMALIZATION, normalization
from selfsup.utils.precision import autocast_dtype

EVAL_PRECISION = "fp32"
"""The precision of every evaluation protocol unless told otherwise (module docstring)."""


def precision_name(device: str | torch.device, precision: str) -> str:
    """What ``precision`` (``auto``/``fp32``/``bf16``/``fp16``) resolves to on ``device``:
    ``"fp32"``, ``"bf16"`` or ``"fp16"`` (recorded with results)."""
    dtype = autocast_dtype(torch.device(device), precision)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def input_spec(meta: dict[str, Any]) -> dict[str, Any]:
    """How images become an encoder's input, from its ``encoder.json`` meta: ``image_size``,
    ``normalize``, ``in_channels`` and ``input_space`` (``rgb`` when the meta predates it) —
    the keyword arguments of :func:`extract_features` and :func:`cached_features`."""
    return {
        "image_size": meta["image_size"],
        "normalize": meta["normalize"],
        "in_channels": meta["in_channels"],
        "input_space": meta.get("input_space", "rgb"),
    }


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


def encoder_inputs(
    build: Callable[
        [tuple[float, ...], tuple[float, ...]], Callable[[Tensor, torch.Generator], Tensor]
    ],
    *,
    normalize: str,
    in_channels: int,
    input_space: str = "rgb",
) -> Callable[[Tensor, torch.Generator], Tensor]:
    """How uint8 images (N, C, H, W) become an encoder's input, by its ``input_space`` (module
    docstring): ``build(mean, std)`` makes the view pipeline (e.g. ``eval``, or a training
    crop + flip); RGB inputs are channel-matched and normalised with ``normalize``, Lab inputs
    converted after an unnormalised pipeline. Returns ``prepare(images, generator)`` -> float
    (N, in_channels, S, S)."""
    if input_space == "rgb":
        pipeline = build(*normalization(normalize, in_channels))
        return lambda x, g: pipeline(match_channels(x, in_channels), g)
    if input_channels(input_space) != in_channels:
        raise ValueError(
            f"input space {input_space!r} gives {input_channels(input_space)} channels, "
            f"the encoder takes {in_channels}"
        )
    pipeline = build(*NORMALIZATION["none"])
    return lambda x, g: rgb_to_input(pipeline(x, g), input_space)


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
    precision: str = EVAL_PRECISION,
    input_space: str = "rgb",
) -> Tensor:
    """Encoder features (N, D) float32 of every image in ``source``, without augmentation.

    ``input_space`` (module docstring) says how images become encoder inputs; ``normalize``
    applies to ``rgb`` only. ``precision`` is the autocast setting of the forward pass
    (default fp32, the same features on every CPU).
    """
    device = torch.device(device)
    prepare = encoder_inputs(
        lambda mean, std: build_pipeline("eval", image_size, mean, std),
        normalize=normalize,
        in_channels=in_channels,
        input_space=input_space,
    )
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = autocast_dtype(device, precision)
    encoder = encoder.to(device).eval()
    out = []
    for start in range(0, len(source), batch_size):
        idx = np.arange(start, min(start + batch_size, len(source)))
        x = prepare(source.as_tensor_chw(idx).to(device, non_blocking=True), generator)
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
    input_space: str = "rgb",
    device: str | torch.device = "cpu",
    precision: str = EVAL_PRECISION,
    **kwargs: object,
) -> Tensor:
    """:func:`extract_features`, memoised on disk by (encoder identity, dataset, preprocessing,
    resolved precision). A cache file that cannot be read is recomputed."""
    cache_dir = cache_dir or default_cache_dir()
    text = f"{identity}|{dataset_key}|{len(source)}|{image_size}|{normalize}|{in_channels}"
    if input_space != "rgb":  # rgb keys are those of before input spaces existed
        text += f"|{input_space}"
    text += f"|{precision_name(device, precision)}"
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = cache_dir / f"{key}.pt"
    if path.exists():
        try:
            feats = torch.load(path, weights_only=True)
            if isinstance(feats, Tensor) and feats.shape[0] == len(source):
                return feats
        except Exception:  # noqa: BLE001 - a torn or foreign file: compute the features again
            pass
    feats = extract_features(
        encoder,
        source,
        image_size=image_size,
        normalize=normalize,
        in_channels=in_channels,
        input_space=input_space,
        device=device,
        precision=precision,
        **kwargs,  # type: ignore[arg-type]
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per writer
    torch.save(feats, tmp)
    os.replace(tmp, path)
    return feats
