"""Patch masks for masked image modelling (MAE, BEiT, SimMIM), drawn on any device.

Every function draws from an explicit ``torch.Generator`` (never the global RNG) and returns
the same triple, so a method can switch strategies freely:

* ``ids_keep`` (n, L_keep) long: indices of the visible patches (what the encoder sees);
* ``mask`` (n, L) float: 1 = masked, 0 = visible, in the original (row-major) patch order;
* ``ids_restore`` (n, L) long: the inverse permutation. Concatenating the visible tokens with
  ``L - L_keep`` mask tokens and gathering with ``ids_restore`` puts every token back in its
  original position.

Every sample of a batch has exactly the same number ``L_keep`` of visible patches, so the
visible tokens batch into one dense (n, L_keep, dim) tensor.

The three strategies are excluded from ``torch.compile`` (``torch.compiler.disable``): a
``torch.Generator`` cannot be traced, so inside a compiled training step they run eagerly.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> ids_keep, mask, ids_restore = random_masking(4, 64, 0.75, g, "cpu")
    >>> tuple(ids_keep.shape), tuple(mask.shape), int(mask.sum(1)[0])
    ((4, 16), (4, 64), 48)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["num_visible", "random_masking", "block_masking", "grid_masking", "masks_from_bool"]


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    if generator is None:
        raise TypeError("a torch.Generator is required (the global RNG is never used)")
    return torch.rand(shape, generator=generator, device=generator.device)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample: ``int(L * (1 - mask_ratio))`` (as MAE), at least 1."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def masks_from_bool(masked: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The ``(ids_keep, mask, ids_restore)`` triple of a bool mask (n, L), True = masked.

    Every row must have the same number of masked patches. ``ids_keep`` lists the visible
    patches in increasing position.
    """
    counts = masked.sum(1)
    if masked.numel() and not bool((counts == counts[0]).all()):
        raise ValueError("every sample must mask the same number of patches")
    length_keep = masked.shape[1] - (int(counts[0]) if masked.numel() else 0)
    ids_shuffle = torch.argsort(masked.to(torch.uint8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return ids_shuffle[:, :length_keep], masked.float(), ids_restore


@torch.compiler.disable
def random_masking(
    n: int, num_patches: int, mask_ratio: float, generator: torch.Generator, device: Any = None
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking: shuffle the patches by uniform noise, keep the first.

    Args:
        n: number of samples.
        num_patches: L, patches per image.
        mask_ratio: fraction of masked patches; ``L_keep = int(L * (1 - mask_ratio))``.
        generator: source of randomness (its device is where the noise is drawn).
        device: where the outputs live (default: the generator's device).

    Returns:
        ``ids_keep`` (n, L_keep) long in shuffled order, ``mask`` (n, L) float (1 = masked),
        ``ids_restore`` (n, L) long.
    """
    length_keep = num_visible(num_patches, mask_ratio)
    noise = _rand((n, num_patches), generator)
    if device is not None:
        noise = noise.to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :length_keep]
    mask = torch.ones(n, num_patches, device=noise.device)
    mask[:, :length_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def _block_mask_one(
    grid: int,
    target: int,
    draws: np.ndarray,
    min_block: int,
    max_block: int,
    log_aspect: tuple[float, float],
    max_attempts: int,
) -> Tensor:
    """One BEiT block mask (grid, grid) bool with exactly ``target`` masked patches."""
    masked = np.zeros((grid, grid), dtype=bool)
    count = 0
    k = 0
    failures = 0
    while count < target and failures < max_attempts:
        remaining = target - count
        hi = min(max_block, remaining)
        if hi < min_block:
            break
        u_area, u_aspect, u_top, u_left = draws[k].tolist()
        k += 1
        area = min_block + u_area * (hi - min_block)
        aspect = math.exp(log_aspect[0] + u_aspect * (log_aspect[1] - log_aspect[0]))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (1 <= h <= grid and 1 <= w <= grid):
            failures += 1
            continue
        top = min(int(u_top * (grid - h + 1)), grid - h)
        left = min(int(u_left * (grid - w + 1)), grid - w)
        region = masked[top : top + h, left : left + w]
        new = h * w - int(region.sum())
        if 0 < new <= remaining:
            region[...] = True
            count += new
            failures = 0
        else:
            failures += 1
    return torch.from_numpy(masked)


def _fix_count(masked: Tensor, target: int, noise: Tensor) -> Tensor:
    """Make each (grid, grid) bool mask of the batch (n, g, g) mask exactly ``target`` patches.

    Missing patches are taken from the unmasked ones with most masked 4-neighbours (grows the
    blocks); extra ones are released from the masked ones with fewest (trims block edges).
    ``noise`` (n, g*g) in [0, 1) breaks ties.
    """
    n, g, _ = masked.shape
    m = masked.float().unsqueeze(1)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    neighbours = torch.nn.functional.conv2d(m, kernel.to(m), padding=1).view(n, g * g)
    flat = masked.view(n, g * g).clone()
    score = neighbours + noise
    for i in range(n):
        count = int(flat[i].sum())
        if count < target:
            cand = torch.where(flat[i], -1.0, score[i])
            flat[i, torch.topk(cand, target - count).indices] = True
        elif count > target:
            cand = torch.where(flat[i], -score[i], -1e9)
            flat[i, torch.topk(cand, count - target).indices] = False
    return flat


@torch.compiler.disable
def block_masking(
    n: int,
    grid_size: int,
    mask_ratio: float,
    generator: torch.Generator,
    device: Any = None,
    min_block: int = 4,
    max_block: int | None = None,
    aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    max_attempts: int = 10,
) -> tuple[Tensor, Tensor, Tensor]:
    """BEiT-style blockwise masking on a ``grid_size x grid_size`` patch grid.

    Per sample, random rectangles (area uniform in ``[min_block, max_block]`` patches, aspect
    ratio log-uniform in ``aspect_ratio``) are masked until ``L - L_keep`` patches are masked
    (or ``max_attempts`` rectangles in a row add nothing); the count is then made exact by
    growing/trimming block borders, so every sample has exactly ``L_keep`` visible patches.

    Args:
        n: number of samples.
        grid_size: patches per side g (L = g * g).
        mask_ratio: fraction of masked patches; ``L_keep = int(L * (1 - mask_ratio))``.
        generator: source of randomness.
        device: where the outputs live (default: the generator's device).
        min_block: smallest rectangle area in patches (BEiT: 16 at 14x14).
        max_block: largest rectangle area (default: the number of patches to mask).

    Returns:
        ``ids_keep`` (n, L_keep) long (increasing position), ``mask`` (n, L) float (1 = masked),
        ``ids_restore`` (n, L) long.
    """
    length = grid_size * grid_size
    target = length - num_visible(length, mask_ratio)
    max_block = target if max_block is None else max_block
    min_block = max(1, min(min_block, max_block))
    log_aspect = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
    # Enough uniform draws for the worst case: every rectangle adds >= 1 patch, and at most
    # max_attempts rectangles in a row fail.
    per_sample = (target + 1) * (max_attempts + 1)
    draws = _rand((n, per_sample, 4), generator).cpu().double().numpy()
    tie_noise = _rand((n, length), generator).cpu()
    blocks = torch.stack(
        [
            _block_mask_one(
                grid_size, target, draws[i], min_block, max_block, log_aspect, max_attempts
            )
            for i in range(n)
        ]
    )
    flat = _fix_count(blocks, target, tie_noise)
    out_device = generator.device if device is None else device
    return masks_from_bool(flat.to(out_device))


@torch.compiler.disable
def grid_masking(
    n: int,
    grid_size: int,
    generator: torch.Generator,
    device: Any = None,
    cell: int = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """Regular grid masking: keep one patch of every ``cell x cell`` cell (ratio 1 - 1/cell^2,
    0.75 for the default 2x2). The kept position inside the cell is drawn per sample.

    Args:
        n: number of samples.
        grid_size: patches per side g, divisible by ``cell``.
        generator: source of randomness.
        device: where the outputs live (default: the generator's device).

    Returns:
        ``ids_keep`` (n, L / cell^2) long (increasing position), ``mask`` (n, L) float
        (1 = masked), ``ids_restore`` (n, L) long.
    """
    if grid_size % cell:
        raise ValueError(f"grid_size {grid_size} is not divisible by the cell size {cell}")
    out_device = generator.device if device is None else device
    pos = (_rand((n, 2), generator) * cell).long().clamp_(max=cell - 1).to(out_device)
    idx = torch.arange(grid_size, device=out_device)
    rows = (idx.view(1, -1) % cell) == pos[:, :1]  # (n, g)
    cols = (idx.view(1, -1) % cell) == pos[:, 1:]  # (n, g)
    keep = rows.unsqueeze(2) & cols.unsqueeze(1)  # (n, g, g)
    return masks_from_bool(~keep.view(n, grid_size * grid_size))
