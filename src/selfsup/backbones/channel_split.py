"""A composite encoder: one sub-backbone per group of input channels (split-brain autoencoders).

``ChannelSplitBackbone([f1, f2], groups=(1, 2))`` splits a (N, 3, H, W) input into channels
``[0:1]`` and ``[1:3]``, encodes each with its own backbone and concatenates the results, so the
representation that evaluation sees is ``[f1(x[:, :1]), f2(x[:, 1:])]`` — for split-brain, the
features of the L -> ab network beside those of the ab -> L network.

It is a :class:`~selfsup.backbones.Backbone` like any other: ``forward`` returns the
concatenated pooled features (N, sum of feature_dims), ``stages()`` merges the branches' stages
(stage i holds every branch's i-th stage, so each parameter is in exactly one stage), and
encoders built from a meta with ``channel_groups`` are rebuilt by
:func:`selfsup.evaluate.build_encoder`, so ``selfsup eval knn RUN`` and ``load_encoder`` work.

Example:
    >>> from selfsup.backbones.channel_split import build_channel_split
    >>> enc = build_channel_split("resnet_tiny", (1, 2))       # L branch + ab branch
    >>> enc.in_channels, enc.feature_dim
    (3, 256)
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.backbones.base import Backbone
from selfsup.backbones.registry import build_backbone

__all__ = ["ChannelSplitBackbone", "build_channel_split"]


class ChannelSplitBackbone(Backbone):
    """Sub-backbones on consecutive channel groups; features concatenated.

    Args:
        branches: one backbone per group; ``branches[i].in_channels`` must equal ``groups[i]``.
        groups: channel counts of the consecutive input groups (e.g. ``(1, 2)``: L and ab).

    Shapes:
        ``forward``: (N, sum(groups), H, W) -> (N, sum(b.feature_dim)).
        ``forward_features``: the branches' un-pooled features concatenated along the feature
        axis: (N, sum(D_i), h, w) maps for CNNs, (N, T, sum(D_i)) tokens for ViTs (the branches
        must agree on h, w / T).
        :meth:`split`: the input -> one tensor per group.
    """

    def __init__(self, branches: Sequence[Backbone], groups: Sequence[int]) -> None:
        super().__init__()
        groups = tuple(int(g) for g in groups)
        if len(branches) != len(groups) or not groups:
            raise ValueError(f"{len(branches)} branches for {len(groups)} channel groups")
        for i, (b, g) in enumerate(zip(branches, groups, strict=True)):
            if g <= 0 or b.in_channels != g:
                raise ValueError(f"branch {i} takes {b.in_channels} channels but its group has {g}")
        self.branches = nn.ModuleList(branches)
        self.groups = groups
        self.in_channels = sum(groups)
        self.feature_dim = sum(b.feature_dim for b in branches)

    def split(self, x: Tensor) -> list[Tensor]:
        """(N, sum(groups), H, W) -> [(N, groups[0], H, W), (N, groups[1], H, W), ...]."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        return list(torch.split(x, list(self.groups), dim=1))

    def forward_features(self, x: Tensor) -> Tensor:
        feats = [b.forward_features(xi) for b, xi in zip(self.branches, self.split(x), strict=True)]
        dim = 1 if feats[0].ndim == 4 else -1
        try:
            return torch.cat(feats, dim=dim)
        except RuntimeError as err:
            shapes = [tuple(f.shape) for f in feats]
            raise ValueError(f"branch features do not line up: {shapes}") from err

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([b(xi) for b, xi in zip(self.branches, self.split(x), strict=True)], dim=1)

    def stages(self) -> list[nn.Module]:
        """Stage i = every branch's i-th stage (an ``nn.ModuleList``); a branch with fewer
        stages simply has none in the last ones."""
        per_branch = [b.stages() for b in self.branches]
        return [
            nn.ModuleList([s for s in column if s is not None])
            for column in zip_longest(*per_branch)
        ]

    def export_state_dict(self) -> dict[str, Tensor]:
        """Each branch's ``export_state_dict`` under ``branches.{i}.`` (for native branches,
        equal to ``state_dict()``)."""
        out: dict[str, Tensor] = {}
        for i, b in enumerate(self.branches):
            out.update({f"branches.{i}.{k}": v for k, v in b.export_state_dict().items()})
        return out

    def extra_repr(self) -> str:
        return f"groups={self.groups}, feature_dim={self.feature_dim}"


def build_channel_split(name: str, groups: Sequence[int], **kwargs: Any) -> ChannelSplitBackbone:
    """One ``build_backbone(name, in_channels=g, **kwargs)`` per channel group ``g``."""
    kwargs.pop("in_channels", None)
    return ChannelSplitBackbone(
        [build_backbone(name, in_channels=int(g), **kwargs) for g in groups], groups
    )
