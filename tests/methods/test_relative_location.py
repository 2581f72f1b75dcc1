"""Relative patch location: neighbour labels, global-batch slicing, loss, learning, CLI."""

import math

import pytest
import torch
from synthetic import FixedLogits, position_images
from synthetic import random_images as _images

from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.methods import RelativeLocation, get_method
from selfsup.methods.relative_location import CENTRE_CELL, NEIGHBOUR_CELLS, NEIGHBOUR_OFFSETS

MEAN, STD = (0.5,) * 3, (0.25,) * 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _relloc(image_size=16, **cfg) -> RelativeLocation:
    cfg.setdefault("head_hidden_dim", 64)
    return RelativeLocation(
        build_backbone("resnet_tiny"),
        RelativeLocation.Config(**cfg),
        image_size=image_size,
        mean=MEAN,
        std=STD,
    )


def test_registered():
    assert get_method("relative_location") is RelativeLocation
    m = _relloc()
    assert m.head.layers[0].in_features == 2 * m.encoder.feature_dim
    assert m.head.layers[-1].out_features == 8


def test_neighbour_labels_map_to_the_eight_offsets_around_the_centre():
    assert len(set(NEIGHBOUR_OFFSETS)) == 8 and (0, 0) not in NEIGHBOUR_OFFSETS
    assert NEIGHBOUR_CELLS == (0, 1, 2, 3, 5, 6, 7, 8) and CENTRE_CELL == 4
    for cell, (dy, dx) in zip(NEIGHBOUR_CELLS, NEIGHBOUR_OFFSETS, strict=True):
        assert (cell // 3 - CENTRE_CELL // 3, cell % 3 - CENTRE_CELL % 3) == (dy, dx)


def test_patch_pairs_come_from_the_centre_and_the_labelled_neighbour():
    m = _relloc(image_size=48)  # 48 px puzzle: whole image, 16 px cells, 12 px tiles
    tiles, labels, coloured = m.make_inputs(
        position_images(64, 48), torch.Generator().manual_seed(0), train=False
    )
    assert tiles.shape == (64, 2, 3, 12, 12)
    assert sorted(labels.unique().tolist()) == list(range(8))  # every neighbour is drawn
    top = (coloured[:, :, 0, 0, 0] * 255).round().long()  # read the tiles' origins back
    left = (coloured[:, :, 1, 0, 0] * 255).round().long()
    assert bool((top[:, 0] // 16 == 1).all() and (left[:, 0] // 16 == 1).all())  # centre cell
    offsets = torch.tensor(NEIGHBOUR_OFFSETS)[labels]
    assert torch.equal(top[:, 1] // 16 - 1, offsets[:, 0])
    assert torch.equal(left[:, 1] // 16 - 1, offsets[:, 1])
    # gap and jitter: the pair never touches, and is never further apart than gap + 2 jitter
    g = m.grid
    along_y = offsets[:, 0] != 0
    spacing_y = (top[:, 1] - top[:, 0]).abs()[along_y] - g.tile_size
    assert int(spacing_y.min()) >= g.gap and int(spacing_y.max()) <= g.gap + 2 * g.jitter


def test_loss_is_eight_way_cross_entropy():
    m = _relloc()
    logits = torch.zeros(16, 8)
    logits[:, 0] = 3.0  # every pair scores 3 for "top-left" and 0 for the others
    m.head = FixedLogits(logits)
    images = _images(16)
    _, labels, _ = m.make_inputs(images, torch.Generator().manual_seed(1))
    zero = float((labels == 0).float().mean())
    loss, metrics = m(images, None, torch.Generator().manual_seed(1))
    assert math.isclose(loss.item(), math.log(math.exp(3) + 7) - 3 * zero, rel_tol=1e-6)
    assert float(metrics["location_accuracy"]) == zero


def test_pretext_metric_and_pictures():
    m = _relloc().eval()
    metrics = m.pretext_metrics(_images(8), torch.Generator().manual_seed(0))
    assert set(metrics) == {"location_accuracy"} and 0 <= metrics["location_accuracy"] <= 1
    grid = m.pictures(_images(8), torch.Generator().manual_seed(0))["patch_pairs"]
    assert grid.shape[0] == 3 and 0 <= float(grid.min()) and float(grid.max()) <= 1


@pytest.mark.parametrize("recipe", ["relative_location_default", "relative_location_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("relative_location", recipe)
    assert cfg.method == "relative_location" and cfg.backbone.name == "resnet18"
    assert cfg.method_config().tile_normalization == "per_channel"
