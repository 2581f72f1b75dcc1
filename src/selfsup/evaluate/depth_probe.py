"""Depth probe: how much metric depth a frozen encoder's spatial features hold.

A small :class:`~selfsup.heads.ConvDecoder` is trained on the frozen encoder's spatial feature
maps (extracted once, without augmentation) to predict log depth at half resolution, with the
L2 loss on log depth (Eigen et al.'s loss at lambda = 0, so the absolute scale is learnt), on
training RGB-D images; it is scored at full resolution (log depth up-sampled bilinearly) on
held-out ones, over the pixels of known depth:

* ``rmse`` (metres), ``abs_rel`` (mean |p - t| / t), ``delta1`` (share with
  ``max(p / t, t / p) < 1.25``), ``log_rmse``.

Baselines in the same units: the same decoder on a random-init encoder of the same
architecture, and predicting the training set's mean depth everywhere (``mean_depth``; also the
per-pixel mean depth map, ``mean_depth_map``, a stronger one for images from one camera rig).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.augment import build_pipeline
from selfsup.backbones import Backbone
from selfsup.data.rgbd import unpack_rgbd
from selfsup.evaluate.features import encoder_inputs
from selfsup.heads import ConvDecoder, spatial_features
from selfsup.losses import scale_invariant_log_loss
from selfsup.methods.rgbd_crossmodal import pool_depth
from selfsup.utils.precision import autocast_dtype

__all__ = ["DepthProbeConfig", "depth_probe", "mean_depth_baseline", "run_depth_probe"]


@dataclass
class DepthProbeConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    decoder_dim: int = 64
    target_downsample: int = 2
    seed: int = 0


def _sums(pred: Tensor, depth: Tensor, valid: Tensor) -> dict[str, float]:
    p = pred.float().clamp_min(1e-3)[valid]
    t = depth.float()[valid]
    ratio = torch.maximum(p / t, t / p)
    return {
        "count": float(t.numel()),
        "sq": float((p - t).pow(2).sum()),
        "abs_rel": float(((p - t).abs() / t).sum()),
        "delta1": float((ratio < 1.25).sum()),
        "log_sq": float((p.log() - t.log()).pow(2).sum()),
    }


def _finish(total: dict[str, float]) -> dict[str, float]:
    n = max(total["count"], 1.0)
    return {
        "rmse": math.sqrt(total["sq"] / n),
        "abs_rel": total["abs_rel"] / n,
        "delta1": total["delta1"] / n,
        "log_rmse": math.sqrt(total["log_sq"] / n),
    }


def _add(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


@torch.no_grad()
def _feature_maps(
    encoder: Backbone, meta: dict[str, Any], items: Tensor, device: torch.device, batch: int
) -> Tensor:
    """Frozen spatial features (N, D, h, w) of RGB-D items' RGB, prepared as in training."""
    size = int(meta["image_size"])
    prepare = encoder_inputs(
        lambda mean, std: build_pipeline("eval", size, mean, std),
        normalize=meta.get("normalize", "cifar10"),
        in_channels=int(meta["in_channels"]),
        input_space=meta.get("input_space", "rgb"),
    )
    g = torch.Generator(device=device).manual_seed(0)
    dtype = autocast_dtype(device, "auto")
    encoder = encoder.to(device).eval()
    out = []
    for i in range(0, len(items), batch):
        rgb = items[i : i + batch, :3].to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out.append(spatial_features(encoder, prepare(rgb, g)).float().cpu())
    return torch.cat(out)


def depth_probe(
    encoder: Backbone,
    meta: dict[str, Any],
    train: Tensor,
    test: Tensor,
    cfg: DepthProbeConfig | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, float], Tensor]:
    """Train a depth decoder on a frozen encoder and score it (module docstring).

    Args:
        encoder, meta: the encoder and its ``encoder.json`` meta (image size, channels,
            normalisation, input space).
        train, test: RGB-D items (N, 5, S, S) uint8 at the encoder's image size.
        cfg: probe options.
        device: where features are extracted and the decoder trains.

    Returns:
        (metrics, predicted depth of the first 8 test items (8, 1, S, S) metres).
    """
    cfg = cfg or DepthProbeConfig()
    device = torch.device(device)
    t0 = time.perf_counter()
    size = train.shape[-1]
    f_train = _feature_maps(encoder, meta, train, device, 256)
    f_test = _feature_maps(encoder, meta, test, device, 256)
    out_size = max(1, size // cfg.target_downsample)
    _, d_train, v_train = unpack_rgbd(train)
    target, ok = pool_depth(d_train, v_train, out_size)
    torch.manual_seed(cfg.seed)
    decoder = ConvDecoder(f_train.shape[1], 1, out_size, cfg.decoder_dim, 16).build(
        f_train.shape[-1]
    ).to(device)  # fmt: skip
    with torch.no_grad():  # start at the mean log depth: an untrained probe is the mean baseline
        decoder.out.bias.fill_(float(target.clamp_min(1e-3).log()[ok].mean()))
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    g = torch.Generator().manual_seed(cfg.seed)
    step = 0
    decoder.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            pred = decoder(f_train[idx].to(device))
            loss = scale_invariant_log_loss(pred, target[idx].to(device), ok[idx].to(device), 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    decoder.eval()
    totals: dict[str, float] = {}
    first = None
    with torch.no_grad():
        for i in range(0, len(test), 256):
            _, depth, valid = unpack_rgbd(test[i : i + 256])
            log_pred = decoder(f_test[i : i + 256].to(device)).float().cpu()
            log_pred = F.interpolate(log_pred, size=(size, size), mode="bilinear",
                                     align_corners=False)  # fmt: skip
            pred = log_pred.clamp(-5, 5).exp()
            if first is None:
                first = pred[:8]
            _add(totals, _sums(pred, depth, valid))
    result = _finish(totals)
    result["seconds"] = time.perf_counter() - t0
    result["feature_channels"] = int(f_train.shape[1])
    result["feature_size"] = int(f_train.shape[-1])
    assert first is not None
    return result, first


def mean_depth_baseline(train: Tensor, test: Tensor) -> dict[str, dict[str, float]]:
    """Predicting the training set's mean depth (a scalar) and its per-pixel mean depth map."""
    _, d_train, v_train = unpack_rgbd(train)
    _, d_test, v_test = unpack_rgbd(test)
    v = v_train.float()
    scalar = float((d_train * v).sum() / v.sum().clamp_min(1))
    per_pixel = (d_train * v).sum(0) / v.sum(0).clamp_min(1)
    per_pixel = torch.where(v.sum(0) > 0, per_pixel, torch.full_like(per_pixel, scalar))
    out = {}
    for name, pred in (("mean_depth", torch.full_like(d_test, scalar)),
                       ("mean_depth_map", per_pixel.expand_as(d_test))):  # fmt: skip
        out[name] = {**_finish(_sums(pred, d_test, v_test)), "value": scalar}
    return out


# ----------------------------------------------------------------------------- runs
def held_out_rgbd(
    cfg: Any, *, train_items: int, test_items: int, size: int
) -> tuple[Tensor, Tensor, str]:
    """Training and held-out RGB-D items like a run's training data: for ``synthetic_rgbd``,
    ``train_items`` scenes of the train split and ``test_items`` of the test split; for an
    RGB-D folder, its last ``test_items`` items are held out and the first ``train_items`` of
    the rest train the probe. Returns (train (N, 5, S, S), test, data label)."""
    from selfsup.data import load_source

    spec = cfg.data.source
    head = spec.partition(":")[0].strip().lower().replace("-", "_")
    common = dict(root=cfg.data.root, image_size=size, cache_dir=cfg.data.cache_dir)
    if head == "synthetic_rgbd":
        options = dict(cfg.data.options or {})
        section = dict(options.get("synthetic_rgbd") or {})

        def scenes(n: int) -> dict[str, Any]:
            return {**options, "synthetic_rgbd": {**section, "scenes": n}}

        train = load_source(spec, split="train", options=scenes(train_items), **common)
        test = load_source(spec, split="test", options=scenes(test_items), **common)
        return train.as_tensor_chw(), test.as_tensor_chw(), f"{spec}:test"
    source = load_source(spec, options=cfg.data.options or None, **common)
    if source.layout != "rgbd":
        raise ValueError(f"the depth probe needs RGB-D data; {spec} gives {source.layout} items")
    n = len(source)
    n_test = min(test_items, n // 5 or 1)
    train_idx = np.arange(0, min(train_items, n - n_test))
    test_idx = np.arange(n - n_test, n)
    return source.as_tensor_chw(train_idx), source.as_tensor_chw(test_idx), f"{spec}:last{n_test}"


def run_depth_probe(
    run_dir: str | Path,
    *,
    train_items: int = 2000,
    test_items: int = 500,
    data: str | None = None,
    cfg: DepthProbeConfig | None = None,
    baselines: tuple[str, ...] = ("random", "mean"),
    device: str | torch.device = "cpu",
    seed: int = 0,
    write: bool = True,
) -> dict[str, Any]:
    """The depth probe of a run's encoder beside a random-init encoder and the mean depth.

    ``data`` replaces the run's training source (an RGB-D spec). With ``write``, a picture
    (RGB / true depth / the probes' predictions) goes to ``RUN/pictures/depth_probe.png`` and a
    row to ``RUN/eval.jsonl``. Returns ``{"trained": {...}, "random_encoder": {...},
    "mean_depth": {...}, "mean_depth_map": {...}, "depth_rmse", "depth_delta1",
    "random_encoder_depth_rmse", "mean_depth_rmse", ...}``.
    """
    from selfsup.config import load_config
    from selfsup.models import load_encoder

    run_dir = Path(run_dir)
    cfg = cfg or DepthProbeConfig(seed=seed)
    run_cfg = load_config(None, str(run_dir / "config.yaml"))
    if data is not None:
        run_cfg.data.source = data
    trained = load_encoder(str(run_dir))
    size = int(trained.meta["image_size"])
    train, test, label = held_out_rgbd(run_cfg, train_items=train_items, test_items=test_items,
                                       size=size)  # fmt: skip
    result: dict[str, Any] = {"data": label, "train_items": len(train), "test_items": len(test),
                              "config": asdict(cfg)}  # fmt: skip
    shown: dict[str, Tensor] = {}
    result["trained"], shown["trained"] = depth_probe(trained.encoder, trained.meta, train, test,
                                                      cfg, device=device)  # fmt: skip
    if "random" in baselines:
        rnd = load_encoder(f"random:{run_dir}", seed=seed)
        result["random_encoder"], shown["random_encoder"] = depth_probe(
            rnd.encoder, rnd.meta, train, test, cfg, device=device
        )
    if "mean" in baselines:
        result.update(mean_depth_baseline(train, test))
    result["depth_rmse"] = result["trained"]["rmse"]
    result["depth_delta1"] = result["trained"]["delta1"]
    result["depth_abs_rel"] = result["trained"]["abs_rel"]
    for name in ("random_encoder", "mean_depth", "mean_depth_map"):
        if name in result:
            result[f"{name}_depth_rmse"] = result[name]["rmse"]
            result[f"{name}_depth_delta1"] = result[name]["delta1"]
    if write:
        path = run_dir / "pictures" / "depth_probe.png"
        _save_depth_picture(test[:8], shown, path)
        result["pictures"] = {"depth_probe": str(path)}
        keys = [k for k in result if k.endswith(("_rmse", "_delta1", "_abs_rel"))]
        row = {"encoder": str(run_dir), "method": run_cfg.method, "protocol": "depth_probe",
               "data": label, "pictures": [str(path)], **{k: result[k] for k in keys}}  # fmt: skip
        with open(run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return result


def _save_depth_picture(items: Tensor, preds: dict[str, Tensor], path: Path) -> None:
    """Rows: RGB, true depth, then each probe's prediction (grey, near is bright, one scale
    per column)."""
    from torchvision.utils import make_grid, save_image

    rgb, depth, valid = unpack_rgbd(items)
    near = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    near = near.flatten(1).min(1).values.clamp_min(0.1).view(-1, 1, 1, 1)

    def show(d: Tensor) -> Tensor:
        return (near / d.clamp_min(1e-3)).clamp(0, 1).expand(-1, 3, -1, -1)

    rows = [rgb.float() / 255, torch.where(valid, show(depth)[:, :1], 0.0).expand(-1, 3, -1, -1)]
    rows += [show(p) for p in preds.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(torch.cat(rows), nrow=len(items), padding=1, pad_value=1.0), path)
