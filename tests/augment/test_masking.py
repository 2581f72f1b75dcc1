import pytest
import torch

from selfsup.augment.masking import block_masking, grid_masking, random_masking


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _boundary_edges(mask, g):
    """Number of 4-neighbour pairs with one masked and one visible patch, per sample."""
    m = mask.view(-1, g, g)
    return (m[:, 1:] != m[:, :-1]).sum((1, 2)) + (m[:, :, 1:] != m[:, :, :-1]).sum((1, 2))


@pytest.mark.parametrize(
    "make",
    [
        lambda g: random_masking(16, 64, 0.75, g),
        lambda g: block_masking(16, 8, 0.75, g),
        lambda g: grid_masking(16, 8, g),
    ],
    ids=["random", "block", "grid"],
)
def test_masks_are_consistent_exact_and_deterministic(make):
    ids_keep, mask, ids_restore = make(_gen())
    n, length = mask.shape
    assert ids_keep.shape == (16, 16) and ids_keep.dtype == torch.long
    assert ids_restore.shape == (n, length)
    assert torch.equal(mask.sum(1), torch.full((n,), 48.0))  # exactly 16 visible everywhere
    # visible ids are exactly the unmasked positions
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
    # ids_restore inverts a shuffle that puts the visible tokens first, then the masked ones
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :16], ids_keep)
    assert torch.all(torch.gather(mask, 1, ids_shuffle[:, 16:]) == 1)
    original = torch.arange(length).expand(n, -1)
    shuffled = torch.gather(original, 1, ids_shuffle)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), original)
    # different samples, same seed -> same masks
    assert len({tuple(r.tolist()) for r in mask}) > 1
    for a, b in zip(make(_gen()), (ids_keep, mask, ids_restore), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(make(_gen(1))[1], mask)


def test_random_masking_ids_restore_inverts_the_shuffle():
    ids_keep, mask, ids_restore = random_masking(4, 64, 0.75, _gen())
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :16], ids_keep)
    x = torch.randn(4, 64, 5)
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, 5))
    back = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 5))
    assert torch.equal(back, x)


@pytest.mark.parametrize("ratio", [0.4, 0.6, 0.75])
def test_block_masks_are_blocky(ratio):
    g = 14
    _, block, _ = block_masking(32, g, ratio, _gen(), min_block=16)
    _, rand, _ = random_masking(32, g * g, ratio, _gen())
    assert torch.equal(block.sum(1), rand.sum(1))
    assert _boundary_edges(block, g).float().mean() < 0.5 * _boundary_edges(rand, g).float().mean()


def test_grid_masking_keeps_one_of_every_2x2_cell():
    _, mask, _ = grid_masking(8, 8, _gen())
    cells = (1 - mask).view(8, 4, 2, 4, 2).sum((2, 4))
    assert torch.all(cells == 1)
    with pytest.raises(ValueError, match="divisible"):
        grid_masking(2, 7, _gen())
