"""Pixel masks for inpainting (context encoders), drawn in batches on any device.

Every mask is a float tensor ``(n, 1, H, W)`` with 1 = masked (hidden from the encoder, to be
filled in) and 0 = context. Three kinds, after Pathak et al. (2016):

* ``center``: the central square (deterministic). Its side is ``size - 2 * margin`` with
  ``margin = round(size * (1 - sqrt(fraction)) / 2)``, so it is exactly centred (equal margins)
  and covers about ``fraction`` of the image: at ``fraction=0.25`` the centre half of each side,
  as in the paper (64x64 of 128x128; 16x16 of 32x32).
* ``block``: random axis-aligned rectangles (sides uniform in ``block_size`` x the image side,
  positions uniform) are stacked in a random order; the first ``k = round(fraction * H * W)``
  pixels in that order are masked, so the count is exact: whole rectangles, then the top rows of
  the next one (raster order).
* ``region``: irregular blobs, as in the authors' ``train_random.lua``: uniform noise on a
  coarse ``grid x grid`` lattice, upsampled bicubically to the image size, and the ``k``
  highest pixels masked. ``grid`` sets the blob scale (cells per image side; the paper's
  128-pixel setting used about 8).

Random kinds mask exactly ``k`` pixels per sample, so losses normalised by the masked count
are the same whether a batch is split over processes or not. All randomness comes from an
explicit ``torch.Generator`` (drawn on the generator's device); :func:`sample_pixel_masks` draws
for a *global* batch and returns rows ``[offset, offset + n)``, so data-parallel processes see
exactly what one process would.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> m = sample_pixel_masks("region", 4, 32, 0.25, g)
    >>> tuple(m.shape), int(m[0].sum())
    ((4, 1, 32, 32), 256)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "MaskKind",
    "block_mask",
    "center_mask",
    "center_square",
    "masked_count",
    "region_mask",
    "sample_pixel_masks",
]

MaskKind = Literal["center", "block", "region"]


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    if generator is None:
        raise TypeError("a torch.Generator is required (the global RNG is never used)")
    return torch.rand(shape, generator=generator, device=generator.device)


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"mask fraction must be in (0, 1), got {fraction}")


def masked_count(size: int, fraction: float) -> int:
    """Pixels masked per sample by the random kinds: ``round(fraction * size**2)``, at least 1
    and leaving at least 1 pixel of context."""
    _check_fraction(fraction)
    return min(size * size - 1, max(1, round(fraction * size * size)))


def center_square(size: int, fraction: float) -> tuple[int, int]:
    """``(margin, side)`` of the central square covering about ``fraction`` of a ``size x size``
    image: ``margin = round(size * (1 - sqrt(fraction)) / 2)`` (at least 1), ``side = size -
    2 * margin`` (at least 1). Rows and columns ``[margin, margin + side)`` are masked."""
    _check_fraction(fraction)
    margin = max(1, round(size * (1.0 - math.sqrt(fraction)) / 2))
    margin = min(margin, (size - 1) // 2)
    side = size - 2 * margin
    if side < 1:
        raise ValueError(f"image side {size} is too small for a central mask")
    return margin, side


def center_mask(n: int, size: int, fraction: float, device: Any = None) -> Tensor:
    """Central-square masks (n, 1, size, size) float, 1 inside the square of
    :func:`center_square`."""
    margin, side = center_square(size, fraction)
    mask = torch.zeros(n, 1, size, size, device=device)
    mask[..., margin : margin + side, margin : margin + side] = 1.0
    return mask


def _top_k_mask(score: Tensor, k: int, size: int) -> Tensor:
    """Mask (n, 1, size, size) of the ``k`` highest entries of each row of ``score`` (n, L)."""
    order = torch.argsort(score, dim=1, descending=True, stable=True)[:, :k]
    flat = torch.zeros_like(score, dtype=torch.float32)
    flat.scatter_(1, order, 1.0)
    return flat.view(-1, 1, size, size)


def block_mask(
    n: int,
    size: int,
    fraction: float,
    generator: torch.Generator,
    device: Any = None,
    block_size: tuple[float, float] = (0.125, 0.375),
) -> Tensor:
    """Random-block masks (n, 1, size, size) float with exactly :func:`masked_count` pixels each.

    Per sample, ``B`` rectangles are drawn (height and width each uniform in
    ``block_size`` x ``size``, at least 1 pixel; position uniform inside the image); ``B`` is
    chosen so that their union covers ``fraction`` with a wide margin (3x the expected need).
    Pixels are ordered by the first rectangle that covers them, then raster order, and the first
    ``k`` are masked: the first rectangles whole, then the top rows of the next one. In the
    (very unlikely) case that all ``B`` rectangles cover fewer than ``k`` pixels, the rest is
    taken in raster order.
    """
    lo, hi = block_size
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"block_size must satisfy 0 < lo <= hi <= 1, got {block_size}")
    k = masked_count(size, fraction)
    mean_area = ((lo + hi) / 2) ** 2
    blocks = math.ceil(3.0 * -math.log(1.0 - k / (size * size)) / mean_area) + 2
    u = _rand((n, blocks, 4), generator)
    out_device = u.device if device is None else device
    u = u.to(out_device)
    h = (size * (lo + u[..., 0] * (hi - lo))).round().clamp(1, size).long()  # (n, B)
    w = (size * (lo + u[..., 1] * (hi - lo))).round().clamp(1, size).long()
    top = (u[..., 2] * (size - h + 1)).floor().long().clamp(max=size - h)
    left = (u[..., 3] * (size - w + 1)).floor().long().clamp(max=size - w)
    pos = torch.arange(size, device=out_device)
    first = torch.full((n, size, size), blocks, dtype=torch.long, device=out_device)
    for b in range(blocks - 1, -1, -1):
        rows = (pos >= top[:, b : b + 1]) & (pos < (top + h)[:, b : b + 1])  # (n, size)
        cols = (pos >= left[:, b : b + 1]) & (pos < (left + w)[:, b : b + 1])
        first = torch.where(rows[:, :, None] & cols[:, None, :], b, first)
    raster = torch.arange(size * size, device=out_device)
    score = -(first.view(n, -1) * (size * size) + raster)
    return _top_k_mask(score, k, size)


def region_mask(
    n: int,
    size: int,
    fraction: float,
    generator: torch.Generator,
    device: Any = None,
    grid: int = 8,
) -> Tensor:
    """Random-region masks (n, 1, size, size) float with exactly :func:`masked_count` pixels.

    Uniform noise on a ``grid x grid`` lattice is upsampled bicubically to ``size x size`` and
    the ``k`` highest pixels of each sample are masked: one or a few irregular blobs whose scale
    is about ``size / grid`` pixels.
    """
    if not 1 <= grid <= size:
        raise ValueError(f"grid must be in [1, size={size}], got {grid}")
    k = masked_count(size, fraction)
    # Two spare lattice cells on every side, cropped after upsampling: bicubic interpolation
    # clamps at the border, which would leave flat bands (straight-edged blobs) there.
    noise = _rand((n, 1, grid + 4, grid + 4), generator)
    noise = noise.to(noise.device if device is None else device)
    cell = size / grid
    big = round(cell * (grid + 4))
    smooth = F.interpolate(noise, size=(big, big), mode="bicubic", align_corners=False)
    start = round(2 * cell)
    smooth = smooth[..., start : start + size, start : start + size]
    return _top_k_mask(smooth.reshape(n, -1), k, size)


def sample_pixel_masks(
    kind: MaskKind,
    n: int,
    size: int,
    fraction: float,
    generator: torch.Generator,
    device: Any = None,
    *,
    global_size: int | None = None,
    offset: int = 0,
    block_size: tuple[float, float] = (0.125, 0.375),
    grid: int = 8,
) -> Tensor:
    """Masks (n, 1, size, size) float (1 = masked) for rows ``[offset, offset + n)`` of a
    global batch of ``global_size`` (default ``n``), drawn for the whole global batch."""
    total = n if global_size is None else global_size
    if global_size is None and offset != 0:
        raise ValueError("offset requires global_size")
    if offset < 0 or offset + n > total:
        raise ValueError(f"rows [{offset}, {offset + n}) exceed global_size={total}")
    if kind == "center":
        if device is None:
            device = generator.device if generator is not None else "cpu"
        return center_mask(n, size, fraction, device)
    if kind == "block":
        masks = block_mask(total, size, fraction, generator, device, block_size=block_size)
    elif kind == "region":
        masks = region_mask(total, size, fraction, generator, device, grid=grid)
    else:
        raise ValueError(f"unknown mask kind {kind!r}; expected center, block or region")
    return masks[offset : offset + n]
