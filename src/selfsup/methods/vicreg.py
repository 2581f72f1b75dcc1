"""VICReg (Bardes, Ponce & LeCun, 2022): Variance-Invariance-Covariance regularisation of the
two views' expander outputs: an MSE between the views (invariance), a hinge keeping every
dimension's std above 1 (variance) and a penalty on off-diagonal covariances (covariance).

Variance and covariance are statistics of the batch: under data parallelism the embeddings are
gathered from every process with gradients, so 2 processes compute the 1-process loss.
Published expander (ImageNet): 3 layers, 8192-8192-8192; weights 25 / 25 / 1.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from selfsup.losses import vicreg_terms
from selfsup.methods.base import ProjectorConfig, ProjectorMethod, StepResult
from selfsup.methods.monitor import collapse_metrics
from selfsup.utils.distributed import gather_with_grad


class VICRegConfig(ProjectorConfig):
    proj_hidden_dim: int = Field(default=8192, gt=0)
    proj_out_dim: int = Field(default=8192, gt=0)
    proj_layers: int = Field(default=3, ge=1)
    invariance_weight: float = Field(default=25.0, ge=0)
    variance_weight: float = Field(default=25.0, ge=0)
    covariance_weight: float = Field(default=1.0, ge=0)
    eps: float = Field(default=1e-4, gt=0)


class VICReg(ProjectorMethod):
    name = "vicreg"
    family = "redundancy reduction"
    replicable = True
    description = (
        "invariance MSE + per-dimension std hinge + covariance penalty on the two views' "
        "expander outputs (statistics over the global batch)"
    )
    Config = VICRegConfig
    cfg: VICRegConfig

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
        terms = vicreg_terms(gather_with_grad(z[:n]), gather_with_grad(z[n:]), self.cfg.eps)
        cfg = self.cfg
        loss = (
            cfg.invariance_weight * terms["invariance"]
            + cfg.variance_weight * terms["variance"]
            + cfg.covariance_weight * terms["covariance"]
        )
        metrics = {f"loss_{k}": v.detach() for k, v in terms.items()}
        return loss, {**metrics, **collapse_metrics(z)}
