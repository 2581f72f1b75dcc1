"""Pretext-task metrics of a trained method on held-out images, through one interface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from selfsup.config import load_config
from selfsup.data import ImageSource
from selfsup.methods import Method
from selfsup.train.checkpoint import latest_checkpoint


def load_method(run_dir: str | Path, device: str | torch.device = "cpu") -> Method:
    """Rebuild a run's whole method (encoder + heads) from its config and last checkpoint."""
    from safetensors.torch import load_file

    from selfsup.train.trainer import build_method

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to load the method from")
    cfg = load_config(None, str(run_dir / "config.yaml"))
    meta = json.loads((ckpt / "meta.json").read_text())
    enc = meta["encoder"]
    data_channels = enc.get("data_channels", enc["in_channels"])  # differ for Lab methods
    method = build_method(cfg, enc["image_size"], data_channels, meta.get("num_classes"))
    method.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    return method.to(device).eval()


def random_method(
    run_dir: str | Path, device: str | torch.device = "cpu", seed: int = 0
) -> Method:
    """A run's whole method (same config and architecture) at random initialisation: the
    baseline of the evaluations that use a method's heads (e.g. label propagation)."""
    from selfsup.train.trainer import build_method

    run_dir = Path(run_dir)
    cfg = load_config(None, str(run_dir / "config.yaml"))
    enc = json.loads((run_dir / "encoder.json").read_text())
    data_channels = enc.get("data_channels", enc["in_channels"])
    torch.manual_seed(seed)
    method = build_method(cfg, enc["image_size"], data_channels, None)
    return method.to(device).eval()


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
