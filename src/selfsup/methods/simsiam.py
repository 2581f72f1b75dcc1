"""SimSiam (Chen & He, 2021): a Siamese encoder + projector; a predictor maps one view's
projection to the other's, which is held constant (stop-gradient). No negatives, no momentum
encoder: the stop-gradient alone prevents collapse.

Loss: ``D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2`` with ``D`` the negative cosine similarity.
Published heads (ImageNet): a 3-layer projector 2048-2048-2048 with BatchNorm on every layer
including the output, and a bottleneck predictor 2048-512-2048.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from selfsup.heads import ProjectionHead
from selfsup.losses import negative_cosine
from selfsup.methods.base import Method, PositiveRetrieval, StepResult, TwoViewConfig
from selfsup.methods.monitor import collapse_metrics


class SimSiamConfig(TwoViewConfig):
    proj_hidden_dim: int = Field(default=2048, gt=0)
    proj_out_dim: int = Field(default=2048, gt=0)
    proj_layers: int = Field(default=3, ge=1)
    pred_hidden_dim: int = Field(default=512, gt=0)
    fix_predictor_lr: bool = True
    """Hold the predictor at the peak learning rate (the paper, section 4.2: a fixed rate for
    the predictor works slightly better than decaying it); the rest follows the schedule."""


class SimSiam(PositiveRetrieval, Method):
    name = "simsiam"
    family = "self-distillation"
    replicable = True
    description = (
        "Siamese network, predictor to the other view's stop-gradient projection "
        "(negative cosine, no negatives, no momentum encoder)"
    )
    Config = SimSiamConfig
    default_augment = "simclr_cifar"

    def __init__(self, encoder, cfg: SimSiamConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, **kwargs)
        self.projector = ProjectionHead(
            encoder.feature_dim,
            cfg.proj_hidden_dim,
            cfg.proj_out_dim,
            cfg.proj_layers,
            last_batch_norm=True,
        )
        self.predictor = ProjectionHead(
            cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, num_layers=2
        )

    def fixed_lr(self) -> tuple[str, ...]:
        """The predictor keeps the peak learning rate when ``fix_predictor_lr``."""
        return ("predictor.",) if self.cfg.fix_predictor_lr else ()

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        n = len(images)
        x = torch.cat(self.two_views(images, generator, global_size, offset))
        z = self.projector(self.encoder(x))  # (2n, proj_out_dim)
        p = self.predictor(z)
        z, p = z.float(), p.float()
        # negative_cosine detaches its target: the stop-gradient
        loss = 0.5 * negative_cosine(p[:n], z[n:]) + 0.5 * negative_cosine(p[n:], z[:n])
        return loss, collapse_metrics(z)
