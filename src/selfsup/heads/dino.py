"""DINO's projection head: an MLP, an L2-normalised bottleneck and a weight-normalised linear
layer onto ``out_dim`` prototypes (Caron et al., 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.heads.projection import hidden_layers


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation: ``W = g * V / ||V||`` row by row.

    ``weight_v`` (out, in) is the direction, ``weight_g`` (out, 1) the per-row norm. With
    ``fix_norm=True`` (DINO's ``norm_last_layer``), ``g`` is a frozen buffer-like parameter of
    ones (``requires_grad=False``), so every prototype has unit norm and only the direction
    trains.

    Shapes: (N, in_features) -> (N, out_features).
    """

    def __init__(self, in_features: int, out_features: int, fix_norm: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        v = torch.empty(out_features, in_features)
        nn.init.trunc_normal_(v, std=0.02)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fix_norm)
        self.fix_norm = fix_norm

    @property
    def weight(self) -> Tensor:
        """The effective (out, in) weight ``g * V / ||V||``."""
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        # prototype logits in float32 whatever the autocast: with a teacher temperature of
        # 0.04 a bf16 rounding of a cosine (~0.004) moves a softmax logit by ~0.1
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, fix_norm={self.fix_norm}"


class DINOHead(nn.Module):
    """``Linear -> [BN] -> GELU`` (``num_layers - 1`` times), ``Linear`` to ``bottleneck_dim``,
    L2-normalise, then a :class:`WeightNormLinear` to ``out_dim`` prototype logits.

    Args:
        in_dim: encoder feature size D.
        out_dim: number of prototypes K (65536 for the ImageNet recipes, ~4096 for CIFAR).
        hidden_dim: MLP width (2048).
        bottleneck_dim: size of the normalised bottleneck (256).
        num_layers: Linear layers of the MLP including the bottleneck one (3).
        use_bn: BatchNorm after each hidden Linear (off for ViTs, DINO's default).
        norm_last_layer: fix the prototypes' norms to 1 (``weight_g`` not trained).

    Shapes: ``forward`` (N, D) -> (N, K); ``bottleneck`` (N, D) -> (N, bottleneck_dim),
    unit-norm rows.

    Example::

        head = DINOHead(512, out_dim=4096)
        logits = head(torch.randn(8, 512))   # (8, 4096)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers, dim = hidden_layers(
            in_dim, hidden_dim, num_layers, batch_norm=use_bn, bias=True, activation=nn.GELU
        )
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def bottleneck(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, bottleneck_dim) L2-normalised bottleneck features."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(self.bottleneck(x))
