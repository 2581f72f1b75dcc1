"""SimCLR (Chen et al., 2020): two augmented views, a projection head, NT-Xent over the batch.

Negatives are every other view in the *global* batch: under data parallelism the projections
are gathered from every process with gradients, so the loss equals the single-process loss.

**Multi-crop (an extension, off by default).** With ``num_local_crops = k > 0`` each image also
gives k small crops (``local_crop_size`` pixels, area ``local_crop_scale``) made by the same
pipeline with its crop swapped (as in SwAV and DINO), and the loss becomes the multi-view
NT-Xent (:func:`~selfsup.losses.multiview_nt_xent`): every view's positives are the other
views of its image. With k = 0 this is exactly the paper's loss.

**How the two views meet the encoder** (``encode_views``). ``joint`` (the default) runs one
encoder pass over the 2B views, so BatchNorm normalises both views with one set of batch
statistics, as the paper's global BatchNorm does. ``separate`` runs one pass of B per view, each
view normalised by its own statistics, as lightly and most PyTorch ports do; it is the same
arithmetic in smaller batches, which on the native-bf16 CPU of BENCHMARKS.md runs 6% faster at
full width and 32 px (``benchmarks/bench_vs_lightly.py``). The two give different BatchNorm
statistics, hence different training runs.

**Decoupled denominator (an extension, off by default).** With ``decoupled: true`` the loss is
DCL's (Yeh et al., "Decoupled Contrastive Learning", ECCV 2022): the positive pair is left out
of the softmax denominator, so each view's loss is ``-s_pos / t + log sum_neg exp(s / t)``.
The paper shows the coupled term damps the gradient most when batches are small and training is
short; everything else (views, projector, temperature) is unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from selfsup.augment import recrop_pipeline
from selfsup.backbones import Backbone
from selfsup.losses import multiview_nt_xent, nt_xent
from selfsup.methods.base import ProjectorConfig, ProjectorMethod, StepResult
from selfsup.methods.monitor import collapse_metrics
from selfsup.utils.distributed import gather_with_grad


class SimCLRConfig(ProjectorConfig):
    temperature: float = Field(default=0.5, gt=0)
    num_local_crops: int = Field(default=0, ge=0)
    """Extra small crops per image (multi-crop); 0 = the paper's two views."""
    local_crop_size: int | None = Field(default=None, gt=0)
    """Side of the local crops; None: ``image_size // 2``."""
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    """Crop area range of the local crops."""
    encode_views: Literal["joint", "separate"] = "joint"
    """One encoder pass over both views (shared BatchNorm statistics) or one per view (module
    docstring)."""
    decoupled: bool = False
    """Leave the positive out of the softmax denominator (decoupled contrastive learning; module
    docstring)."""


class SimCLR(ProjectorMethod):
    name = "simclr"
    family = "contrastive"
    replicable = True
    description = (
        "two views, projection head, NT-Xent with in-batch negatives gathered across processes"
    )
    Config = SimCLRConfig
    cfg: SimCLRConfig

    def __init__(self, encoder: Backbone, cfg: SimCLRConfig, **kwargs: object) -> None:
        super().__init__(encoder, cfg, **kwargs)
        local_size = cfg.local_crop_size or max(1, self.image_size // 2)
        self.local_pipeline = (
            recrop_pipeline(self.pipeline, local_size, cfg.local_crop_scale)
            if cfg.num_local_crops
            else None
        )

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        n = len(images)
        x1, x2 = self.two_views(images, generator, global_size, offset)
        if self.cfg.encode_views == "separate":
            features = torch.cat([self.encoder(x1), self.encoder(x2)])
        else:
            features = self.encoder(torch.cat([x1, x2]))
        z = self.projector(features).float()
        z1, z2 = z[:n], z[n:]
        if self.local_pipeline is None:
            all_z1, all_z2 = gather_with_grad(z1), gather_with_grad(z2)
            loss = nt_xent(
                z1,
                z2,
                self.cfg.temperature,
                all_z1=all_z1,
                all_z2=all_z2,
                offset=offset,
                decoupled=self.cfg.decoupled,
            )
        else:
            local = torch.cat(
                [
                    self.local_pipeline(
                        images, generator, global_size=global_size, offset=offset
                    ).contiguous(memory_format=self.memory_format)
                    for _ in range(self.cfg.num_local_crops)
                ]
            )
            z_local = self.projector(self.encoder(local)).float()
            views = torch.cat([z, z_local]).view(-1, n, z.shape[1])  # (2 + k, n, D)
            all_views = gather_with_grad(views.transpose(0, 1)).transpose(0, 1)
            loss = multiview_nt_xent(
                views,
                self.cfg.temperature,
                all_views=all_views,
                offset=offset,
                decoupled=self.cfg.decoupled,
            )
        with torch.no_grad():
            zn = torch.nn.functional.normalize(z, dim=1)
            positive_cos = (zn[:n] * zn[n:]).sum(1).mean()
        return loss, {"positive_cosine": positive_cos, **collapse_metrics(z)}
