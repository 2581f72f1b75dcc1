"""Dense per-location embeddings at a chosen stride, for matching locations across images.

A ResNet's last map is coarse (stride 8 with the CIFAR stem). :func:`pyramid_features` runs the
encoder's stages and concatenates every stage output from the first one at the requested stride
on, the coarser ones upsampled bilinearly (a "hypercolumn"), so every stage gets a gradient and
the map is as fine as asked. Backbones that are not ResNets give their own spatial map
(:func:`~selfsup.heads.decoder.spatial_features`, e.g. a ViT's patch grid).
:class:`DenseEmbedding` maps that map to ``dim`` channels with 1x1 / 3x3 convolutions.

Example:
    >>> import torch
    >>> from selfsup.backbones import build_backbone
    >>> enc = build_backbone("resnet_tiny", in_channels=1)
    >>> f = pyramid_features(enc, torch.zeros(2, 1, 32, 32), stride=4)   # layer3 + layer4
    >>> tuple(f.shape)
    (2, 192, 8, 8)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.backbones import Backbone, ResNet
from selfsup.heads.decoder import spatial_features

__all__ = ["DenseEmbedding", "pyramid_channels", "pyramid_features"]


def pyramid_features(encoder: Backbone, x: Tensor, stride: int) -> Tensor:
    """Spatial features (N, D, H / s, W / s) of images (N, C, H, W).

    For a :class:`~selfsup.backbones.ResNet`: the outputs of the stages whose stride is at least
    ``stride``, the first of them setting the resolution, the others upsampled to it
    (bilinear) and concatenated. When no stage has exactly ``stride`` (e.g. 2 with the ImageNet
    stem) the map is at the finest stride above it. Other backbones: their spatial map.
    """
    if not isinstance(encoder, ResNet):
        return spatial_features(encoder, x)
    size = x.shape[-1]
    maps: list[Tensor] = []
    for stage in encoder.stages():
        x = stage(x)
        if size // x.shape[-1] >= stride:
            maps.append(x)
    if not maps:  # asked for a stride coarser than the last stage: use the last stage
        maps.append(x)
    out = maps[0].shape[-2:]
    return torch.cat(
        [maps[0]]
        + [F.interpolate(m, size=out, mode="bilinear", align_corners=False) for m in maps[1:]],
        dim=1,
    )


@torch.no_grad()
def pyramid_channels(encoder: Backbone, in_channels: int, image_size: int, stride: int) -> int:
    """Channels of :func:`pyramid_features` (one dummy forward in eval mode)."""
    was_training = encoder.training
    encoder.eval()
    try:
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        probe = torch.zeros(1, in_channels, image_size, image_size, device=device)
        return int(pyramid_features(encoder, probe, stride).shape[1])
    finally:
        encoder.train(was_training)


class DenseEmbedding(nn.Module):
    """(N, in_dim, h, w) -> (N, dim, h, w): ``1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU
    -> 1x1 conv`` (the last without activation, so embeddings can be signed and of any norm).

    Args:
        in_dim: channels of the feature map.
        dim: embedding channels (Vondrick et al.: 64).
        hidden_dim: width of the two hidden layers.
    """

    def __init__(self, in_dim: int, dim: int = 64, hidden_dim: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, 1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, dim, 1),
        )

    def forward(self, f: Tensor) -> Tensor:
        return self.layers(f)
