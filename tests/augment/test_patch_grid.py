"""The overlapping patch grid of CPC: geometry and the window every patch comes from."""

import pytest
import torch

from selfsup.augment.tiles import cut_patch_grid, patch_grid_size


def position_image(size: int) -> torch.Tensor:
    """(1, 2, size, size) long: channel 0 is each pixel's row, channel 1 its column."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows, cols]).unsqueeze(0)


@pytest.mark.parametrize(
    ("size", "patch", "stride", "grid"),
    [(32, 8, 4, 7), (16, 4, 2, 7), (10, 4, 3, 3), (9, 4, 3, 2), (8, 8, 1, 1), (12, 3, 3, 4)],
)
def test_every_patch_is_its_window(size, patch, stride, grid):
    assert patch_grid_size(size, patch, stride) == grid
    image = position_image(size)
    patches = cut_patch_grid(image, patch, stride)
    assert patches.shape == (1, grid, grid, 2, patch, patch)
    span = torch.arange(patch)
    for i in range(grid):
        for j in range(grid):
            rows, cols = patches[0, i, j]
            assert torch.equal(rows, (i * stride + span)[:, None].expand(patch, patch))
            assert torch.equal(cols, (j * stride + span)[None, :].expand(patch, patch))


def test_batch_channels_and_dtype_are_kept_and_the_result_is_a_copy():
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    patches = cut_patch_grid(images, 8, 4)
    assert patches.dtype == torch.uint8 and patches.is_contiguous()
    assert torch.equal(patches[2, 3, 5], images[2, :, 12:20, 20:28])
    patches.zero_()
    assert images.any()  # writing the patches leaves the images alone


def test_rejects_impossible_geometry():
    with pytest.raises(ValueError, match="exceeds"):
        patch_grid_size(8, 9, 1)
    with pytest.raises(ValueError, match=">= 1"):
        patch_grid_size(8, 4, 0)
    with pytest.raises(ValueError):
        cut_patch_grid(torch.zeros(1, 3, 6, 6), 8, 4)
