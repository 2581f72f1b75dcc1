"""Colorization (Zhang, Isola & Efros, 2016): predict the colour of an image from its lightness.

Images are converted to CIE Lab (:mod:`selfsup.augment.color`); the encoder sees the L channel
only (input space ``lab_l``: 1 channel, ``(L - 50) / 50``) and a :class:`ConvDecoder` on its
spatial features predicts the ab channels at ``image_size // target_downsample``, where the
targets are the average-pooled ab of the full-resolution image. Two modes:

* ``regression``: the decoder outputs ab / 110 (2 channels); L2 or smooth-L1 loss in those
  units.
* ``classification`` (the paper's): the ab plane is quantised on a 10-unit grid and only the
  in-gamut bins are kept (:func:`ab_bins`: the grid points that are the nearest bin centre of
  some 8-bit sRGB colour — 261 bins; Zhang et al. report 313 with an unpublished gamut test, see
  :func:`ab_bins`). Targets are soft-encoded: the ``neighbors`` (5) nearest bins of the true ab,
  weighted by a Gaussian kernel (sigma 5) and normalised to sum 1. The loss is the
  cross-entropy against them, optionally **class-rebalanced**: each pixel is weighted by
  ``w[q*]`` of its nearest bin, with ``w ∝ 1 / ((1 - λ) p + λ / Q)``, λ = 0.5, and ``w``
  normalised so that ``Σ_q p_q w_q = 1`` (the mean weight over pixels drawn from the data is 1,
  as in the paper). The prior ``p`` is a running estimate — the accumulated soft targets of
  every training batch (a Gaussian-smoothed ab histogram), in the ``prior_mass`` buffer, so it
  is checkpointed and a resumed run continues with the same prior. Predictions are decoded with
  the **annealed mean** of the bin distribution at temperature 0.38 (T -> 0: the mode,
  T = 1: the mean).

Evaluation on RGB data: the run's ``encoder.json`` records ``input_space: lab_l``, so kNN,
linear probe, the trainer's kNN monitor and ``eval pretext`` convert RGB images to Lab and feed
the encoder the scaled L channel, exactly as in training (see :mod:`selfsup.augment.color`).
The run's ``normalize`` statistics do not apply to Lab inputs.

Pretext metrics on held-out images (no random crop): ``ab_abs_error`` (mean |Δa|, |Δb|),
``ab_l2_error`` (mean per-pixel Euclidean ab error), ``psnr`` (dB, the colourised RGB image —
true L, predicted ab — against the original), beside the same numbers for the trivial grey
prediction ``a = b = 0`` (``grey_ab_l2_error``, ``grey_psnr``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.augment.color import AB_SCALE, lab_to_rgb
from selfsup.backbones import Backbone
from selfsup.heads import ConvDecoder, feature_map_shape, spatial_features
from selfsup.methods.base import StepResult
from selfsup.methods.lab_pretext import (
    AB_GRID,
    GridIndex,
    LabMethod,
    LabPretextConfig,
    SoftBins,
    ab_bins,
    annealed_mean,
    colorization_errors,
    l_bins,
    lab_train_pipeline,
    no_autocast,
    psnr,
    rebalance_weights,
    regression_loss,
    soft_cross_entropy,
    soft_encode,
    soft_encode_dense,
)

__all__ = [
    "AB_GRID",
    "Colorization",
    "ColorizationConfig",
    "LabPretextConfig",
    "GridIndex",
    "LabMethod",
    "SoftBins",
    "ab_bins",
    "annealed_mean",
    "colorization_errors",
    "l_bins",
    "lab_train_pipeline",
    "no_autocast",
    "psnr",
    "rebalance_weights",
    "regression_loss",
    "soft_cross_entropy",
    "soft_encode",
    "soft_encode_dense",
]


class ColorizationConfig(LabPretextConfig):
    """The shared Lab options (:class:`~selfsup.methods.lab_pretext.LabPretextConfig`):
    classification over in-gamut ab bins with class rebalancing (the paper) or regression of
    ab / 110 (smooth-L1 beta 0.05 = 5.5 ab units)."""


class Colorization(LabMethod):
    """L -> ab. ``encoder`` must take 1 input channel (the trainer builds it so: see
    :meth:`encoder_channels`)."""

    name = "colorization"
    family = "transformation"
    description = (
        "predict the ab channels of CIE Lab from L (Zhang et al. 2016): soft-encoded "
        "classification over in-gamut ab bins with class rebalancing, or regression"
    )
    Config = ColorizationConfig
    input_space = "lab_l"
    keep_eager_on_cpu = (
        "its compiled fp32 step measured 1.07x its eager one, repaying the compile only after "
        "~2,400 steps"
    )

    cfg: ColorizationConfig

    def __init__(self, encoder: Backbone, cfg: ColorizationConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if encoder.in_channels != 1:
            raise ValueError(
                f"{self.name} encodes the L channel: the encoder must take 1 input channel, "
                f"got {encoder.in_channels}"
            )
        super().__init__(encoder, cfg, **kwargs)
        dim, h = feature_map_shape(encoder, 1, self.image_size)
        self.ab_bins: SoftBins | None = None
        out_channels = 2
        if cfg.mode == "classification":
            self.ab_bins = self.soft_ab_bins()
            out_channels = self.ab_bins.num_bins
        self.decoder = ConvDecoder(
            dim,
            out_channels,
            self.out_size,
            cfg.decoder_dim,
            cfg.decoder_min_dim,
            channels_last_out=self.ab_bins is not None,  # the bin loss reads pixel rows
        ).build(h)

    def predict(self, lab: Tensor) -> Tensor:
        """Lab (N, 3, S, S) -> the decoder's output (N, Q or 2, h, h) from L alone, in the
        autocast dtype (the bin loss reads bf16 logits as they are; the regression loss and
        the decoding work in float32)."""
        return self.decoder(spatial_features(self.encoder, self.encoder_input(lab)))

    def decode_ab(self, out: Tensor) -> Tensor:
        """Decoder output -> ab (N, 2, h, h) in ab units (annealed mean or regression)."""
        if self.ab_bins is not None:
            return self.ab_bins.decode(out)
        return out.float() * AB_SCALE

    def ab_loss(
        self, out: Tensor, ab: Tensor, update_prior: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the decoder output against the pooled true ab (N, 2, h, h), and metrics."""
        if self.ab_bins is not None:
            loss, accuracy = self.ab_bins.loss(out, ab, update_prior)
            return loss, {"bin_accuracy": accuracy}
        loss = regression_loss(
            out, ab / AB_SCALE, self.cfg.regression_loss, self.cfg.smooth_l1_beta
        )
        with torch.no_grad():
            err = (out.detach().float() * AB_SCALE - ab).norm(dim=1).mean()
        return loss, {"ab_l2_error": err}

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        lab = self.train_lab(images, generator, global_size, offset)
        out = self.predict(lab)
        return self.ab_loss(out, self.pool(lab[:, 1:]), update_prior=self.training)

    @torch.no_grad()
    def colourise(
        self, images: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Held-out uint8 images -> (Lab (N, 3, S, S), RGB truth, predicted ab (N, 2, S, S))."""
        lab, rgb = self.eval_lab(images, generator)
        return lab, rgb, self.upsample(self.decode_ab(self.predict(lab)))

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Colour errors of the held-out images (module docstring) and the training ``loss``
        (without touching the prior)."""
        lab, rgb = self.eval_lab(images, generator)
        out = self.predict(lab)
        loss, _ = self.ab_loss(out, self.pool(lab[:, 1:]), update_prior=False)
        ab = self.upsample(self.decode_ab(out))
        return {"loss": float(loss), **colorization_errors(lab, ab, rgb)}

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``colorization``: one column per image (at most 8), rows grey input / prediction
        (true L + predicted ab) / truth."""
        lab, rgb, ab = self.colourise(images[:8], generator)
        light = lab[:, :1]
        grey = lab_to_rgb(torch.cat([light, torch.zeros_like(ab)], 1))
        colour = lab_to_rgb(torch.cat([light, ab], 1))
        return {"colorization": self.grid([grey, colour, rgb])}
