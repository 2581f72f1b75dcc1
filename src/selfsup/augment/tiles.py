"""Tiles of a grid puzzle (jigsaw, relative patch location), cut in batches on any device.

A square *puzzle* image of ``puzzle_size`` pixels is divided into ``grid x grid`` cells of
``cell_size = puzzle_size // grid`` pixels (cells are numbered row-major, ``0`` top-left; a
remainder of ``puzzle_size % grid`` pixels is left as a border around the grid). Every cell
holds one square tile of ``tile_size = cell_size - gap - jitter`` pixels, placed at

    offset within the cell = ceil(gap / 2) + j,   j ~ U{0, ..., jitter} per tile, per axis.

So every tile lies inside its cell, two neighbouring tiles are always at least ``gap`` and at
most ``gap + 2 * jitter`` pixels apart, and where exactly varies from tile to tile: neither
continuing edges nor a fixed spacing tells a network where a tile came from (Noroozi & Favaro,
2016; Doersch et al., 2015).

Random draws follow the library's rule for data parallelism: parameters are drawn for the
*global* batch of ``global_size`` rows from the step's generator and rows
``[offset, offset + n)`` are kept, so every process sees exactly what one process would.

The module also holds the jigsaw *permutation set*: the greedy maximal-minimum-Hamming-distance
selection among all ``k!`` orderings of ``k`` tiles (:func:`maximal_hamming_permutations`).

Example:
    >>> import torch
    >>> grid = TileGrid.for_puzzle(48)            # 3x3 cells of 16 px, gap 2, jitter 2
    >>> grid.tile_size
    12
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.rand(4, 3, 48, 48)
    >>> jitter = grid.sample_jitter(4, g, images.device)
    >>> grid.cut(images, jitter).shape            # (N, 9, C, tile, tile)
    torch.Size([4, 9, 3, 12, 12])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TileGrid",
    "all_permutations",
    "cut_patch_grid",
    "default_puzzle_size",
    "lay_out_tiles",
    "maximal_hamming_permutations",
    "min_hamming_distance",
    "patch_grid_size",
    "randint_rows",
    "rows_of_global_batch",
    "shuffle_tiles",
    "standardize_tiles",
]

TILE_VAR_EPS = 1e-4
"""Added to a tile's variance before standardising (pixels in [0, 1]): tiles with contrast
(std >= 0.05) come out with std >= 0.98, while the quantisation noise of a flat tile (sky, wall;
std ~0.002) stays near 0.2 instead of being blown up to 1."""


def rows_of_global_batch(n: int, global_size: int | None, offset: int) -> int:
    """The global batch size for rows ``[offset, offset + n)``; validates the slice."""
    if global_size is None:
        if offset != 0:
            raise ValueError("offset requires global_size")
        return n
    if offset < 0 or offset + n > global_size:
        raise ValueError(f"rows [{offset}, {offset + n}) exceed global_size={global_size}")
    return global_size


def randint_rows(
    high: int,
    shape: tuple[int, ...],
    generator: torch.Generator,
    device: Any,
    global_size: int | None = None,
    offset: int = 0,
) -> Tensor:
    """Integers uniform in ``[0, high)`` of shape ``shape = (n, ...)``: rows
    ``[offset, offset + n)`` of one draw of ``(global_size, ...)`` from ``generator``.

    The draw happens on the generator's device (a CUDA generator draws on the GPU) and is
    returned on ``device`` as int64.
    """
    if generator is None:
        raise TypeError("a torch.Generator is required (the global RNG is never used)")
    n = shape[0]
    total = rows_of_global_batch(n, global_size, offset)
    draw = torch.randint(high, (total, *shape[1:]), generator=generator, device=generator.device)
    return draw[offset : offset + n].to(device)


def default_puzzle_size(image_size: int, minimum: int = 48, grid: int = 3) -> int:
    """Side the image is resized to before a ``grid x grid`` puzzle is cut from it.

    ``max(image_size, minimum)`` rounded up to a multiple of ``grid``: 32 px CIFAR images
    become 48 px puzzles (16 px cells, 12 px tiles), 96 px stay 96, 224 px become 225.
    """
    side = max(int(image_size), int(minimum))
    return -(-side // grid) * grid


@dataclass(frozen=True)
class TileGrid:
    """Geometry of a ``grid x grid`` puzzle with a gap and random jitter between tiles.

    Args:
        puzzle_size: side of the (square) puzzle image in pixels.
        grid: cells per side.
        gap: minimum number of pixels between two neighbouring tiles.
        jitter: largest random shift of a tile inside its cell, in pixels per axis.

    ``tile_size = puzzle_size // grid - gap - jitter`` must be at least 1.
    """

    puzzle_size: int
    grid: int = 3
    gap: int = 2
    jitter: int = 2

    def __post_init__(self) -> None:
        if self.grid < 1 or self.gap < 0 or self.jitter < 0:
            raise ValueError(f"invalid tile grid {self}")
        if self.tile_size < 1:
            raise ValueError(
                f"puzzle_size {self.puzzle_size} gives {self.cell_size} px cells: no room for "
                f"tiles with gap {self.gap} and jitter {self.jitter}"
            )

    @classmethod
    def for_puzzle(
        cls, puzzle_size: int, grid: int = 3, gap: int | None = None, jitter: int | None = None
    ) -> TileGrid:
        """A grid with ``gap`` and ``jitter`` defaulting to ~1/8 of a cell each (at least 1
        pixel): a 48 px puzzle has 16 px cells, gap 2, jitter 2 and 12 px tiles; a 225 px
        puzzle 75 px cells, gap 9, jitter 9 and 57 px tiles."""
        cell = puzzle_size // grid
        default = max(1, round(cell / 8))
        return cls(
            puzzle_size,
            grid,
            default if gap is None else gap,
            default if jitter is None else jitter,
        )

    @property
    def num_cells(self) -> int:
        return self.grid * self.grid

    @property
    def cell_size(self) -> int:
        return self.puzzle_size // self.grid

    @property
    def tile_size(self) -> int:
        return self.cell_size - self.gap - self.jitter

    @property
    def border(self) -> int:
        """Pixels left above / left of the grid when ``puzzle_size`` is not a multiple."""
        return (self.puzzle_size - self.grid * self.cell_size) // 2

    def sample_jitter(
        self,
        n: int,
        generator: torch.Generator,
        device: Any,
        global_size: int | None = None,
        offset: int = 0,
    ) -> Tensor:
        """Random shifts ``(n, num_cells, 2)`` long in ``[0, jitter]`` as (down, right), for
        every cell of rows ``[offset, offset + n)`` of a global batch of ``global_size``."""
        shape = (n, self.num_cells, 2)
        return randint_rows(self.jitter + 1, shape, generator, device, global_size, offset)

    def origins(self, jitter: Tensor, cells: Tensor | None = None) -> Tensor:
        """Top-left pixel ``(n, K, 2)`` as (row, column) of the tiles in ``cells``.

        Args:
            jitter: ``(n, num_cells, 2)`` shifts from :meth:`sample_jitter`.
            cells: ``(n, K)`` long cell indices (row-major); None = all cells in order.
        """
        n = jitter.shape[0]
        if cells is None:
            cells = torch.arange(self.num_cells, device=jitter.device).expand(n, -1)
        shift = jitter.gather(1, cells.unsqueeze(-1).expand(-1, -1, 2))
        cell_rc = torch.stack([cells // self.grid, cells % self.grid], dim=-1)
        lead = self.border + (self.gap + 1) // 2
        return cell_rc * self.cell_size + lead + shift

    def cut(self, images: Tensor, jitter: Tensor, cells: Tensor | None = None) -> Tensor:
        """Cut tiles from a batch of puzzle images, one gather for the whole batch.

        Args:
            images: ``(n, C, puzzle_size, puzzle_size)`` of any dtype.
            jitter: ``(n, num_cells, 2)`` shifts from :meth:`sample_jitter`.
            cells: ``(n, K)`` long cell indices; None = all ``num_cells`` cells in order.

        Returns:
            ``(n, K, C, tile_size, tile_size)``, tile ``k`` of image ``i`` from cell
            ``cells[i, k]``.
        """
        n, _, h, w = images.shape
        if (h, w) != (self.puzzle_size, self.puzzle_size):
            raise ValueError(f"expected {self.puzzle_size}px puzzles, got {h}x{w} images")
        top_left = self.origins(jitter.to(images.device), cells)  # (n, K, 2)
        span = torch.arange(self.tile_size, device=images.device)
        rows = (top_left[..., 0:1] + span)[..., :, None]  # (n, K, t, 1)
        cols = (top_left[..., 1:2] + span)[..., None, :]  # (n, K, 1, t)
        batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
        tiles = images.permute(0, 2, 3, 1)[batch, rows, cols]  # (n, K, t, t, C)
        return tiles.permute(0, 1, 4, 2, 3)


def patch_grid_size(image_size: int, patch_size: int, stride: int) -> int:
    """Patches per side of the overlapping grid :func:`cut_patch_grid` cuts:
    ``(image_size - patch_size) // stride + 1`` (32 px, 8 px patches, stride 4: 7)."""
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch_size and stride must be >= 1, got {patch_size}, {stride}")
    if patch_size > image_size:
        raise ValueError(f"patch_size {patch_size} exceeds the {image_size}px image")
    return (image_size - patch_size) // stride + 1


def cut_patch_grid(images: Tensor, patch_size: int, stride: int) -> Tensor:
    """Cut a regular grid of (possibly overlapping) square patches, the whole batch at once.

    Patch ``(i, j)`` is the window ``images[..., i * stride : i * stride + patch_size,
    j * stride : j * stride + patch_size]``; pixels beyond the last full window (when
    ``(H - patch_size) % stride != 0``) are left out. No randomness: CPC (van den Oord et al.,
    2018) cuts 50%-overlapping patches (``stride = patch_size // 2``).

    Shapes: ``(n, C, H, W)`` of any dtype -> ``(n, Gh, Gw, C, patch_size, patch_size)`` with
    ``Gh = patch_grid_size(H, patch_size, stride)`` (likewise ``Gw``); a new contiguous tensor.

    Example:
        >>> cut_patch_grid(torch.zeros(2, 3, 32, 32), 8, 4).shape
        torch.Size([2, 7, 7, 3, 8, 8])
    """
    for side in images.shape[-2:]:  # validates the geometry
        patch_grid_size(side, patch_size, stride)
    windows = images.unfold(2, patch_size, stride).unfold(3, patch_size, stride)
    return windows.permute(0, 2, 3, 1, 4, 5).contiguous()  # (n, C, Gh, Gw, p, p) -> grid-major


def shuffle_tiles(tiles: Tensor, order: Tensor) -> Tensor:
    """Reorder the tiles of each sample: ``out[i, k] = tiles[i, order[i, k]]``.

    Shapes: tiles ``(n, K, ...)``, order ``(n, K)`` long -> ``(n, K, ...)``.
    """
    index = order.to(tiles.device).view(*order.shape, *([1] * (tiles.ndim - 2)))
    return tiles.gather(1, index.expand_as(tiles))


def standardize_tiles(tiles: Tensor, per_channel: bool = True, eps: float = TILE_VAR_EPS) -> Tensor:
    """Standardise every tile by its own statistics: ``(x - mean) / sqrt(var + eps)``.

    With ``per_channel`` each channel of each tile gets its own mean and variance (removes a
    tile's colour cast, a low-level cue to neighbouring tiles); otherwise one mean and variance
    per tile over all its channels. Shapes: ``(..., C, h, w) -> (..., C, h, w)`` float.
    """
    dims = (-2, -1) if per_channel else (-3, -2, -1)
    x = tiles.float()
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


def lay_out_tiles(
    tiles: Tensor, cells: Tensor, grid: int, spacing: int = 1, background: float = 0.5
) -> Tensor:
    """Place tiles on a ``grid x grid`` board for pictures: tile ``k`` of sample ``i`` goes to
    cell ``cells[i, k]``; free cells stay ``background``.

    Shapes: tiles ``(n, K, C, t, t)``, cells ``(n, K)`` -> ``(n, C, S, S)`` with
    ``S = grid * (t + spacing) - spacing``.
    """
    n, _, c, t, _ = tiles.shape
    step = t + spacing
    side = grid * step - spacing
    board = tiles.new_full((n, side, side, c), background)
    cells = cells.to(tiles.device)
    span = torch.arange(t, device=tiles.device)
    rows = (cells // grid * step).unsqueeze(-1).add(span)[..., :, None]  # (n, K, t, 1)
    cols = (cells % grid * step).unsqueeze(-1).add(span)[..., None, :]  # (n, K, 1, t)
    batch = torch.arange(n, device=tiles.device).view(n, 1, 1, 1)
    board[batch, rows, cols] = tiles.permute(0, 1, 3, 4, 2)
    return board.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# The jigsaw permutation set
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def all_permutations(k: int) -> np.ndarray:
    """Every permutation of ``range(k)`` in lexicographic order, ``(k!, k)`` int8, read-only.

    Built level by level with numpy (the permutations of ``range(m)`` from those of
    ``range(m - 1)``: choose the first element, relabel the rest), not one tuple at a time.
    """
    if not 1 <= k <= 10:
        raise ValueError(f"k must be in [1, 10], got {k}")
    perms = np.zeros((1, 0), dtype=np.int8)
    for m in range(1, k + 1):
        blocks = []
        for first in range(m):
            others = np.array([v for v in range(m) if v != first], dtype=np.int8)
            head = np.full((len(perms), 1), first, dtype=np.int8)
            blocks.append(np.concatenate([head, others[perms]], axis=1))
        perms = np.concatenate(blocks)
    perms.setflags(write=False)
    return perms


@functools.lru_cache(maxsize=16)
def maximal_hamming_permutations(num: int, num_tiles: int = 9, seed: int = 0) -> np.ndarray:
    """A set of ``num`` permutations of ``num_tiles`` tiles that are far apart from each other.

    Greedy farthest-point selection over all ``num_tiles!`` permutations: start from one chosen
    at random, then repeatedly add the permutation whose *minimum* Hamming distance (number of
    positions that differ) to the permutations chosen so far is largest, breaking ties at
    random. The result is deterministic for ``seed``; its minimum pairwise Hamming distance is
    :func:`min_hamming_distance` (9 tiles: 7 for 64 permutations, 5 for 1000, against 2-4 for
    64 random ones). Noroozi & Favaro (2016, Algorithm 1) pick by the *summed* distance
    instead; maximising the minimum is what guarantees that no two classes are near-duplicates.

    Vectorised: one pass over the ``(num_tiles!,)`` running minimum per chosen permutation
    (64 of 9 tiles: ~0.1 s; 1000: ~1 s); cached per ``(num, num_tiles, seed)``.

    Returns:
        ``(num, num_tiles)`` int64, read-only; row ``c`` is the permutation of class ``c``.
    """
    candidates = all_permutations(num_tiles)
    total = len(candidates)
    if not 1 <= num <= total:
        raise ValueError(f"num must be in [1, {total}], got {num}")
    columns = np.ascontiguousarray(candidates.T)  # (num_tiles, total): one fast pass per column
    rng = np.random.default_rng(seed)
    nearest = np.full(total, num_tiles + 1, dtype=np.int8)  # min distance to the chosen set
    chosen = np.empty(num, dtype=np.int64)
    pick = int(rng.integers(total))
    for i in range(num):
        chosen[i] = pick
        distance = np.zeros(total, dtype=np.int8)
        for position in range(num_tiles):
            distance += columns[position] != candidates[pick, position]
        np.minimum(nearest, distance, out=nearest)
        if i + 1 < num:
            farthest = np.flatnonzero(nearest == nearest.max())
            pick = int(farthest[rng.integers(len(farthest))])
    out = candidates[chosen].astype(np.int64)
    out.setflags(write=False)
    return out


def min_hamming_distance(perms: np.ndarray | Tensor) -> int:
    """Smallest Hamming distance between two rows of a permutation set ``(P, k)``, P >= 2."""
    p = np.asarray(perms.cpu() if isinstance(perms, Tensor) else perms)
    if len(p) < 2:
        raise ValueError("need at least two permutations")
    best = math.inf
    for start in range(0, len(p), 256):  # (256, P, k) comparisons at a time
        block = (p[start : start + 256, None, :] != p[None, :, :]).sum(-1)
        rows = np.arange(start, min(start + 256, len(p)))
        block[rows - start, rows] = p.shape[1] + 1  # ignore each row's distance to itself
        best = min(best, int(block.min()))
    return int(best)
