"""Jigsaw: permutation labels, permutation set, global-batch slicing, loss, learning, CLI."""

import math

import pytest
import torch
from synthetic import FixedLogits, position_images
from synthetic import random_images as _images

from selfsup.augment.tiles import maximal_hamming_permutations, min_hamming_distance
from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.methods import Jigsaw, get_method

MEAN, STD = (0.5,) * 3, (0.25,) * 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _jigsaw(image_size=16, **cfg) -> Jigsaw:
    cfg.setdefault("head_hidden_dim", 64)
    return Jigsaw(
        build_backbone("resnet_tiny"),
        Jigsaw.Config(**cfg),
        image_size=image_size,
        mean=MEAN,
        std=STD,
    )


def test_registered_and_refuses_a_vit():
    assert get_method("jigsaw") is Jigsaw and Jigsaw.family == "transformation"
    with pytest.raises(ValueError, match="ResNet"):
        Jigsaw(
            build_backbone("vit_micro", image_size=16, patch_size=4),
            Jigsaw.Config(),
            image_size=16,
            mean=MEAN,
            std=STD,
        )
    for bad in (8, 1001):
        with pytest.raises(ValueError):
            Jigsaw.Config(num_permutations=bad)


def test_default_geometry_for_cifar_sized_images():
    m = _jigsaw(image_size=32)
    assert (m.grid.puzzle_size, m.grid.tile_size, m.grid.gap, m.grid.jitter) == (48, 12, 2, 2)
    assert m.head.layers[0].in_features == 9 * m.encoder.feature_dim
    assert m.head.layers[-1].out_features == 64


def test_permutation_set_is_the_seeded_max_hamming_set_and_its_distance_is_reported():
    m = _jigsaw(num_permutations=100, permutation_seed=3)
    expected = maximal_hamming_permutations(100, 9, 3)
    assert torch.equal(m.permutations, torch.from_numpy(expected.copy()))
    assert m.min_hamming == min_hamming_distance(expected) == 6
    _, metrics = m(_images(4), None, torch.Generator().manual_seed(0))
    assert metrics["permutation_min_hamming"] == 6.0
    assert m.eval().pretext_metrics(_images(4), torch.Generator())["permutation_min_hamming"] == 6
    # the set travels with the checkpoint, and the reported distance follows it
    other = _jigsaw(num_permutations=100, permutation_seed=0)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.permutations, m.permutations) and other.min_hamming == 6


def test_shuffled_tiles_come_from_the_cells_the_label_says():
    m = _jigsaw(image_size=48)  # 48 px puzzle: whole image, 16 px cells
    tiles, labels, coloured = m.make_inputs(
        position_images(32, 48), torch.Generator().manual_seed(0), train=False
    )
    assert tiles.shape == (32, 9, 3, 12, 12) and labels.shape == (32,)
    assert labels.unique().numel() > 10  # classes are drawn per image
    top = (coloured[:, :, 0, 0, 0] * 255).round().long()  # read each tile's origin back
    left = (coloured[:, :, 1, 0, 0] * 255).round().long()
    source_cell = top // 16 * 3 + left // 16
    assert torch.equal(source_cell, m.permutations[labels])
    # normalised tiles: each channel of each tile standardised on its own
    assert torch.allclose(tiles.mean((-2, -1)), torch.zeros(32, 9, 3), atol=1e-4)


def test_loss_is_cross_entropy_over_the_permutation_classes():
    m = _jigsaw()
    classes = len(m.permutations)
    logits = torch.zeros(16, classes)
    logits[:, 0] = 3.0  # every puzzle scores 3 for class 0 and 0 for the others
    m.head = FixedLogits(logits)
    images = _images(16)
    _, labels, _ = m.make_inputs(images, torch.Generator().manual_seed(1))
    zero = float((labels == 0).float().mean())
    loss, metrics = m(images, None, torch.Generator().manual_seed(1))
    expected = math.log(math.exp(3) + classes - 1) - 3 * zero
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert float(metrics["permutation_accuracy"]) == zero


def test_pretext_metrics_and_pictures():
    m = _jigsaw().eval()
    metrics = m.pretext_metrics(_images(8), torch.Generator().manual_seed(0))
    assert list(metrics) == [
        "permutation_accuracy",
        "tile_position_accuracy",
        "permutation_min_hamming",
    ]
    assert 0 <= metrics["permutation_accuracy"] <= metrics["tile_position_accuracy"] <= 1
    grid = m.pictures(_images(8), torch.Generator().manual_seed(0))["puzzles"]
    assert grid.shape[0] == 3 and 0 <= float(grid.min()) and float(grid.max()) <= 1


@pytest.mark.parametrize("recipe", ["jigsaw_default", "jigsaw_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("jigsaw", recipe)
    assert cfg.method == "jigsaw" and cfg.backbone.name == "resnet18"
    args = cfg.method_config()
    assert args.num_permutations in (64, 1000) and args.tile_normalization == "per_channel"
