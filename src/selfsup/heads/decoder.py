"""Dense heads: turn an encoder's spatial features back into an image-sized prediction.

Used by the pretexts that predict pixels (colorization, split-brain, inpainting). Any backbone
works: a ResNet's last feature map is used as is, a ViT's patch tokens are laid out on their
grid (:func:`spatial_features`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.backbones import Backbone


def tokens_to_grid(tokens: Tensor) -> Tensor:
    """(N, P + L, D) tokens with ``L = g * g`` patch tokens last -> (N, D, g, g).

    ``P`` prefix tokens (cls, registers) are dropped: P is the smallest count (< 16) that leaves
    a square number of tokens.
    """
    n, t, d = tokens.shape
    for prefix in range(min(16, t)):
        g = math.isqrt(t - prefix)
        if g * g == t - prefix:
            return tokens[:, prefix:].transpose(1, 2).reshape(n, d, g, g)
    raise ValueError(f"cannot lay {t} tokens out on a square grid")


def spatial_features(encoder: Backbone, x: Tensor) -> Tensor:
    """Spatial feature map (N, D, h, w) of images (N, C, H, W): a CNN's un-pooled features, or
    a ViT's patch tokens on their grid."""
    f = encoder.forward_features(x)
    if f.ndim == 4:
        return f
    if f.ndim == 3:
        return tokens_to_grid(f)
    raise ValueError(f"expected a (N, D, h, w) map or (N, T, D) tokens, got shape {tuple(f.shape)}")


class ConvDecoder(nn.Module):
    """Upsampling convolutional decoder: (N, in_dim, h, w) -> (N, out_channels, H, W).

    Each stage doubles the resolution (bilinear upsampling, then ``Conv3x3 -> BN -> ReLU``) and
    halves the width (never below ``min_dim``), until the map reaches ``out_size``; a non
    power-of-two ratio is finished by a bilinear resize. A final 1x1 convolution gives the
    output channels (no activation: logits or unbounded regression targets).

    Args:
        in_dim: channels D of the encoder's feature map.
        out_channels: channels of the prediction (e.g. 2 for ab, 313 for ab bins, 3 for RGB).
        out_size: output side H = W.
        hidden_dim: width of the first stage.
        min_dim: smallest stage width.
        channels_last_out: lay the output out channels-last (one contiguous row of channels
            per pixel) whatever the input's layout, for per-pixel losses over many channels
            (classification over colour bins): the final 1x1 convolution then reads a
            channels-last copy of its ``min_dim``-wide input instead of the loss copying the
            ``out_channels``-wide output into rows. A no-op for channels-last inputs (bf16).
    """

    def __init__(
        self,
        in_dim: int,
        out_channels: int,
        out_size: int,
        hidden_dim: int = 256,
        min_dim: int = 32,
        channels_last_out: bool = False,
    ) -> None:
        super().__init__()
        self.out_size = out_size
        self.channels_last_out = channels_last_out
        self.hidden_dim, self.min_dim = hidden_dim, min_dim
        self.inp = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim), nn.ReLU()
        )
        self.stages = nn.ModuleList()
        self._widths = [hidden_dim]
        self.out = nn.Conv2d(hidden_dim, out_channels, 1)
        self._built_for: int | None = None

    def _stage(self, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    def build(self, in_size: int) -> ConvDecoder:
        """Create the upsampling stages for an input map of side ``in_size`` (call once, before
        the optimizer is made; methods do it in ``__init__`` with a dummy forward's size)."""
        if self._built_for is not None:
            if in_size != self._built_for:
                raise ValueError(f"decoder built for {self._built_for}x{self._built_for} maps")
            return self
        size, width = in_size, self.hidden_dim
        while size * 2 <= self.out_size:
            nxt = max(self.min_dim, width // 2)
            self.stages.append(self._stage(width, nxt))
            size, width = size * 2, nxt
        self.out = nn.Conv2d(width, self.out.out_channels, 1)
        self._built_for = in_size
        return self

    def forward(self, f: Tensor) -> Tensor:
        if self._built_for is None:
            raise RuntimeError("ConvDecoder.build(in_size) was not called")
        x = self.inp(f)
        for stage in self.stages:
            x = stage(x)
        if x.shape[-1] != self.out_size or x.shape[-2] != self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear")
        if self.channels_last_out:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.out(x)


@torch.no_grad()
def feature_map_shape(encoder: Backbone, in_channels: int, image_size: int) -> tuple[int, int]:
    """``(D, h)`` of :func:`spatial_features` for a square input of ``image_size``: channels and
    side of the map (D can differ from ``feature_dim`` for adapters over ``.features`` models).
    One dummy forward on the encoder's device in eval mode, so BatchNorm statistics are
    untouched."""
    was_training = encoder.training
    encoder.eval()
    try:
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        probe = torch.zeros(1, in_channels, image_size, image_size, device=device)
        f = spatial_features(encoder, probe)
        return int(f.shape[1]), int(f.shape[-1])
    finally:
        encoder.train(was_training)
