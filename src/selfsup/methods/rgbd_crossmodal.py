"""RGB-D cross-modal prediction, in the split-brain spirit (Zhang et al. 2017): an RGB encoder
predicts depth, a depth encoder predicts the image's colours.

* **RGB -> depth.** The exported encoder sees the normalised RGB image; a
  :class:`~selfsup.heads.ConvDecoder` on its spatial features predicts log depth at
  ``image_size // target_downsample``. Loss: the scale-invariant log loss of Eigen, Puhrsch &
  Fergus (2014) with their lambda = 0.5 (``depth_loss: scale_invariant``), or L1 on inverse depth
  (``inverse_l1``: the decoder predicts 1/depth in 1/m). Targets are the geometric mean of the
  known depths in each output cell; cells with unknown depth (0 in the data) are left out.
* **Depth -> Lab.** A second, smaller backbone (``depth_backbone``) sees inverse depth (1/m, 0
  where unknown) and the validity mask, and a decoder predicts the scaled CIE Lab channels
  (``(L - 50) / 50``, ``a / 110``, ``b / 110``) with an L2 loss, weighted by ``lab_weight``.

The two branches share no weights: the depth branch trains its own encoder, whose features could
be concatenated to the RGB encoder's for RGB-D inputs; the exported encoder is the RGB one
(``encoder.json``: 3 input channels, input space ``rgb``), so kNN and the linear probe run on
ordinary RGB images.

Augmentation: one random resized crop and flip for RGB, depth and validity together; depth is
resampled as ``crop(depth * valid) / crop(valid)`` and a pixel stays valid only where every source
pixel was, so unknown depth never leaks into known pixels.

Pretext metrics on held-out RGB-D (no augmentation), at full resolution: ``depth_rmse`` (m),
``depth_abs_rel``, ``depth_delta1`` (share of pixels with ``max(p / t, t / p) < 1.25``), and the
depth branch's ``lab_psnr`` (dB, its colour prediction as RGB against the image).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from selfsup.augment import Compose, RandomHorizontalFlip, RandomResizedCrop
from selfsup.augment.color import input_to_lab, lab_to_input, lab_to_rgb, rgb_to_lab
from selfsup.backbones import Backbone, build_backbone
from selfsup.data.rgbd import unpack_rgbd
from selfsup.errors import ConfigError
from selfsup.heads import ConvDecoder, feature_map_shape, spatial_features
from selfsup.losses import inverse_depth_l1, scale_invariant_log_loss
from selfsup.methods.base import Method, MethodConfig, StepResult
from selfsup.methods.colorization import LabMethod, no_autocast, psnr

__all__ = ["RGBDCrossModal", "RGBDCrossModalConfig", "depth_metrics", "pool_depth"]


class RGBDCrossModalConfig(MethodConfig):
    depth_loss: Literal["scale_invariant", "inverse_l1"] = "scale_invariant"
    """Eigen et al.'s scale-invariant log loss, or L1 on inverse depth."""
    si_lambda: float = Field(default=0.5, ge=0, le=1)
    """lambda of the scale-invariant loss (Eigen et al.: 0.5)."""
    lab_weight: float = Field(default=1.0, ge=0)
    """Weight of the depth -> Lab loss (0 trains the RGB -> depth branch only)."""
    depth_backbone: str = "resnet_tiny"
    """Backbone (registry name) of the depth branch, 2 input channels (1/depth, valid)."""
    decoder_dim: int = Field(default=128, gt=0)
    decoder_min_dim: int = Field(default=32, gt=0)
    target_downsample: int = Field(default=2, ge=1)
    """Predict (and compare) at ``image_size // target_downsample`` (Eigen et al.: 1/4)."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Area range of the random resized crop."""
    flip: bool = True


def pool_depth(depth: Tensor, valid: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Depth (N, 1, H, W) metres and validity -> the geometric mean of the valid depths of each
    cell of a (size, size) grid, and the cells' validity (all their pixels valid)."""
    v = valid.float()
    log_d = torch.where(valid, depth.clamp_min(1e-6).log(), torch.zeros_like(depth))
    share = F.adaptive_avg_pool2d(v, size)
    mean_log = F.adaptive_avg_pool2d(log_d, size) / share.clamp_min(1e-6)
    ok = share > 0.999
    return torch.where(ok, mean_log.exp(), torch.zeros_like(mean_log)), ok


def depth_metrics(pred: Tensor, depth: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Sums over the valid pixels (for averaging over batches): ``count``, ``sq_error`` (m^2),
    ``abs_rel``, ``delta1`` (``max(p / t, t / p) < 1.25``), ``log_sq_error``; pred, depth
    (N, 1, H, W) metres."""
    p = pred.float().clamp_min(1e-3)[valid]
    t = depth.float()[valid]
    ratio = torch.maximum(p / t, t / p)
    return {
        "count": torch.tensor(float(t.numel())),
        "sq_error": (p - t).pow(2).sum(),
        "abs_rel": ((p - t).abs() / t).sum(),
        "delta1": (ratio < 1.25).float().sum(),
        "log_sq_error": (p.log() - t.log()).pow(2).sum(),
    }


class RGBDCrossModal(Method):
    """RGB -> depth and depth -> Lab. ``encoder`` takes the 3 RGB channels."""

    name = "rgbd_crossmodal"
    family = "cross-modal"
    description = (
        "RGB-D cross-modal prediction: an RGB encoder predicts depth (Eigen et al.'s "
        "scale-invariant log loss) and a depth encoder predicts the image's Lab colours"
    )
    Config = RGBDCrossModalConfig
    data_layout = "rgbd"
    default_augment = "eval"

    cfg: RGBDCrossModalConfig

    @classmethod
    def encoder_channels(cls, data_channels: int) -> int:
        if data_channels != 5:
            raise ConfigError(
                f"{cls.name} trains on RGB-D items (RGB + packed depth, 5 channels), got "
                f"{data_channels}-channel items; use data.source=synthetic_rgbd or rgbd:PATH"
            )
        return 3

    def __init__(self, encoder: Backbone, cfg: RGBDCrossModalConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if encoder.in_channels != 3:
            raise ValueError(f"{self.name}: the encoder must take 3 (RGB) input channels")
        kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment="eval", **kwargs)
        lo, hi = cfg.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"method_args.crop_scale must be 0 < min <= max <= 1, got {lo, hi}")
        steps = [RandomResizedCrop(self.image_size, scale=(lo, hi))]
        if cfg.flip:
            steps.append(RandomHorizontalFlip())
        self.joint_pipeline = Compose(steps)
        self.out_size = max(1, self.image_size // cfg.target_downsample)
        dim, h = feature_map_shape(encoder, 3, self.image_size)
        self.depth_decoder = ConvDecoder(
            dim, 1, self.out_size, cfg.decoder_dim, cfg.decoder_min_dim
        ).build(h)
        try:
            self.depth_encoder = build_backbone(cfg.depth_backbone, in_channels=2)
        except (KeyError, TypeError) as err:
            raise ConfigError(f"method_args.depth_backbone: {err}") from None
        ddim, dh = feature_map_shape(self.depth_encoder, 2, self.image_size)
        self.lab_decoder = ConvDecoder(
            ddim, 3, self.out_size, cfg.decoder_dim, cfg.decoder_min_dim
        ).build(dh)

    # ------------------------------------------------------------------ building blocks
    def normalize_rgb(self, rgb: Tensor) -> Tensor:
        """RGB (N, 3, S, S) in [0, 1] -> the encoder's normalised input."""
        mean = torch.tensor(self.mean, device=rgb.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=rgb.device).view(1, -1, 1, 1)
        return ((rgb - mean) / std).contiguous(memory_format=self.memory_format)

    def predict_depth(self, rgb: Tensor) -> Tensor:
        """RGB (N, 3, S, S) in [0, 1] -> depth (N, 1, s, s) metres, s = ``image_size //
        target_downsample``."""
        out = self.depth_decoder(spatial_features(self.encoder, self.normalize_rgb(rgb))).float()
        if self.cfg.depth_loss == "inverse_l1":
            return 1.0 / out.clamp_min(1e-3)
        return out.clamp(-5, 5).exp()

    def predict_lab(self, depth: Tensor, valid: Tensor) -> Tensor:
        """Depth (N, 1, S, S) metres + validity -> scaled Lab (N, 3, s, s)."""
        inv = torch.where(valid, 1.0 / depth.clamp_min(1e-3), torch.zeros_like(depth))
        x = torch.cat([inv, valid.float()], 1).contiguous(memory_format=self.memory_format)
        return self.lab_decoder(spatial_features(self.depth_encoder, x)).float()

    def decode(self, items: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """RGB-D items (N, 5, H, W) uint8 -> (RGB in [0, 1], depth m, valid), float32."""
        rgb, depth, valid = unpack_rgbd(items)
        return rgb.float() / 255, depth, valid

    def augment(
        self, items: Tensor, generator: torch.Generator, global_size: int | None, offset: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The same random crop and flip for RGB, depth and validity (module docstring)."""
        rgb, depth, valid = self.decode(items)
        with no_autocast(rgb):  # the validity test needs float32 resampling
            v = valid.float()
            x = torch.cat([rgb, depth * v, v], 1)
            y = self.joint_pipeline(x, generator, global_size=global_size, offset=offset)
            share = y[:, 4:5].float()
            ok = share > 0.999
            depth_out = torch.where(ok, y[:, 3:4] / share.clamp_min(1e-6), torch.zeros_like(share))
        return y[:, :3].float().clamp(0, 1), depth_out, ok

    def losses(self, rgb: Tensor, depth: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Both branches' losses and the depth branch's metrics on one (augmented) batch."""
        with no_autocast(depth):
            target, ok = pool_depth(depth.float(), valid, self.out_size)
        raw = self.depth_decoder(spatial_features(self.encoder, self.normalize_rgb(rgb))).float()
        if self.cfg.depth_loss == "inverse_l1":
            depth_loss = inverse_depth_l1(raw, target, ok)
            pred = 1.0 / raw.detach().clamp_min(1e-3)
        else:
            depth_loss = scale_invariant_log_loss(raw, target, ok, self.cfg.si_lambda)
            pred = raw.detach().clamp(-5, 5).exp()
        with no_autocast(rgb):
            lab = lab_to_input(rgb_to_lab(rgb.float()), "lab")
        lab_target = F.adaptive_avg_pool2d(lab, self.out_size)
        lab_loss = F.mse_loss(self.predict_lab(depth, valid), lab_target)
        with torch.no_grad():
            m = depth_metrics(pred, target, ok)
            count = m["count"].clamp_min(1)
        return {
            "depth_loss": depth_loss,
            "lab_loss": lab_loss,
            "depth_rmse": (m["sq_error"] / count).sqrt(),
            "depth_delta1": m["delta1"] / count,
        }

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        rgb, depth, valid = self.augment(images, generator, global_size, offset)
        parts = self.losses(rgb, depth, valid)
        loss = parts["depth_loss"] + self.cfg.lab_weight * parts["lab_loss"]
        return loss, {k: v.detach() for k, v in parts.items()}

    # ------------------------------------------------------------------ evaluation
    def _eval_inputs(self, items: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rgb, depth, valid = self.decode(items)
        if rgb.shape[-1] != self.image_size:
            raise ValueError(
                f"{self.name}: held-out items must be {self.image_size} px (got "
                f"{rgb.shape[-1]}); load them with image_size={self.image_size}"
            )
        return rgb, depth, valid

    def _full_res(self, t: Tensor) -> Tensor:
        if t.shape[-1] == self.image_size:
            return t
        return F.interpolate(t.log(), size=(self.image_size,) * 2, mode="bilinear",
                             align_corners=False).exp()  # fmt: skip

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Depth errors of the RGB branch at full resolution and the Lab PSNR of the depth
        branch, on held-out RGB-D items (no augmentation)."""
        rgb, depth, valid = self._eval_inputs(images)
        pred = self._full_res(self.predict_depth(rgb))
        m = depth_metrics(pred, depth, valid)
        count = float(m["count"].clamp_min(1))
        lab = input_to_lab(self._upsample(self.predict_lab(depth, valid)))
        colour = lab_to_rgb(lab)
        return {
            "depth_rmse": float((m["sq_error"] / count).sqrt()),
            "depth_abs_rel": float(m["abs_rel"]) / count,
            "depth_delta1": float(m["delta1"]) / count,
            "lab_psnr": float(psnr(colour, rgb).mean()),
        }

    def _upsample(self, t: Tensor) -> Tensor:
        if t.shape[-1] == self.image_size:
            return t
        return F.interpolate(t, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``rgbd_crossmodal``: one column per item (at most 8); rows RGB / true depth /
        predicted depth (grey: near is bright, the same scale per column) / the depth branch's
        colours."""
        rgb, depth, valid = self._eval_inputs(images[:8])
        pred = self._full_res(self.predict_depth(rgb))
        lab = input_to_lab(self._upsample(self.predict_lab(depth, valid)))
        near = torch.where(valid, depth, torch.full_like(depth, float("inf")))
        near = near.flatten(1).min(1).values.clamp_min(0.1).view(-1, 1, 1, 1)
        show = lambda d: (near / d.clamp_min(1e-3)).clamp(0, 1).expand(-1, 3, -1, -1)  # noqa: E731
        true = torch.where(valid, show(depth)[:, :1], torch.zeros_like(depth)).expand(-1, 3, -1, -1)
        rows = [rgb, true, show(pred), lab_to_rgb(lab)]
        return {"rgbd_crossmodal": LabMethod.grid(rows)}
