"""Barlow Twins (Zbontar et al., 2021): push the cross-correlation matrix of the two views'
batch-standardised projections towards the identity (invariance on the diagonal, redundancy
reduction off it). No negatives, no asymmetry.

The cross-correlation is a statistic of the batch: under data parallelism the projections are
gathered from every process with gradients, so 2 processes compute the 1-process loss.
Published projector (ImageNet): 3 layers, 8192-8192-8192; lambda = 5e-3.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from selfsup.losses import barlow_twins_loss, cross_correlation
from selfsup.methods.base import ProjectorConfig, ProjectorMethod, StepResult
from selfsup.methods.monitor import collapse_metrics
from selfsup.utils.distributed import gather_with_grad


class BarlowTwinsConfig(ProjectorConfig):
    proj_hidden_dim: int = Field(default=8192, gt=0)
    proj_out_dim: int = Field(default=8192, gt=0)
    proj_layers: int = Field(default=3, ge=1)
    lambd: float = Field(default=5e-3, ge=0)
    """Weight of the off-diagonal (redundancy) term."""
    loss_scale: float = Field(default=1.0, gt=0)
    """Multiplies the loss (the official code's ``--scale-loss``; solo-learn's ``scale_loss``).
    The raw loss sums D squared terms, so its gradients are ~100x SimCLR's: with SGD (and for
    the norm and bias parameters LARS does not adapt) the scale sets the effective step size."""


class BarlowTwins(ProjectorMethod):
    name = "barlow_twins"
    family = "redundancy reduction"
    replicable = True
    description = (
        "cross-correlation of the two views' standardised projections pushed to the identity "
        "(statistics over the global batch)"
    )
    Config = BarlowTwinsConfig
    cfg: BarlowTwinsConfig

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
        z = self.projector(self.encoder(x)).float()  # (2n, proj_out_dim)
        z1, z2 = gather_with_grad(z[:n]), gather_with_grad(z[n:])
        loss = self.cfg.loss_scale * barlow_twins_loss(z1, z2, self.cfg.lambd)
        with torch.no_grad():
            diag = torch.diagonal(cross_correlation(z1, z2)).mean()
        return loss, {"mean_diagonal_correlation": diag, **collapse_metrics(z)}
