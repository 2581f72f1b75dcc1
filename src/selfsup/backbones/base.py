"""The :class:`Backbone` base class: the only part of an encoder that evaluation and export see."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base class for image encoders.

    Subclasses set ``feature_dim`` and ``in_channels`` in ``__init__`` and implement
    :meth:`forward_features`, :meth:`forward` and :meth:`stages`.

    Shapes:
        ``forward(x)``: (N, in_channels, H, W) -> (N, feature_dim)
        ``forward_features(x)``: un-pooled features, (N, D, h, w) for CNNs,
        (N, 1 + L, dim) tokens (cls first) for ViTs.
    """

    feature_dim: int
    in_channels: int

    def forward_features(self, x: Tensor) -> Tensor:
        """Un-pooled features of ``x`` (N, C, H, W)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Pooled feature vector: (N, C, H, W) -> (N, feature_dim)."""
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """Sub-modules ordered input -> output, for partial fine-tuning / freezing.

        Every trainable parameter of the backbone belongs to exactly one stage.
        """
        raise NotImplementedError

    def export_state_dict(self) -> dict[str, Tensor]:
        """State dict for export. Native backbones: their own ``state_dict()``."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def extra_repr(self) -> str:
        return f"feature_dim={getattr(self, 'feature_dim', '?')}"
