"""Build a method from a run config, rebuild a trained one from its run directory, and what
needs a whole method: an encoder followed by one of its heads, the method's pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.backbones import Backbone
from selfsup.config import BackboneConfig, RunConfig, load_config
from selfsup.data import ImageSource
from selfsup.methods import Method, get_method, normalization
from selfsup.models.encoders import LoadedEncoder, encoder_meta, make_encoder
from selfsup.utils.io import file_digest, latest_checkpoint, load_safetensors, read_json


def build_method(
    cfg: RunConfig, image_size: int, in_channels: int, num_classes: int | None
) -> Method:
    """The method of ``cfg`` around a freshly initialised backbone, for training images of
    ``in_channels`` channels (the encoder takes ``method.encoder_channels(in_channels)``, split
    into the method's ``channel_groups`` when it has them)."""
    method_cls = get_method(cfg.method)
    encoder = make_encoder(
        method_backbone(cfg),
        image_size=image_size,
        in_channels=method_cls.encoder_channels(in_channels),
        channel_groups=method_cls.channel_groups,
    )
    mean, std = normalization(cfg.normalize, in_channels)
    return method_cls(
        encoder,
        cfg.method_config(),
        image_size=image_size,
        mean=mean,
        std=std,
        augment=cfg.augment,
        num_classes=num_classes,
    )


def method_backbone(cfg: RunConfig) -> BackboneConfig:
    """The run's backbone config with the method's defaults filled in: a ViT whose
    ``global_pool`` is unset pools as the method's :attr:`~selfsup.methods.Method.global_pool`
    says (MAE: the patch-token mean), else as the backbone does by default (cls)."""
    pool = get_method(cfg.method).global_pool
    if cfg.backbone.global_pool is None and pool and cfg.backbone.is_vit:
        return cfg.backbone.model_copy(update={"global_pool": pool})
    return cfg.backbone


def method_encoder_meta(cfg: RunConfig, method: Method, data_channels: int) -> dict[str, Any]:
    """The ``encoder.json`` meta of ``method``'s encoder (built by :func:`build_method` for
    training images of ``data_channels`` channels)."""
    return encoder_meta(
        method_backbone(cfg),
        image_size=method.image_size,
        in_channels=method.encoder_channels(data_channels),
        normalize=cfg.normalize,
        method=cfg.method,
        feature_dim=method.encoder.feature_dim,
        input_space=method.input_space,
        data_channels=data_channels,
        channel_groups=method.channel_groups,
        view=method.eval_view(),
    )


def load_method(run_dir: str | Path, device: str | torch.device = "cpu") -> Method:
    """Rebuild a run's whole method (encoder + heads) from its config and last checkpoint, in
    eval mode on ``device``."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to load the method from")
    cfg = load_config(None, str(run_dir / "config.yaml"))
    meta = read_json(ckpt / "meta.json")
    enc = meta["encoder"]
    data_channels = enc.get("data_channels", enc["in_channels"])  # differ for Lab methods
    method = build_method(cfg, enc["image_size"], data_channels, meta.get("num_classes"))
    method.load_state_dict(load_safetensors(ckpt / "model.safetensors"))
    return method.to(device).eval()


def random_method(run_dir: str | Path, device: str | torch.device = "cpu", seed: int = 0) -> Method:
    """A run's whole method (same config and architecture) at random initialisation (seeded):
    the baseline of the evaluations that use a method's heads (e.g. label propagation)."""
    run_dir = Path(run_dir)
    cfg = load_config(None, str(run_dir / "config.yaml"))
    enc = read_json(run_dir / "encoder.json")
    data_channels = enc.get("data_channels", enc["in_channels"])
    torch.manual_seed(seed)
    method = build_method(cfg, enc["image_size"], data_channels, None)
    return method.to(device).eval()


class _EncoderThenHead(torch.nn.Module):
    """``head(encoder(x))``: (N, C, S, S) -> (N, head output dim)."""

    def __init__(self, encoder: Backbone, head: torch.nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.encoder, self.head, self.feature_dim = encoder, head, feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def load_encoder_with_head(run_dir: str | Path, head: str) -> LoadedEncoder:
    """A run's trained encoder followed by its method's module ``head`` (e.g. ``projector``),
    from the run's last checkpoint; features are then the head's outputs. Raises ValueError
    naming the method's heads when it has no such module."""
    run_dir = Path(run_dir)
    method = load_method(run_dir)
    heads = [n for n, _ in method.named_children() if n != "encoder"]
    module = getattr(method, head, None) if head in heads else None
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{run_dir}: method {method.name!r} has no head {head!r} (heads: {heads})")
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None  # load_method found one
    meta = dict(read_json(ckpt / "meta.json")["encoder"])
    with torch.no_grad():
        probe = torch.zeros(2, meta["in_channels"], meta["image_size"], meta["image_size"])
        dim = int(module.eval()(method.encoder.eval()(probe)).shape[1])
    meta["feature_dim"], meta["head"] = dim, head
    identity = file_digest(ckpt / "model.safetensors") + f":{head}"
    encoder = _EncoderThenHead(method.encoder, module, dim)
    return LoadedEncoder(
        encoder,  # type: ignore[arg-type]
        meta,
        identity,
        label=f"{method.name} ({run_dir.name}) + {head}",
        run_dir=run_dir,
    )


def write_pictures(
    method: Method, source: ImageSource, run_dir: Path, tag: str, device: torch.device
) -> list[Path]:
    """Save the method's pictures of the first 8 images of ``source`` as
    ``RUN/pictures/{name}_{tag}.png``; leaves the method in eval mode."""
    from torchvision.utils import save_image

    images = source.as_tensor_chw(np.arange(min(8, len(source)))).to(device)
    method.eval()
    pictures = method.pictures(images, torch.Generator(device=device).manual_seed(0))
    paths = []
    if pictures:
        (run_dir / "pictures").mkdir(exist_ok=True)
    for name, grid in pictures.items():
        path = run_dir / "pictures" / f"{name}_{tag}.png"
        save_image(grid.float().cpu(), path)
        paths.append(path)
    return paths
