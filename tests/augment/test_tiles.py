"""Tile grids (jigsaw / relative location): geometry, cutting, global-batch draws, permutations."""

import itertools
import math

import numpy as np
import pytest
import torch

from selfsup.augment.tiles import (
    TileGrid,
    all_permutations,
    default_puzzle_size,
    lay_out_tiles,
    maximal_hamming_permutations,
    min_hamming_distance,
    randint_rows,
    shuffle_tiles,
    standardize_tiles,
)


def position_image(n: int, size: int) -> torch.Tensor:
    """(n, 2, size, size) int64: channel 0 is each pixel's row, channel 1 its column."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows, cols]).expand(n, 2, size, size).clone()


def test_default_geometry():
    grid = TileGrid.for_puzzle(48)
    assert (grid.cell_size, grid.gap, grid.jitter, grid.tile_size) == (16, 2, 2, 12)
    big = TileGrid.for_puzzle(225)
    assert (big.cell_size, big.gap, big.jitter, big.tile_size) == (75, 9, 9, 57)
    assert TileGrid.for_puzzle(24).tile_size == 6
    assert default_puzzle_size(32) == 48 and default_puzzle_size(96) == 96
    assert default_puzzle_size(224) == 225 and default_puzzle_size(16) == 48
    with pytest.raises(ValueError, match="no room"):
        TileGrid(12, gap=2, jitter=2)


@pytest.mark.parametrize("puzzle_size, gap, jitter", [(48, 2, 2), (50, 3, 1), (24, 0, 0)])
def test_tiles_come_from_their_cell_with_gap_and_jitter_in_bounds(puzzle_size, gap, jitter):
    grid = TileGrid(puzzle_size, 3, gap, jitter)
    n, t, cell = 200, grid.tile_size, grid.cell_size
    shifts = grid.sample_jitter(n, torch.Generator().manual_seed(0), "cpu")
    assert shifts.shape == (n, 9, 2) and shifts.dtype == torch.long
    assert int(shifts.min()) == 0 and int(shifts.max()) == jitter  # both extremes drawn
    tiles = grid.cut(position_image(n, puzzle_size), shifts)
    assert tiles.shape == (n, 9, 2, t, t)
    top, left = tiles[:, :, 0, 0, 0], tiles[:, :, 1, 0, 0]  # read back each tile's origin
    # every tile is a contiguous t x t window of the image
    assert torch.equal(tiles[:, :, 0, :, 0] - top[..., None], torch.arange(t).expand(n, 9, t))
    assert torch.equal(tiles[:, :, 1, 0, :] - left[..., None], torch.arange(t).expand(n, 9, t))
    assert torch.equal(torch.stack([top, left], -1), grid.origins(shifts))
    # ... inside cell k (row-major), shifted by the drawn jitter
    cells = torch.arange(9)
    cell_top = grid.border + cells // 3 * cell
    cell_left = grid.border + cells % 3 * cell
    lead = math.ceil(gap / 2)
    assert torch.equal(top - cell_top - lead, shifts[..., 0])
    assert torch.equal(left - cell_left - lead, shifts[..., 1])
    assert bool((top >= cell_top).all() and (top + t <= cell_top + cell).all())
    assert bool((left >= cell_left).all() and (left + t <= cell_left + cell).all())
    # neighbours are at least `gap` and at most `gap + 2 jitter` pixels apart
    horizontal = (left[:, [1, 2, 4, 5, 7, 8]] - (left[:, [0, 1, 3, 4, 6, 7]] + t)).flatten()
    vertical = (top[:, 3:] - (top[:, :6] + t)).flatten()
    for spacing in (horizontal, vertical):
        assert int(spacing.min()) == gap and int(spacing.max()) == gap + 2 * jitter


def test_cut_selected_cells_equals_cut_all_then_pick():
    grid = TileGrid.for_puzzle(48)
    images = torch.rand(5, 3, 48, 48)
    shifts = grid.sample_jitter(5, torch.Generator().manual_seed(1), "cpu")
    cells = torch.tensor([[4, 0], [4, 8], [4, 3], [4, 5], [4, 1]])
    everything = grid.cut(images, shifts)
    picked = grid.cut(images, shifts, cells)
    assert torch.equal(picked, everything[torch.arange(5)[:, None], cells])
    with pytest.raises(ValueError, match="48px"):
        grid.cut(torch.rand(1, 3, 32, 32), shifts[:1])


def test_global_draws_are_deterministic_and_sliced_like_one_process():
    def draw(n, global_size=None, offset=0, seed=3):
        g = torch.Generator().manual_seed(seed)
        return randint_rows(7, (n, 9, 2), g, "cpu", global_size, offset)

    full = draw(8)
    assert torch.equal(full, draw(8)) and not torch.equal(full, draw(8, seed=4))
    halves = torch.cat([draw(4, 8, 0), draw(4, 8, 4)])
    assert torch.equal(halves, full)
    assert torch.equal(draw(3, 8, 5), full[5:8])
    with pytest.raises(ValueError, match="offset requires global_size"):
        draw(4, None, 2)
    with pytest.raises(ValueError, match="exceed"):
        draw(4, 6, 4)
    grid = TileGrid.for_puzzle(48)
    jit = [grid.sample_jitter(2, torch.Generator().manual_seed(0), "cpu", 4, o) for o in (0, 2)]
    assert torch.equal(
        torch.cat(jit), grid.sample_jitter(4, torch.Generator().manual_seed(0), "cpu")
    )


def test_shuffle_tiles_puts_tile_order_k_at_position_k():
    tiles = torch.arange(2 * 4).view(2, 4, 1, 1, 1).float()
    order = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    out = shuffle_tiles(tiles, order)
    assert out.flatten(1).tolist() == [[2, 0, 3, 1], [4, 5, 6, 7]]


def test_standardize_tiles():
    g = torch.Generator().manual_seed(0)
    tiles = torch.rand(4, 9, 3, 8, 8, generator=g) * torch.tensor([0.2, 0.5, 1.0]).view(3, 1, 1)
    per_channel = standardize_tiles(tiles)
    assert torch.allclose(per_channel.mean((-2, -1)), torch.zeros(4, 9, 3), atol=1e-5)
    assert torch.allclose(per_channel.std((-2, -1), correction=0), torch.ones(4, 9, 3), atol=0.02)
    per_tile = standardize_tiles(tiles, per_channel=False)
    assert torch.allclose(per_tile.mean((-3, -2, -1)), torch.zeros(4, 9), atol=1e-5)
    assert not torch.allclose(per_tile.mean((-2, -1)), torch.zeros(4, 9, 3), atol=1e-2)
    # a flat tile with a 1/255 ripple is not blown up to unit variance
    flat = torch.full((1, 3, 8, 8), 0.5)
    flat[..., ::2] += 1 / 255
    assert float(standardize_tiles(flat).abs().max()) < 0.25


def test_lay_out_tiles_places_each_tile_in_its_cell():
    grid = TileGrid(24, 3, 0, 0)  # tiles fill their cells: laying out in order rebuilds the image
    image = torch.rand(2, 3, 24, 24)
    tiles = grid.cut(image, torch.zeros(2, 9, 2, dtype=torch.long))
    board = lay_out_tiles(tiles, torch.arange(9).expand(2, 9), 3, spacing=0)
    assert torch.equal(board, image)
    two = lay_out_tiles(tiles[:, :2], torch.tensor([[4, 0], [4, 8]]), 3, spacing=1)
    assert two.shape == (2, 3, 26, 26)
    assert torch.equal(two[1, :, 18:26, 18:26], tiles[1, 1])
    assert float(two[1, :, :8, :8].sub(0.5).abs().max()) == 0  # free cell: background


def test_all_permutations_match_itertools():
    assert np.array_equal(all_permutations(4), np.array(list(itertools.permutations(range(4)))))
    nine = all_permutations(9)
    assert nine.shape == (math.factorial(9), 9) and not nine.flags.writeable
    assert np.array_equal(np.sort(nine, axis=1), np.broadcast_to(np.arange(9), nine.shape))
    codes = nine.astype(np.int64) @ 9 ** np.arange(8, -1, -1)  # base-9 numbers
    assert bool((np.diff(codes) > 0).all())  # lexicographic, hence all distinct


def _brute_force_min_distance(perms: np.ndarray) -> int:
    return min(
        sum(int(x != y) for x, y in zip(a, b, strict=True))
        for a, b in itertools.combinations(perms.tolist(), 2)
    )


@pytest.mark.parametrize("num", [9, 64, 100])
def test_maximal_hamming_set(num):
    perms = maximal_hamming_permutations(num, 9, seed=0)
    assert perms.shape == (num, 9) and perms.dtype == np.int64
    assert np.array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(9), perms.shape))
    assert len({tuple(p) for p in perms.tolist()}) == num  # all distinct
    assert np.array_equal(perms, maximal_hamming_permutations(num, 9, seed=0))  # deterministic
    assert not np.array_equal(perms, maximal_hamming_permutations(num, 9, seed=1))
    distance = min_hamming_distance(perms)
    assert distance == _brute_force_min_distance(perms)
    # far better separated than random sets of the same size
    rng = np.random.default_rng(0)
    everything = all_permutations(9)
    for _ in range(5):
        random_set = everything[rng.choice(len(everything), num, replace=False)]
        assert distance > _brute_force_min_distance(random_set)


def test_maximal_hamming_set_sizes():
    assert min_hamming_distance(maximal_hamming_permutations(64)) == 7
    assert min_hamming_distance(torch.from_numpy(maximal_hamming_permutations(64).copy())) == 7
    with pytest.raises(ValueError):
        maximal_hamming_permutations(0)
    with pytest.raises(ValueError):
        maximal_hamming_permutations(25, num_tiles=4)  # only 4! = 24 exist
    assert len(maximal_hamming_permutations(24, num_tiles=4)) == 24


def test_thousand_permutations():
    perms = maximal_hamming_permutations(1000)
    assert len(np.unique(perms, axis=0)) == 1000
    full = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(full, 99)
    assert min_hamming_distance(perms) == int(full.min()) == 5
