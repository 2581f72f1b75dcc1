"""Inpainting / context encoder (Pathak et al., 2016): hide part of the image, fill it back in.

A pixel mask (:mod:`selfsup.augment.pixel_masks`: the central square, random blocks or random
irregular regions, covering ``mask_fraction`` of the image) is drawn per sample for the global
batch. The encoder being pretrained sees the masked image: a plain C-channel image whose masked
pixels hold ``fill_value`` in normalised space (0 = the data set's mean colour, as the paper
filled the hole with the ImageNet mean); the mask itself is not an input, so the encoder
evaluates like any other. A :class:`~selfsup.heads.ConvDecoder` on the encoder's spatial
features predicts the whole image, and the reconstruction loss is the L2 error on the masked
pixels only (:func:`inpainting_l2`; ``context_weight`` optionally counts context pixels too).

Optional adversarial loss (``adversarial_weight`` > 0; the paper's joint loss used 0.999
reconstruction + 0.001 adversarial): a small convolutional :class:`Discriminator` tells real
images from filled ones. It sees the filled central square (``center`` masks, as the paper) or
the whole composite = context + fill (``block`` / ``region`` masks) against the same view of
the real image. The trainer runs one optimizer and one backward per step, so both GAN players
are trained by one summed loss in which each term only reaches its own player:

* generator term ``(1 - w) * L_rec + w * L_adv``, ``L_adv = BCE(D(fake), real)``
  (non-saturating), with D evaluated through :func:`torch.func.functional_call` on *detached*
  copies of its parameters: gradients flow through D into the fill, never into D;
* discriminator term ``L_D = BCE(D(real), real) + BCE(D(fake.detach()), fake)``: the fill is
  detached, so it only moves D.

``loss = (1 - w) * L_rec + w * L_adv + L_D``. Every parameter gets a gradient every step (what
DDP expects), and D is part of the method's state dict, so checkpoints and resume include it.
The paper's code trains D with a 10x lower learning rate than the context encoder
(``disc_lr_scale=0.1``); the method asks the optimizer builder for that through
:meth:`Inpainting.lr_scales` (Adam's step does not depend on the loss scale, so a loss weight
could not do it). D uses GroupNorm, not BatchNorm: it runs on real, fake and detached-parameter
fake batches in one step, and per-sample normalisation keeps each output independent of what
else is in the batch (no running statistics to update three times, nothing for DDP to sync).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.augment import (
    build_pipeline,
    crop_flip_pipeline,
)
from selfsup.augment.pixel_masks import center_square, sample_pixel_masks
from selfsup.heads import ConvDecoder, feature_map_shape, spatial_features
from selfsup.losses.precision import full_precision
from selfsup.methods.base import Method, MethodConfig, StepResult

__all__ = [
    "Discriminator",
    "Inpainting",
    "InpaintingConfig",
    "discriminator_loss",
    "generator_adversarial_loss",
    "inpainting_l2",
    "laplacian",
    "masked_psnr",
    "sharpness_ratio",
]


class InpaintingConfig(MethodConfig):
    masking: Literal["center", "block", "region"] = "center"
    """``center`` square (the paper's main setting), random ``block`` rectangles or random
    irregular ``region`` blobs (the paper's feature-learning setting)."""
    mask_fraction: float = Field(default=0.25, gt=0, lt=1)
    """Fraction of the image masked (exact for block/region; the nearest centred square for
    center: 0.25 masks the central half of each side)."""
    block_size: tuple[float, float] = (0.125, 0.375)
    """``block``: range of each rectangle's height and width, as fractions of the image side."""
    region_grid: int = Field(default=4, ge=1)
    """``region``: noise cells per image side; blobs are about ``image_size / region_grid``
    pixels across (the paper used about 8 cells at 128 pixels)."""
    fill_value: float = 0.0
    """Value of masked input pixels in normalised space (0 = the mean colour)."""
    context_weight: float = Field(default=0.0, ge=0)
    """Loss weight of context pixels relative to masked ones (0 = masked pixels only). The
    paper's code weighted a 4-pixel band of context around the centre 10x (centre masks) or the
    whole context 1x or 10x (random regions); off by default."""
    decoder_dim: int = Field(default=256, gt=0)
    """Width of the decoder's first stage (halved at each 2x upsampling)."""
    decoder_min_dim: int = Field(default=32, gt=0)
    adversarial_weight: float = Field(default=0.0, ge=0, lt=1)
    """w in ``(1 - w) * L_rec + w * L_adv``; 0 = pure L2 (no discriminator is built). The
    paper's joint loss: 0.001."""
    disc_dim: int = Field(default=64, gt=0)
    """Width of the discriminator's first convolution (doubled at each stride-2 stage)."""
    disc_lr_scale: float = Field(default=0.1, gt=0)
    """Discriminator learning rate as a multiple of the run's (the paper's code: 0.1)."""

    @model_validator(mode="after")
    def _check(self) -> InpaintingConfig:
        lo, hi = self.block_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"block_size must satisfy 0 < lo <= hi <= 1, got {self.block_size}")
        return self


# --- losses and metrics (pure functions) ----------------------------------------------------
@full_precision
def inpainting_l2(
    pred: Tensor, target: Tensor, mask: Tensor, context_weight: float = 0.0
) -> Tensor:
    """Masked L2 reconstruction loss.

    Args:
        pred: (N, C, H, W) prediction.
        target: (N, C, H, W) true image.
        mask: (N, 1, H, W) (or (N, C, H, W)) float, 1 = masked, 0 = context.
        context_weight: weight of the context pixels' squared error (0 = ignored).

    Returns:
        0-d tensor ``sum(w * (pred - target)^2) / (C * sum(mask))`` with ``w = mask +
        context_weight * (1 - mask)``: with ``context_weight=0``, the mean squared error over the
        masked pixels and channels.
    """
    sq = (pred - target).pow(2)
    weight = mask if context_weight == 0 else mask + context_weight * (1 - mask)
    masked = mask.expand_as(sq).sum()
    return (sq * weight).sum() / masked.clamp_min(1.0)


@full_precision
def generator_adversarial_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss ``BCE(D(fake), 1) = mean softplus(-logit)``; logits (N,)."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


@full_precision
def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``BCE(D(real), 1) + BCE(D(fake), 0)`` (each a mean over its batch); logits (N,)."""
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    return real + fake


def masked_psnr(pred01: Tensor, target01: Tensor, mask: Tensor) -> Tensor:
    """Per-image PSNR (dB) over the masked pixels of images in [0, 1].

    Args:
        pred01, target01: (N, C, H, W) in [0, 1].
        mask: (N, 1, H, W) float, 1 = masked.

    Returns:
        (N,) ``-10 log10(MSE_i)``, MSE_i over image i's masked pixels and channels (floored at
        1e-10, i.e. at most 100 dB).
    """
    sq = (pred01 - target01).pow(2) * mask
    per_image = sq.flatten(1).sum(1) / mask.expand_as(sq).flatten(1).sum(1).clamp_min(1.0)
    return -10.0 * torch.log10(per_image.clamp_min(1e-10))


def laplacian(x: Tensor) -> Tensor:
    """4-neighbour discrete Laplacian ``x[i-1,j] + x[i+1,j] + x[i,j-1] + x[i,j+1] - 4 x[i,j]``
    of each channel of (N, C, H, W), with replicated borders."""
    c = x.shape[1]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device)
    kernel = kernel.to(x.dtype).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def sharpness_ratio(fill01: Tensor, target01: Tensor, mask: Tensor) -> Tensor:
    """High-frequency energy of a fill relative to the truth's, over the masked region.

    ``sum(lap(fill)^2) / sum(lap(truth)^2)`` with :func:`laplacian`, summed over channels and
    over the pixels of the mask *eroded* by one pixel (whose 3x3 neighbourhood is all masked,
    so the fill's own texture is measured, not the seam with the context; the plain mask if the
    erosion is empty), pooled over the batch. 1 = as much fine detail as the truth, < 1 blurrier
    (an L2-trained fill tends to be), > 1 noisier.

    Args:
        fill01: (N, C, H, W) in [0, 1], the image with its masked region filled in.
        target01: (N, C, H, W) in [0, 1], the true image.
        mask: (N, 1, H, W) float, 1 = masked.

    Returns:
        0-d tensor (0 if the truth has no detail there).
    """
    inner = 1.0 - F.max_pool2d(1.0 - mask, 3, stride=1, padding=1)
    if inner.sum() == 0:
        inner = mask
    num = (laplacian(fill01).pow(2) * inner).sum()
    den = (laplacian(target01).pow(2) * inner).sum()
    return num / den if den > 0 else den


# --- discriminator ---------------------------------------------------------------------------
class Discriminator(nn.Module):
    """DCGAN-style discriminator: (N, C, S, S) images -> (N,) real/fake logits.

    ``Conv4x4/2 -> LeakyReLU(0.2)``, then ``Conv4x4/2 -> GroupNorm(1) -> LeakyReLU`` stages
    (width doubling, capped at ``8 * dim``) while the map is larger than 4x4, then a convolution
    over the whole remaining map gives one logit.
    """

    def __init__(self, in_channels: int, size: int, dim: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dim, 4, 2, 1), nn.LeakyReLU(0.2)]
        side, width = size // 2, dim
        while side > 4:
            nxt = min(width * 2, dim * 8)
            layers += [nn.Conv2d(width, nxt, 4, 2, 1), nn.GroupNorm(1, nxt), nn.LeakyReLU(0.2)]
            side, width = side // 2, nxt
        if side < 1:
            raise ValueError(f"discriminator input {size}x{size} is too small")
        layers.append(nn.Conv2d(width, 1, side))
        self.net = nn.Sequential(*layers)
        self.size = size
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1).mean(1)


# --- the method ------------------------------------------------------------------------------
class Inpainting(Method):
    name = "inpainting"
    family = "transformation"
    description = (
        "context encoder: mask a centre square / blocks / regions, reconstruct them from the "
        "context with masked L2 (+ optional adversarial loss)"
    )
    Config = InpaintingConfig
    default_augment = "eval"
    keep_eager_on_cpu = "its compiled fp32 step measured 0.90x its eager one"

    cfg: InpaintingConfig

    def __init__(self, encoder, cfg: InpaintingConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        augment = kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment=augment or "eval", **kwargs)
        size, mean, std = self.image_size, self.mean, self.std
        if augment is None:
            # Light augmentation: the pretext needs no invariances, crops and flips add variety.
            self.pipeline = crop_flip_pipeline(size, (0.5, 1.0), mean, std)
        self.eval_pipeline = build_pipeline("eval", size, mean, std)
        channels = encoder.in_channels
        dim, h = feature_map_shape(encoder, channels, size)
        self.decoder = ConvDecoder(
            dim, channels, size, hidden_dim=cfg.decoder_dim, min_dim=cfg.decoder_min_dim
        ).build(h)
        self.discriminator: Discriminator | None = None
        if cfg.adversarial_weight > 0:
            d_size = center_square(size, cfg.mask_fraction)[1] if cfg.masking == "center" else size
            self.discriminator = Discriminator(channels, d_size, cfg.disc_dim)

    def lr_scales(self) -> dict[str, float]:
        """The discriminator's learning-rate multiplier (``disc_lr_scale``)."""
        return {"discriminator.": self.cfg.disc_lr_scale} if self.discriminator is not None else {}

    # --- pieces ------------------------------------------------------------------------------
    def sample_masks(
        self,
        n: int,
        generator: torch.Generator,
        device: torch.device,
        global_size: int | None = None,
        offset: int = 0,
    ) -> Tensor:
        """Masks (n, 1, S, S) float (1 = masked) for rows ``[offset, offset + n)`` of a global
        batch of ``global_size``."""
        cfg = self.cfg
        return sample_pixel_masks(
            cfg.masking,
            n,
            self.image_size,
            cfg.mask_fraction,
            generator,
            device,
            global_size=global_size,
            offset=offset,
            block_size=cfg.block_size,
            grid=cfg.region_grid,
        )

    def mask_input(self, x: Tensor, mask: Tensor) -> Tensor:
        """The encoder's input (N, C, S, S): ``x`` with masked pixels set to ``fill_value``."""
        m = mask.to(x.dtype)
        return x * (1 - m) + self.cfg.fill_value * m

    def predict(self, x_masked: Tensor) -> Tensor:
        """Masked normalised images (N, C, S, S) -> predicted images (N, C, S, S)."""
        return self.decoder(spatial_features(self.encoder, x_masked))

    def adversarial_view(self, images: Tensor) -> Tensor:
        """What the discriminator judges of (N, C, S, S) images: the central square for
        ``center`` masks, the whole image otherwise."""
        if self.cfg.masking != "center":
            return images
        margin, side = center_square(self.image_size, self.cfg.mask_fraction)
        return images[..., margin : margin + side, margin : margin + side]

    def _reconstruct(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(masked input, prediction (float), composite = context + fill (float))."""
        x_in = self.mask_input(x, mask)
        pred = self.predict(x_in).float()
        m = mask.float()
        composite = x.float() * (1 - m) + pred * m
        return x_in, pred, composite

    # --- training ----------------------------------------------------------------------------
    def losses(
        self,
        images: Tensor,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> dict[str, Tensor]:
        """The terms of one step on a uint8 batch (N, C, H, W), each a 0-d tensor with its graph:

        * ``rec``: :func:`inpainting_l2` of the fill;
        * with the adversarial loss, also ``adv_g`` (:func:`generator_adversarial_loss` through
          the discriminator's *detached* parameters: reaches the encoder and decoder only),
          ``d`` (:func:`discriminator_loss` on the *detached* fill: reaches the discriminator
          only) and ``d_acc`` (no graph), the discriminator's accuracy on real vs filled.
        """
        x = self.views(images, generator, global_size, offset)
        mask = self.sample_masks(len(images), generator, x.device, global_size, offset)
        _, pred, composite = self._reconstruct(x, mask)
        out = {"rec": inpainting_l2(pred, x.float(), mask, self.cfg.context_weight)}
        disc = self.discriminator
        if disc is None:
            return out
        fake, real = self.adversarial_view(composite), self.adversarial_view(x)
        frozen = {name: p.detach() for name, p in disc.named_parameters()}
        out["adv_g"] = generator_adversarial_loss(
            torch.func.functional_call(disc, frozen, (fake,)).float()
        )
        logits = disc(torch.cat([real, fake.detach()])).float()
        logits_real, logits_fake = logits[: len(x)], logits[len(x) :]
        out["d"] = discriminator_loss(logits_real, logits_fake)
        with torch.no_grad():
            out["d_acc"] = ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean()) / 2
        return out

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        terms = self.losses(images, generator, global_size, offset)
        if self.discriminator is None:
            return terms["rec"], {"loss_rec": terms["rec"].detach()}
        w = self.cfg.adversarial_weight
        loss = (1 - w) * terms["rec"] + w * terms["adv_g"] + terms["d"]
        return loss, {
            "loss_rec": terms["rec"].detach(),
            "loss_adv_g": terms["adv_g"].detach(),
            "loss_d": terms["d"].detach(),
            "d_acc": terms["d_acc"],
        }

    # --- evaluation --------------------------------------------------------------------------
    def _eval_batch(
        self, images: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x = self.eval_pipeline(images, generator)
        mask = self.sample_masks(len(images), generator, x.device)
        x_in, pred, composite = self._reconstruct(x, mask)
        return x.float(), mask.float(), x_in.float(), pred, composite

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Inpainting quality on held-out images (no random crop; masks from ``generator``):

        * ``masked_loss``: the reconstruction loss (normalised pixels, as trained);
        * ``masked_psnr``: mean per-image PSNR (dB) of the fill over the masked pixels, in
          [0, 1] pixel space (:func:`masked_psnr`);
        * ``mean_fill_psnr``: the same for a trivial fill, each image's mean context colour;
        * ``sharpness``: :func:`sharpness_ratio` of the filled image (1 = as detailed as the
          truth, < 1 blurry);
        * ``d_acc`` (with the adversarial loss): the discriminator's accuracy, real vs filled.
        """
        x, mask, _, pred, composite = self._eval_batch(images, generator)
        truth01, fill01 = self.unnormalize(x), self.unnormalize(composite)
        ctx = 1 - mask
        mean_colour = (truth01 * ctx).sum((2, 3), keepdim=True) / ctx.sum((2, 3), keepdim=True)
        trivial01 = truth01 * ctx + mean_colour * mask
        out = {
            "masked_loss": float(inpainting_l2(pred, x, mask, self.cfg.context_weight)),
            "masked_psnr": float(masked_psnr(fill01, truth01, mask).mean()),
            "mean_fill_psnr": float(masked_psnr(trivial01, truth01, mask).mean()),
            "sharpness": float(sharpness_ratio(fill01, truth01, mask)),
        }
        if self.discriminator is not None:
            n = len(x)
            logits = self.discriminator(
                torch.cat([self.adversarial_view(x), self.adversarial_view(composite)])
            ).float()
            out["d_acc"] = float(
                ((logits[:n] > 0).float().mean() + (logits[n:] < 0).float().mean()) / 2
            )
        return out

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``inpainting``: a grid with one column per image (at most 8) and rows masked input
        (what the encoder sees) / filled (context + fill) / truth."""
        from torchvision.utils import make_grid

        images = images[:8]
        x, _, x_in, _, composite = self._eval_batch(images, generator)
        rows = torch.cat(
            [self.unnormalize(x_in), self.unnormalize(composite), self.unnormalize(x)]
        ).cpu()
        if rows.shape[1] == 1:
            rows = rows.expand(-1, 3, -1, -1)
        pad = max(1, math.ceil(x.shape[-1] / 32))
        grid = make_grid(rows, nrow=len(images), padding=pad, pad_value=1.0)
        return {"inpainting": grid.clamp(0, 1)}
