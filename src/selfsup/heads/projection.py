"""Projection / prediction MLPs and classifier heads."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def hidden_layers(
    in_dim: int,
    hidden_dim: int,
    num_layers: int,
    *,
    batch_norm: bool,
    bias: bool,
    activation: Callable[[], nn.Module] = lambda: nn.ReLU(inplace=True),
) -> tuple[list[nn.Module], int]:
    """The hidden part of an MLP of ``num_layers`` Linear layers: ``Linear -> [BN] -> act``
    repeated ``num_layers - 1`` times, and the width the final Linear then takes (``in_dim``
    when there is no hidden layer). Shapes: (N, in_dim) -> (N, hidden_dim)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=bias))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(activation())
        dim = hidden_dim
    return layers, dim


class ProjectionHead(nn.Module):
    """MLP ``Linear -> BN -> ReLU`` repeated, then a final ``Linear`` (optionally BN).

    SimCLR's CIFAR head is ``ProjectionHead(512, 2048, 128)``.

    Args:
        in_dim: input feature size D.
        hidden_dim: width of the hidden layers.
        out_dim: output size.
        num_layers: number of Linear layers (>= 1).
        batch_norm: BatchNorm after each hidden Linear.
        last_batch_norm: BatchNorm (no affine) after the final Linear.

    Shapes: (N, in_dim) -> (N, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers, dim = hidden_layers(
            in_dim, hidden_dim, num_layers, batch_norm=batch_norm, bias=not batch_norm
        )
        layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LinearClassifier(nn.Module):
    """Linear layer on frozen features, optionally after BatchNorm without affine (MAE's probe).

    Shapes: (N, in_dim) -> (N, num_classes).
    """

    def __init__(self, in_dim: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm(x))
