"""BYOL (Grill et al., 2020): an online network (encoder, projector, predictor) predicts the
projection of the other view made by a target network, the online encoder and projector's
exponential moving average. No negatives; the predictor and the slowly moving target prevent
collapse.

The loss is symmetric (each view predicts the other) and summed over the two directions as in
the paper, each term the normalised MSE ``2 - 2 cos``. The target's momentum follows BYOL's
cosine schedule from ``base_momentum`` to 1 over training, updated after every optimizer step.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from selfsup.heads import ProjectionHead
from selfsup.losses import normalized_mse
from selfsup.methods.base import Method, PositiveRetrieval, StepResult, TwoViewConfig
from selfsup.methods.momentum import EMA
from selfsup.methods.monitor import collapse_metrics


class BYOLConfig(TwoViewConfig):
    proj_hidden_dim: int = Field(default=4096, gt=0)
    proj_out_dim: int = Field(default=256, gt=0)
    pred_hidden_dim: int = Field(default=4096, gt=0)
    base_momentum: float = Field(default=0.99, ge=0, le=1)
    """Target momentum at step 0 (the paper: 0.996 for ImageNet; 0.99 is the usual CIFAR value)."""
    momentum_schedule: str = Field(default="cosine", pattern="^(cosine|constant)$")


class BYOL(PositiveRetrieval, Method):
    name = "byol"
    family = "self-distillation"
    description = (
        "online network predicts an EMA target network's projection of the other view "
        "(normalised MSE, no negatives)"
    )
    Config = BYOLConfig
    default_augment = "simclr_cifar"

    def __init__(self, encoder, cfg: BYOLConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, **kwargs)
        self.projector = ProjectionHead(
            encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=2
        )
        self.predictor = ProjectionHead(
            cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, num_layers=2
        )
        self.target = EMA(self._online(), cfg.base_momentum, cfg.momentum_schedule)

    def _online(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder, "projector": self.projector}

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
        p = self.predictor(z).float()
        with torch.no_grad():
            t = self.target["projector"](self.target["encoder"](x)).float()
        # view 1 predicts the target of view 2 and vice versa
        loss = normalized_mse(p[:n], t[n:]) + normalized_mse(p[n:], t[:n])
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(p, t.roll(n, 0), dim=1).mean()
        return loss, {
            "prediction_cosine": cos,
            "target_momentum": self.target.momentum.clone(),
            **collapse_metrics(z.float()),
        }

    def on_after_step(self, step: int, total_steps: int) -> None:
        self.target.update(self._online(), step, total_steps)
