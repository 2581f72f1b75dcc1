"""MAE (He et al., 2021): mask most patches, encode the visible ones, reconstruct the pixels.

The ViT encoder runs on the visible patches only (``L_keep = int(L * (1 - mask_ratio))``
tokens plus cls), which is what makes MAE cheap. A small transformer decoder receives the
encoded visible tokens plus a shared learnable mask token at every masked position (unshuffled
with ``ids_restore``), adds a fixed 2D sin-cos position embedding and predicts the
``p * p * C`` pixels of every patch. The loss is the MSE on the *masked* patches only,
optionally against per-patch normalised targets (``norm_pix_loss``, as in the paper).

Masks are drawn for the global batch from the step's generator and sliced at ``offset``, so
data-parallel processes see exactly what one process would.

``encoder_on_visible_only=False`` is the SimMIM-like baseline: the encoder runs over the full
sequence with a learnable encoder mask token in place of every masked patch (same loss, same
decoder); it exists to measure what the visible-only encoder saves.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from selfsup.augment import (
    build_pipeline,
    crop_flip_pipeline,
)
from selfsup.augment.masking import block_masking, grid_masking, random_masking
from selfsup.backbones.vit import Block, VisionTransformer, get_2d_sincos_pos_embed
from selfsup.losses.precision import full_precision
from selfsup.methods.base import Method, MethodConfig, StepResult

__all__ = ["MAE", "MAEConfig", "masked_mse", "normalize_patches", "denormalize_patches"]

NORM_PIX_EPS = 1e-6


class MAEConfig(MethodConfig):
    mask_ratio: float = Field(default=0.75, gt=0, lt=1)
    """Fraction of patches hidden from the encoder."""
    masking: Literal["random", "block", "grid"] = "random"
    """``random`` (MAE), ``block`` (BEiT rectangles) or ``grid`` (1 of every 2x2; ratio 0.75)."""
    decoder_dim: int = Field(default=128, gt=0)
    decoder_depth: int = Field(default=2, ge=0)
    decoder_heads: int = Field(default=4, gt=0)
    decoder_mlp_ratio: float = Field(default=4.0, gt=0)
    norm_pix_loss: bool = True
    """Regress per-patch normalised pixels ((t - mean) / sqrt(var + 1e-6)) instead of raw ones."""
    encoder_on_visible_only: bool = True
    """False: SimMIM-like baseline, the encoder sees the full sequence with mask tokens."""
    min_block: int = Field(default=4, ge=1)
    """``block`` masking: smallest rectangle, in patches."""

    @model_validator(mode="after")
    def _check(self) -> MAEConfig:
        if self.decoder_dim % 4:
            raise ValueError(
                f"decoder_dim must be divisible by 4 (2D sin-cos), got {self.decoder_dim}"
            )
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(
                f"decoder_dim {self.decoder_dim} not divisible by "
                f"decoder_heads {self.decoder_heads}"
            )
        if self.masking == "grid" and abs(self.mask_ratio - 0.75) > 1e-9:
            raise ValueError("masking 'grid' keeps 1 of every 2x2 patches: mask_ratio must be 0.75")
        return self


def normalize_patches(target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch normalisation of (..., D) pixels: ``((t - mean) / std, mean, std)`` with
    ``std = sqrt(var + 1e-6)`` (unbiased variance, as MAE)."""
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
    return (target - mean) / std, mean, std


def denormalize_patches(pred: Tensor, target: Tensor) -> Tensor:
    """Map a per-patch-normalised prediction back to pixels with the target patch's statistics
    (what MAE's visualisation does when the model was trained with ``norm_pix_loss``)."""
    _, mean, std = normalize_patches(target)
    return pred * std + mean


@full_precision
def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = False) -> Tensor:
    """Mean squared error over the masked patches only.

    Args:
        pred: (N, L, D) predicted patches.
        target: (N, L, D) target patches (``patchify`` of the input).
        mask: (N, L) float, 1 = masked (counted), 0 = visible (ignored).
        norm_pix: compare against per-patch normalised targets.

    Returns:
        0-d tensor: mean over masked patches of the per-patch mean squared error.
    """
    if norm_pix:
        target = normalize_patches(target)[0]
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class MAE(Method):
    name = "mae"
    family = "masked reconstruction"
    description = (
        "mask 75% of ViT patches, encode the visible ones, reconstruct masked pixels with a "
        "light decoder"
    )
    Config = MAEConfig
    default_augment = "eval"
    global_pool = "avg"  # frozen features: the patch-token mean (chosen on validation, see docs)

    encoder: VisionTransformer

    def __init__(self, encoder, cfg: MAEConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if not isinstance(encoder, VisionTransformer):
            raise ValueError(
                f"MAE needs a native ViT encoder (backbone.name: vit_micro, vit_tiny, vit_small, "
                f"vit_base), got {type(encoder).__name__}"
            )
        augment = kwargs.pop("augment", None)
        super().__init__(encoder, cfg, augment=augment or "eval", **kwargs)
        size, mean, std = self.image_size, self.mean, self.std
        if augment is None:
            # MAE's light augmentation: random resized crop (0.2-1), flip, normalise.
            self.pipeline = crop_flip_pipeline(size, (0.2, 1.0), mean, std)
        self.eval_pipeline = build_pipeline("eval", size, mean, std)

        dim, ddim = encoder.embed_dim, cfg.decoder_dim
        p, c = encoder.patch_size, encoder.in_channels
        # Visible-only: the decoder fills masked positions with ``mask_token``. Full sequence:
        # the encoder does, with ``encoder_mask_token`` (only the used one exists, for DDP).
        self.mask_token: nn.Parameter | None = None
        self.encoder_mask_token: nn.Parameter | None = None
        if cfg.encoder_on_visible_only:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        else:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_embed = nn.Linear(dim, ddim)
        pe = get_2d_sincos_pos_embed(ddim, encoder.grid_size, cls_token=True).unsqueeze(0)
        self.register_buffer("decoder_pos_embed", pe)
        self.decoder_blocks = nn.ModuleList(
            Block(ddim, cfg.decoder_heads, cfg.decoder_mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, p * p * c)
        self._init_decoder()

    def _init_decoder(self) -> None:
        for token in (self.mask_token, self.encoder_mask_token):
            if token is not None:
                nn.init.normal_(token, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    # --- masks -----------------------------------------------------------------------------
    def sample_masks(
        self,
        n: int,
        generator: torch.Generator,
        device: torch.device,
        global_size: int | None = None,
        offset: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Masks for rows ``[offset, offset + n)`` of a global batch of ``global_size``.

        Returns ``(ids_keep (n, L_keep), mask (n, L) float 1 = masked, ids_restore (n, L))``.
        """
        total = n if global_size is None else global_size
        if global_size is None and offset != 0:
            raise ValueError("offset requires global_size")
        if offset < 0 or offset + n > total:
            raise ValueError(f"rows [{offset}, {offset + n}) exceed global_size={total}")
        enc, cfg = self.encoder, self.cfg
        if cfg.masking == "random":
            masks = random_masking(total, enc.num_patches, cfg.mask_ratio, generator, device)
        elif cfg.masking == "block":
            masks = block_masking(
                total, enc.grid_size, cfg.mask_ratio, generator, device, min_block=cfg.min_block
            )
        else:
            masks = grid_masking(total, enc.grid_size, generator, device)
        return tuple(t[offset : offset + n] for t in masks)  # type: ignore[return-value]

    # --- model -----------------------------------------------------------------------------
    def encode(self, x: Tensor, ids_keep: Tensor, mask: Tensor) -> Tensor:
        """Encoder tokens (N, 1 + L_keep, dim) of the visible patches (cls first), or
        (N, 1 + L, dim) over the full sequence with ``encoder_on_visible_only=False``."""
        enc = self.encoder
        if self.cfg.encoder_on_visible_only:
            return enc.forward_tokens(enc.embed(x), ids_keep)
        tokens = enc.patch_embed(x)
        m = mask.unsqueeze(-1).to(tokens.dtype)
        assert self.encoder_mask_token is not None
        tokens = tokens * (1 - m) + self.encoder_mask_token.to(tokens.dtype) * m
        return enc.forward_tokens(tokens + enc.pos_embed[:, 1:, :])

    def decode(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """(N, 1 + L', dim) encoder tokens -> (N, L, p * p * C) predicted patches.

        With L' < L the visible tokens are completed with mask tokens and unshuffled with
        ``ids_restore``; with L' = L (full-sequence encoder) they are already in place.
        """
        x = self.decoder_embed(latent)
        n, t, d = x.shape
        length = ids_restore.shape[1]
        if t - 1 < length:
            assert self.mask_token is not None, "encoder output is not the full sequence"
            fill = self.mask_token.to(x.dtype).expand(n, length + 1 - t, d)
            rest = torch.cat([x[:, 1:], fill], dim=1)
            rest = torch.gather(rest, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
            x = torch.cat([x[:, :1], rest], dim=1)
        x = x + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def predict(self, x: Tensor, ids_keep: Tensor, mask: Tensor, ids_restore: Tensor) -> Tensor:
        """Normalised images (N, C, H, W) + masks -> predicted patches (N, L, p * p * C)."""
        return self.decode(self.encode(x, ids_keep, mask), ids_restore)

    def _pixels(self, pred: Tensor, target: Tensor) -> Tensor:
        """The prediction in (normalised-image) pixel space."""
        return denormalize_patches(pred, target) if self.cfg.norm_pix_loss else pred

    # --- training --------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        x = self.views(images, generator, global_size, offset)
        ids_keep, mask, ids_restore = self.sample_masks(
            len(images), generator, x.device, global_size, offset
        )
        pred = self.predict(x, ids_keep, mask, ids_restore).float()
        target = self.encoder.patchify(x).float()
        loss = masked_mse(pred, target, mask, self.cfg.norm_pix_loss)
        with torch.no_grad():
            raw = masked_mse(self._pixels(pred, target), target, mask)
        return loss, {"masked_mse": raw}

    # --- evaluation ------------------------------------------------------------------------
    def _eval_batch(self, images: Tensor, generator: torch.Generator):  # type: ignore[no-untyped-def]
        x = self.eval_pipeline(images, generator)
        ids_keep, mask, ids_restore = self.sample_masks(len(images), generator, x.device)
        pred = self.predict(x, ids_keep, mask, ids_restore).float()
        target = self.encoder.patchify(x).float()
        return x.float(), mask, pred, target

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Reconstruction of masked patches of held-out images (no random crop):

        * ``masked_loss``: the training loss (with ``norm_pix_loss`` if set);
        * ``masked_mse``: MSE in normalised-image pixels (comparable across ``norm_pix_loss``);
        * ``masked_psnr``: mean per-image PSNR (dB) of the masked patches in [0, 1] pixels.
        """
        x, mask, pred, target = self._eval_batch(images, generator)
        pix = self._pixels(pred, target)
        enc = self.encoder
        rec01 = enc.patchify(self.unnormalize(enc.unpatchify(pix)))
        tgt01 = enc.patchify(self.unnormalize(x))
        per_image = ((rec01 - tgt01).pow(2).mean(-1) * mask).sum(1) / mask.sum(1).clamp_min(1)
        psnr = -10.0 * torch.log10(per_image.clamp_min(1e-10))
        return {
            "masked_loss": float(masked_mse(pred, target, mask, self.cfg.norm_pix_loss)),
            "masked_mse": float(masked_mse(pix, target, mask)),
            "masked_psnr": float(psnr.mean()),
        }

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``reconstruction``: a grid with one column per image (at most 8) and rows original /
        masked (grey) / reconstruction / reconstruction with the visible patches pasted back."""
        from torchvision.utils import make_grid

        images = images[:8]
        x, mask, pred, target = self._eval_batch(images, generator)
        enc = self.encoder
        original = self.unnormalize(x)
        recon = self.unnormalize(enc.unpatchify(self._pixels(pred, target)))
        m = enc.unpatchify(mask.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
        masked = original * (1 - m) + 0.5 * m
        pasted = original * (1 - m) + recon * m
        rows = torch.cat([original, masked, recon, pasted]).cpu()
        pad = max(1, math.ceil(x.shape[-1] / 32))
        grid = make_grid(rows, nrow=len(images), padding=pad, pad_value=1.0)
        return {"reconstruction": grid.clamp(0, 1)}
