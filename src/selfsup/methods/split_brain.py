"""Split-brain autoencoders (Zhang, Isola & Efros, 2017): two sub-networks predict each
other's channels of CIE Lab, and their features together are the representation.

The encoder is a :class:`~selfsup.backbones.channel_split.ChannelSplitBackbone` with channel
groups ``(1, 2)`` on the ``lab`` input space (scaled L, a, b; see
:mod:`selfsup.augment.color`): branch 0 sees L and a :class:`ConvDecoder` on its spatial
features predicts ab; branch 1 sees ab and a second decoder predicts L. For evaluation the
encoder returns the concatenation of both branches' pooled features, and ``encoder.json``
records ``input_space: lab`` and ``channel_groups: [1, 2]``, so ``selfsup eval knn RUN``
rebuilds the composite and feeds it Lab-converted RGB images exactly as in training.

Each backbone branch is built from the run's ``backbone`` section (``backbone.width`` is per
branch: the paper splits one network into two halves, so the recipes halve the width and the
concatenated feature has the usual size).

Both directions use the same machinery as :mod:`selfsup.methods.colorization`, in one of two
modes: ``classification`` (the paper's best: ab over the in-gamut 10-unit bins, L over
``l_bins`` = 50 uniform bins of width 2; soft-encoded targets, optional class rebalancing of
ab with a running prior, annealed-mean decoding at T = 0.38) or ``regression`` (L2 / smooth-L1
on the scaled channels). The loss is ``loss_ab + l_weight * loss_l``.

Pretext metrics on held-out images: the colorization numbers of the L -> ab direction
(``ab_abs_error``, ``ab_l2_error``, ``psnr`` and the grey prediction's ``grey_ab_l2_error``,
``grey_psnr``) and of the ab -> L direction: ``l_abs_error`` (L units) and ``l_psnr`` (dB,
RGB of predicted L + true ab against the original).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from selfsup.augment.color import AB_SCALE, L_CENTER, L_SCALE, lab_to_rgb
from selfsup.backbones import Backbone
from selfsup.backbones.channel_split import ChannelSplitBackbone
from selfsup.heads import ConvDecoder, feature_map_shape, spatial_features
from selfsup.methods.base import StepResult
from selfsup.methods.lab_pretext import (
    LabMethod,
    LabPretextConfig,
    SoftBins,
    colorization_errors,
    l_bins,
    no_autocast,
    psnr,
    regression_loss,
)

__all__ = ["SplitBrain", "SplitBrainConfig"]


class SplitBrainConfig(LabPretextConfig):
    """The shared Lab options (:class:`~selfsup.methods.lab_pretext.LabPretextConfig`) for both
    directions, the L bins, and the weight of the ab -> L loss."""

    l_bins: int = Field(default=50, ge=2)
    """Number of uniform L bins over [0, 100]."""
    l_sigma: float = Field(default=1.0, gt=0)
    """Soft encoding of L: Gaussian width in L units (half a bin of the default 50)."""
    rebalance: bool = False
    """Class rebalancing of the ab bins (the split-brain paper trains without it)."""
    l_weight: float = Field(default=1.0, ge=0)
    """Weight of the ab -> L loss beside the L -> ab loss."""


class SplitBrain(LabMethod):
    """L -> ab and ab -> L on the two branches of a ``ChannelSplitBackbone`` with groups (1, 2)
    (the trainer builds it from ``channel_groups``)."""

    name = "split_brain"
    family = "transformation"
    description = (
        "split-brain autoencoder (Zhang et al. 2017): an L -> ab and an ab -> L sub-network, "
        "features concatenated"
    )
    Config = SplitBrainConfig
    input_space = "lab"
    channel_groups = (1, 2)
    keep_eager_on_cpu = "its compiled fp32 step measured 0.89x its eager one"

    cfg: SplitBrainConfig
    encoder: ChannelSplitBackbone

    def __init__(self, encoder: Backbone, cfg: SplitBrainConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if not isinstance(encoder, ChannelSplitBackbone) or encoder.groups != (1, 2):
            raise ValueError(
                f"{self.name} needs a ChannelSplitBackbone with channel groups (1, 2) "
                f"(L, ab), got {type(encoder).__name__}"
            )
        super().__init__(encoder, cfg, **kwargs)
        size = self.image_size
        dim_l, h_l = feature_map_shape(encoder.branches[0], 1, size)
        dim_ab, h_ab = feature_map_shape(encoder.branches[1], 2, size)
        self.ab_bins: SoftBins | None = None
        self.l_bins: SoftBins | None = None
        ab_out, l_out = 2, 1
        if cfg.mode == "classification":
            self.ab_bins = self.soft_ab_bins()
            self.l_bins = SoftBins(
                l_bins(cfg.l_bins),
                neighbors=cfg.neighbors,
                sigma=cfg.l_sigma,
                temperature=cfg.temperature,
            )
            ab_out, l_out = self.ab_bins.num_bins, self.l_bins.num_bins
        dd, md = cfg.decoder_dim, cfg.decoder_min_dim
        rows = cfg.mode == "classification"  # the bin losses read pixel rows
        self.ab_decoder = ConvDecoder(
            dim_l, ab_out, self.out_size, dd, md, channels_last_out=rows
        ).build(h_l)
        self.l_decoder = ConvDecoder(
            dim_ab, l_out, self.out_size, dd, md, channels_last_out=rows
        ).build(h_ab)

    # --- model -----------------------------------------------------------------------------
    def predict(self, lab: Tensor) -> tuple[Tensor, Tensor]:
        """Lab (N, 3, S, S) -> decoder outputs (ab from L: (N, Q_ab or 2, h, h); L from ab:
        (N, Q_L or 1, h, h)), in the autocast dtype (the bin losses read bf16 logits as they
        are; the regression loss and the decoding work in float32)."""
        x_l, x_ab = self.encoder.split(self.encoder_input(lab))
        out_ab = self.ab_decoder(spatial_features(self.encoder.branches[0], x_l))
        out_l = self.l_decoder(spatial_features(self.encoder.branches[1], x_ab))
        return out_ab, out_l

    def decode(self, out_ab: Tensor, out_l: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder outputs -> (ab (N, 2, h, h) in ab units, L (N, 1, h, h) in L units)."""
        if self.ab_bins is not None and self.l_bins is not None:
            return self.ab_bins.decode(out_ab), self.l_bins.decode(out_l)
        return out_ab.float() * AB_SCALE, out_l.float() * L_SCALE + L_CENTER

    def losses(
        self, out_ab: Tensor, out_l: Tensor, lab: Tensor, update_prior: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, metrics) of both directions against the pooled Lab truth."""
        ab, light = self.pool(lab[:, 1:]), self.pool(lab[:, :1])
        if self.ab_bins is not None and self.l_bins is not None:
            loss_ab, acc_ab = self.ab_bins.loss(out_ab, ab, update_prior)
            loss_l, acc_l = self.l_bins.loss(out_l, light, False)
            extra = {"ab_bin_accuracy": acc_ab, "l_bin_accuracy": acc_l}
        else:
            kind, beta = self.cfg.regression_loss, self.cfg.smooth_l1_beta
            loss_ab = regression_loss(out_ab, ab / AB_SCALE, kind, beta)
            loss_l = regression_loss(out_l, (light - L_CENTER) / L_SCALE, kind, beta)
            extra = {}
        loss = loss_ab + self.cfg.l_weight * loss_l
        return loss, {"loss_ab": loss_ab.detach(), "loss_l": loss_l.detach(), **extra}

    # --- training --------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        lab = self.train_lab(images, generator, global_size, offset)
        out_ab, out_l = self.predict(lab)
        return self.losses(out_ab, out_l, lab, update_prior=self.training)

    # --- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def _eval(self, images: Tensor, generator: torch.Generator):  # type: ignore[no-untyped-def]
        lab, rgb = self.eval_lab(images, generator)
        out_ab, out_l = self.predict(lab)
        ab, light = self.decode(out_ab, out_l)
        return lab, rgb, out_ab, out_l, self.upsample(ab), self.upsample(light)

    @torch.no_grad()
    def pretext_metrics(self, images: Tensor, generator: torch.Generator) -> dict[str, float]:
        """Both directions on held-out images (module docstring), plus the training losses."""
        lab, rgb, out_ab, out_l, ab, light = self._eval(images, generator)
        loss, parts = self.losses(out_ab, out_l, lab, update_prior=False)
        with no_autocast(lab):
            l_err = (light - lab[:, :1]).abs().mean()
            relit = lab_to_rgb(torch.cat([light.clamp(0, 100), lab[:, 1:]], 1))
            l_psnr = psnr(relit, rgb).mean()
        return {
            "loss": float(loss),
            "loss_ab": float(parts["loss_ab"]),
            "loss_l": float(parts["loss_l"]),
            **colorization_errors(lab, ab, rgb),
            "l_abs_error": float(l_err),
            "l_psnr": float(l_psnr),
        }

    @torch.no_grad()
    def pictures(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One column per image (at most 8). ``colorization`` (L -> ab): rows grey input /
        prediction / truth. ``lightness`` (ab -> L): rows ab input (drawn at L = 50) /
        prediction (predicted L + true ab) / truth."""
        lab, rgb, _, _, ab, light = self._eval(images[:8], generator)
        true_l, true_ab = lab[:, :1], lab[:, 1:]
        grey = lab_to_rgb(torch.cat([true_l, torch.zeros_like(ab)], 1))
        colour = lab_to_rgb(torch.cat([true_l, ab], 1))
        chroma = lab_to_rgb(torch.cat([torch.full_like(true_l, 50.0), true_ab], 1))
        relit = lab_to_rgb(torch.cat([light.clamp(0, 100), true_ab], 1))
        return {
            "colorization": self.grid([grey, colour, rgb]),
            "lightness": self.grid([chroma, relit, rgb]),
        }
