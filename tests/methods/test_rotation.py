"""Rotation prediction: labels, global-batch slicing, loss, learning, recipes and the CLI."""

import math

import pytest
import torch
from synthetic import FixedLogits
from synthetic import random_images as _images
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.methods import Rotation, get_method
from selfsup.methods.rotation import rotate_all

MEAN, STD = (0.5,) * 3, (0.25,) * 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _rotation(**cfg) -> Rotation:
    return Rotation(
        build_backbone("resnet_tiny"), Rotation.Config(**cfg), image_size=16, mean=MEAN, std=STD
    )


def test_registered_with_a_configurable_head():
    assert get_method("rotation") is Rotation and Rotation.family == "transformation"
    linear = _rotation(head="linear")
    assert [type(m) for m in linear.head.layers] == [nn.Linear]
    assert linear.head.layers[0].out_features == 4
    mlp = _rotation(head="mlp", head_hidden_dim=32)
    assert [type(m) for m in mlp.head.layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    with pytest.raises(ValueError):
        Rotation.Config(head="conv")
    with pytest.raises(ValueError, match="crop_scale"):
        Rotation.Config(crop_scale=(0.5, 1.5))


def test_rotation_label_says_where_the_top_left_corner_went():
    size = 8
    image = torch.zeros(2, 1, size, size)
    image[:, :, 0, 0] = 1.0  # a marker in the top-left corner
    rotated, labels = rotate_all(image)
    assert rotated.shape == (8, 1, size, size)
    assert labels.tolist() == [0, 1, 2, 3] * 2  # image-major: row 4 i + k is image i at k
    last = size - 1
    # counter-clockwise by k * 90 degrees: top-left -> bottom-left -> bottom-right -> top-right
    corner_of_label = {0: (0, 0), 1: (last, 0), 2: (last, last), 3: (0, last)}
    for row, label in zip(rotated, labels.tolist(), strict=True):
        ((y, x),) = (row[0] == 1).nonzero().tolist()
        assert (y, x) == corner_of_label[label]
    with pytest.raises(ValueError, match="square"):
        rotate_all(torch.zeros(1, 1, 4, 6))


def test_inputs_are_the_four_rotations_of_one_augmented_view():
    m = _rotation()
    x, labels = m.make_inputs(_images(4), torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 16, 16) and labels.tolist() == [0, 1, 2, 3] * 4
    views = x.view(4, 4, 3, 16, 16)
    for k in range(4):  # undo rotation k: every row of an image is the same view
        assert torch.equal(torch.rot90(views[:, k], -k, dims=(-2, -1)), views[:, 0])
    # the view is augmented (random crop): not the plain resized image
    plain = m.eval_pipeline(_images(4), None)
    assert not torch.allclose(views[:, 0], plain)


def test_global_batch_slices_equal_the_single_process_batch_and_are_deterministic():
    m = _rotation()
    images = _images(8)

    def inputs(rows, global_size=None, offset=0, seed=5):
        return m.make_inputs(rows, torch.Generator().manual_seed(seed), global_size, offset)

    full_x, full_y = inputs(images)
    parts = [inputs(images[o : o + 4], 8, o) for o in (0, 4)]
    assert torch.allclose(torch.cat([p[0] for p in parts]), full_x, atol=1e-6)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    assert torch.equal(inputs(images)[0], full_x)
    assert not torch.equal(inputs(images, seed=6)[0], full_x)
    loss_a, _ = m(images, None, torch.Generator().manual_seed(0))
    loss_b, _ = m(images, None, torch.Generator().manual_seed(0))
    assert torch.equal(loss_a, loss_b)


def test_loss_is_cross_entropy_over_the_four_rotations():
    m = _rotation()
    # every input scores 2 for "0 degrees" and 0 for the others; a quarter of inputs are at 0:
    # loss = 1/4 (log(e^2 + 3) - 2) + 3/4 log(e^2 + 3) = log(e^2 + 3) - 1/2
    m.head = FixedLogits(torch.tensor([[2.0, 0.0, 0.0, 0.0]]).expand(32, 4))
    loss, metrics = m(_images(8), None, torch.Generator().manual_seed(0))
    assert math.isclose(loss.item(), math.log(math.e**2 + 3) - 0.5, rel_tol=1e-6)
    assert float(metrics["rotation_accuracy"]) == 0.25
    loss.backward()
    assert m.encoder.stem[0].weight.grad is not None


def test_pretext_metric_uses_whole_images_and_counts_rotations():
    m = _rotation().eval()
    images = _images(8)
    a = m.pretext_metrics(images, torch.Generator().manual_seed(0))
    b = m.pretext_metrics(images, torch.Generator().manual_seed(1))
    assert a == b  # no random crop: the generator plays no part
    assert set(a) == {"rotation_accuracy", "rotation_all_four"}
    assert 0 <= a["rotation_all_four"] <= a["rotation_accuracy"] <= 1
    # a head that always answers "0 degrees" is right on exactly a quarter
    m.head = FixedLogits(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(32, 4))
    assert m.pretext_metrics(images, torch.Generator()) == {
        "rotation_accuracy": 0.25,
        "rotation_all_four": 0.0,
    }
    grid = m.pictures(images, torch.Generator())["rotations"]
    assert grid.shape[0] == 3 and 0 <= float(grid.min()) and float(grid.max()) <= 1


@pytest.mark.parametrize("recipe", ["rotation_default", "rotation_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("rotation", recipe)
    assert cfg.method == "rotation" and cfg.backbone.name == "resnet18"
    assert cfg.method_config().head == "mlp"
    assert load_config("rotation", None).train.epochs == 100  # rotation_default is picked up
