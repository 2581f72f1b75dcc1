"""SimCLR (Chen et al., 2020): two augmented views, a projection head, NT-Xent over the batch.

Negatives are every other view in the *global* batch: under data parallelism the projections
are gathered from every process with gradients, so the loss equals the single-process loss.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from selfsup.losses import nt_xent
from selfsup.methods.base import ProjectorConfig, ProjectorMethod, StepResult
from selfsup.methods.monitor import collapse_metrics
from selfsup.utils.distributed import gather_with_grad


class SimCLRConfig(ProjectorConfig):
    temperature: float = Field(default=0.5, gt=0)


class SimCLR(ProjectorMethod):
    name = "simclr"
    family = "contrastive"
    description = (
        "two views, projection head, NT-Xent with in-batch negatives gathered across processes"
    )
    Config = SimCLRConfig
    cfg: SimCLRConfig

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
        features = self.encoder(torch.cat([x1, x2]))
        z = self.projector(features).float()
        z1, z2 = z[:n], z[n:]
        all_z1, all_z2 = gather_with_grad(z1), gather_with_grad(z2)
        loss = nt_xent(z1, z2, self.cfg.temperature, all_z1=all_z1, all_z2=all_z2, offset=offset)
        with torch.no_grad():
            zn = torch.nn.functional.normalize(z, dim=1)
            positive_cos = (zn[:n] * zn[n:]).sum(1).mean()
        return loss, {"positive_cosine": positive_cos, **collapse_metrics(z)}
