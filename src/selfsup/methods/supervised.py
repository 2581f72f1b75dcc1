"""Supervised baseline: the same encoder trained with labels and cross-entropy.

Every self-supervised number should sit beside this one (same architecture and budget).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from selfsup.methods.base import Method, MethodConfig, StepResult


class SupervisedConfig(MethodConfig):
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class Supervised(Method):
    name = "supervised"
    family = "baseline"
    replicable = True
    description = "labels + cross-entropy on the same encoder (a reference point, not SSL)"
    Config = SupervisedConfig
    uses_labels = True
    default_augment = "supervised_cifar"

    def __init__(self, encoder, cfg: SupervisedConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(encoder, cfg, **kwargs)
        if self.num_classes is None:
            raise ValueError("the supervised baseline needs a labeled data source")
        self.classifier = nn.Linear(encoder.feature_dim, self.num_classes)

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        global_size: int | None = None,
        offset: int = 0,
    ) -> StepResult:
        if labels is None:
            raise ValueError("the supervised baseline needs labels")
        features = self.encoder(self.views(images, generator, global_size, offset))
        logits = self.classifier(features).float()
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        accuracy = (logits.argmax(1) == labels).float().mean()
        return loss, {"train_accuracy": accuracy}
