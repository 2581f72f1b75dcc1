import pytest
import torch
from torch.nn import functional as F

from selfsup.augment.pixel_masks import (
    block_mask,
    center_mask,
    center_square,
    masked_count,
    region_mask,
    sample_pixel_masks,
)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "size,fraction,margin,side", [(32, 0.25, 8, 16), (128, 0.25, 32, 64), (16, 0.25, 4, 8)]
)
def test_center_square_is_the_documented_one(size, fraction, margin, side):
    assert center_square(size, fraction) == (margin, side)
    m = center_mask(2, size, fraction)
    assert m.shape == (2, 1, size, size) and m.dtype == torch.float32
    expected = torch.zeros(size, size)
    expected[margin : margin + side, margin : margin + side] = 1
    assert torch.equal(m[0, 0], expected) and torch.equal(m[1, 0], expected)


@pytest.mark.parametrize("size", [15, 16, 31, 32, 33, 64])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_center_square_is_exactly_centred_and_near_the_fraction(size, fraction):
    m = center_mask(1, size, fraction)[0, 0]
    assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1)) and torch.equal(m, m.T)
    margin, side = center_square(size, fraction)
    assert size - 2 * margin == side and int(m.sum()) == side * side
    # the nearest centred square: its side is within one pixel of size * sqrt(fraction)
    assert abs(side - size * fraction**0.5) <= 1.0


@pytest.mark.parametrize("kind", ["block", "region"])
@pytest.mark.parametrize(
    "size,fraction", [(16, 0.25), (32, 0.1), (32, 0.25), (32, 0.5), (48, 0.75)]
)
def test_random_masks_hit_the_target_fraction(kind, size, fraction):
    m = sample_pixel_masks(kind, 16, size, fraction, _g())
    assert m.shape == (16, 1, size, size)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    counts = m.sum((1, 2, 3))
    assert torch.all(counts == masked_count(size, fraction))
    assert abs(float(counts[0]) / size**2 - fraction) <= 0.5 / size**2
    # per-sample draws: the samples differ from each other
    assert len({tuple(row.flatten().tolist()) for row in m}) == 16


@pytest.mark.parametrize("kind", ["center", "block", "region"])
def test_masks_are_deterministic_for_a_generator(kind):
    a = sample_pixel_masks(kind, 8, 32, 0.25, _g(3))
    b = sample_pixel_masks(kind, 8, 32, 0.25, _g(3))
    assert torch.equal(a, b)
    if kind != "center":
        assert not torch.equal(a, sample_pixel_masks(kind, 8, 32, 0.25, _g(4)))


@pytest.mark.parametrize("kind", ["center", "block", "region"])
def test_process_slices_equal_the_rows_of_a_single_process_draw(kind):
    full = sample_pixel_masks(kind, 12, 32, 0.3, _g(7))
    for offset, n in [(0, 4), (4, 4), (8, 4), (6, 6)]:
        part = sample_pixel_masks(kind, n, 32, 0.3, _g(7), global_size=12, offset=offset)
        assert torch.equal(part, full[offset : offset + n])
    with pytest.raises(ValueError, match="exceed"):
        sample_pixel_masks(kind, 4, 32, 0.3, _g(7), global_size=6, offset=4)
    with pytest.raises(ValueError, match="global_size"):
        sample_pixel_masks(kind, 4, 32, 0.3, _g(7), offset=4)


def test_block_masks_are_rectangles():
    # one block exactly covers the target: every mask is a single 8x8 square
    m = block_mask(10, 16, 0.25, _g(), block_size=(0.5, 0.5))
    for row in m[:, 0]:
        ys, xs = torch.nonzero(row, as_tuple=True)
        assert int(ys.max() - ys.min()) == 7 and int(xs.max() - xs.min()) == 7
    # in general: whole rectangles plus part of one, far more compact than scattered pixels
    m = block_mask(32, 32, 0.25, _g())
    assert _neighbour_agreement(m) > 0.85


def test_region_masks_are_irregular_blobs():
    m = region_mask(32, 32, 0.25, _g(), grid=4)
    # a masked pixel's 4-neighbours are mostly masked too (0.25 for independent pixels) ...
    assert _neighbour_agreement(m) > 0.8
    # ... but the blobs are not rectangles: they fill well under their bounding boxes
    fill = []
    for row in m[:, 0]:
        ys, xs = torch.nonzero(row, as_tuple=True)
        fill.append(len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)).item())
    assert sum(fill) / len(fill) < 0.7
    # a finer grid gives smaller blobs: more boundary
    finer = region_mask(32, 32, 0.25, _g(), grid=8)
    assert _neighbour_agreement(finer) < _neighbour_agreement(m)


def _neighbour_agreement(m):
    """Fraction of the 4-neighbours of masked pixels (inside the image) that are masked."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    masked_neighbours = F.conv2d(m, kernel, padding=1)
    inside = F.conv2d(torch.ones_like(m), kernel, padding=1)
    return float((masked_neighbours * m).sum() / (inside * m).sum())


def test_bad_arguments_are_refused():
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            sample_pixel_masks("region", 2, 32, fraction, _g())
    with pytest.raises(ValueError, match="unknown mask kind"):
        sample_pixel_masks("stripes", 2, 32, 0.25, _g())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_size"):
        block_mask(2, 32, 0.25, _g(), block_size=(0.5, 0.2))
    with pytest.raises(ValueError, match="grid"):
        region_mask(2, 16, 0.25, _g(), grid=17)
    with pytest.raises(TypeError, match="Generator"):
        region_mask(2, 32, 0.25, None)  # type: ignore[arg-type]
