"""An encoder seen through the patch grid it was trained on.

CPC trains its encoder on 8 px patches of a 32 px view, jigsaw and relative location on 12 px
tiles of a 48 px puzzle, each standardised on its own. Fed a whole 32 px image at evaluation,
such an encoder sees objects three times larger than any input it learned from, and statistics
it never saw: its features then say more about the mismatch than about what it learned. CPC's
own evaluation (van den Oord et al., 2018; Hénaff et al., 2020) pools the encoder's features
over the patch grid instead, and so does :class:`PatchGridEncoder`: the image is resized to the
training view's size, cut into the same grid of windows, each window resized to the training
patch size and normalised as in training, every patch encoded, and the features averaged.

A method declares this evaluation view (:meth:`selfsup.methods.Method.eval_view`); it is
recorded as ``view`` in ``encoder.json`` and applied by :func:`selfsup.models.load_encoder` to
the trained encoder and to its random-init baseline alike.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.augment.functional import resize
from selfsup.augment.tiles import standardize_tiles

__all__ = ["PatchGridEncoder", "patch_grid_view"]


def patch_grid_view(
    *,
    image_size: int,
    window: int,
    stride: int,
    offset: int = 0,
    patch_size: int | None = None,
    standardize: Literal["per_channel", "per_tile"] | None = None,
) -> dict[str, Any]:
    """The ``view`` meta of a patch-grid evaluation (see :class:`PatchGridEncoder`)."""
    return {
        "kind": "patch_grid",
        "image_size": image_size,
        "window": window,
        "stride": stride,
        "offset": offset,
        "patch_size": patch_size or window,
        "standardize": standardize,
    }


class PatchGridEncoder(nn.Module):
    """``backbone`` applied to a grid of patches of each image, features averaged.

    Args:
        backbone: the trained encoder (any :class:`~selfsup.backbones.Backbone`).
        image_size: the whole image is first resized to this (the training view's size).
        window: side of each grid window, in pixels of the resized image.
        stride: distance between neighbouring windows.
        offset: position of the first window (e.g. a tile's gap).
        patch_size: windows are resized to this before encoding (the training patch size;
            default ``window``).
        standardize: ``per_channel`` / ``per_tile``: each patch standardised by its own
            statistics, as in training; None: the input's normalisation is kept.

    Shapes: (N, C, H, W) -> (N, feature_dim); the backbone sees (N * G * G, C, p, p).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        image_size: int,
        window: int,
        stride: int,
        offset: int = 0,
        patch_size: int | None = None,
        standardize: Literal["per_channel", "per_tile"] | None = None,
        kind: str = "patch_grid",
    ) -> None:
        super().__init__()
        if kind != "patch_grid":
            raise ValueError(f"unknown evaluation view {kind!r}")
        if offset + window > image_size:
            raise ValueError(f"a {window}px window at {offset} does not fit {image_size}px")
        self.backbone = backbone
        self.feature_dim = backbone.feature_dim
        self.in_channels = backbone.in_channels
        self.image_size, self.window, self.stride, self.offset = image_size, window, stride, offset
        self.patch_size = patch_size or window
        self.standardize = standardize
        self.grid = (image_size - offset - window) // stride + 1

    def patches(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N * G * G, C, p, p): the grid's patches as the backbone sees them."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = resize(x, self.image_size)
        x = x[..., self.offset :, self.offset :]
        win = x.unfold(2, self.window, self.stride).unfold(3, self.window, self.stride)
        n, c, gh, gw = win.shape[:4]
        tiles = win.permute(0, 2, 3, 1, 4, 5).reshape(n * gh * gw, c, self.window, self.window)
        if self.patch_size != self.window:
            tiles = F.interpolate(tiles.float(), size=self.patch_size, mode="bilinear",
                                  antialias=True, align_corners=False)  # fmt: skip
        if self.standardize is not None:
            tiles = standardize_tiles(tiles, per_channel=self.standardize == "per_channel")
        return tiles.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        feats = self.backbone(self.patches(x).contiguous(memory_format=_fmt(x)))
        return feats.view(n, -1, feats.shape[-1]).mean(dim=1)

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, window={self.window}, stride={self.stride}, "
                f"offset={self.offset}, patch_size={self.patch_size}, grid={self.grid}x"
                f"{self.grid}, standardize={self.standardize}")  # fmt: skip


def _fmt(x: Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and (not x.is_contiguous())
        else torch.contiguous_format
    )
