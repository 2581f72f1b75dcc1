"""Rotation prediction: labels, global-batch slicing, loss, learning, recipes and the CLI."""

import json
import math

import pytest
import torch
from torch import nn
from two_process import assert_same_loss_curve, train_single_and_ddp

from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.methods import Rotation, get_method
from selfsup.methods.rotation import rotate_all

MEAN, STD = (0.5,) * 3, (0.25,) * 3


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are small: one thread is faster, and far steadier on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rotation(**cfg) -> Rotation:
    return Rotation(
        build_backbone("resnet_tiny"), Rotation.Config(**cfg), image_size=16, mean=MEAN, std=STD
    )


def _images(n=8, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def upright_scenes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size) 'landscapes': a bright sky fading downwards above a random
    horizon, dark ground below, random colours and noise. Upright is readable; nothing else is."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.linspace(0, 1, size).view(1, 1, size, 1)
    horizon = 0.35 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    sky = 0.6 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    ground = 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    img = torch.where(rows < horizon, sky * (1 - 0.5 * rows), ground)
    img = img + 0.08 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


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


class _FixedLogits(nn.Module):
    """A head that ignores its input and answers ``logits`` (kept differentiable)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(features)] + 0 * features.sum()


def test_loss_is_cross_entropy_over_the_four_rotations():
    m = _rotation()
    # every input scores 2 for "0 degrees" and 0 for the others; a quarter of inputs are at 0:
    # loss = 1/4 (log(e^2 + 3) - 2) + 3/4 log(e^2 + 3) = log(e^2 + 3) - 1/2
    m.head = _FixedLogits(torch.tensor([[2.0, 0.0, 0.0, 0.0]]).expand(32, 4))
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
    m.head = _FixedLogits(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(32, 4))
    assert m.pretext_metrics(images, torch.Generator()) == {
        "rotation_accuracy": 0.25,
        "rotation_all_four": 0.0,
    }
    grid = m.pictures(images, torch.Generator())["rotations"]
    assert grid.shape[0] == 3 and 0 <= float(grid.min()) and float(grid.max()) <= 1


def test_training_lifts_held_out_rotation_accuracy_far_above_chance():
    torch.manual_seed(0)
    m = _rotation(head_hidden_dim=64)
    train, held_out = upright_scenes(256, seed=0), upright_scenes(64, seed=1)

    def accuracy() -> float:
        m.eval()
        value = m.pretext_metrics(held_out, torch.Generator().manual_seed(0))["rotation_accuracy"]
        m.train()
        return value

    before = accuracy()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    for step in range(40):
        idx = torch.randint(0, len(train), (16,), generator=torch.Generator().manual_seed(step))
        loss, _ = m(train[idx], None, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert before < 0.5 and after > 0.9, (before, after)  # chance: 0.25


def test_input_making_stays_out_of_torch_compile_graphs():
    """The random draws run eagerly; the networks compile into one graph (Dynamo's eager
    backend: nothing is code-generated) that gives the eager losses."""
    import torch._dynamo as dynamo

    m = _rotation(head_hidden_dim=32)
    x = _images(6)
    dynamo.reset()
    explained = dynamo.explain(m)(x, None, torch.Generator().manual_seed(0), None, 0)
    assert explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(m, backend="eager")
    for seed in (0, 1):
        eager, _ = m(x, None, torch.Generator().manual_seed(seed))
        again, _ = compiled(x, None, torch.Generator().manual_seed(seed))
        assert torch.allclose(again, eager)
    dynamo.reset()


@pytest.mark.parametrize("recipe", ["rotation_default", "rotation_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("rotation", recipe)
    assert cfg.method == "rotation" and cfg.backbone.name == "resnet18"
    assert cfg.method_config().head == "mlp"
    assert load_config("rotation", None).train.epochs == 100  # rotation_default is picked up


def test_train_then_eval_pretext_and_knn_from_the_cli(tiny_npz, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "rotation", f"out_dir={run}", f"data.source={tiny_npz}",
        "eval_data.source=null", "backbone.name=resnet_tiny", "backbone.width=null",
        "train.batch_size=16", "train.epochs=1", "train.progress=false",
        "train.tensorboard=false", "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        "method_args.head_hidden_dim=32",
    ]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("rotation_accuracy" in r for r in rows)
    assert list((run / "pictures").glob("rotations_step*.png"))
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "rotation" and 0 <= row["rotation_accuracy"] <= 1
    assert row["pictures"] and row["pictures"][0].rsplit("/", 1)[-1].startswith("rotations_eval")
    knn = tmp_path / "knn.json"
    assert (
        main(["eval", "knn", str(run), "--data", str(tiny_npz), "--k", "5", "--json", str(knn)])
        == 0
    )
    assert 0 <= json.loads(knn.read_text())[0]["knn@5"] <= 1


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tiny_npz, tmp_path):
    """2 torchrun processes (each drawing for the global batch and keeping its rows, global
    BatchNorm) follow the same loss curve as 1 process on the same global batch."""
    train_single_and_ddp("rotation", tiny_npz, tmp_path, ["method_args.head_hidden_dim=32"])
    assert_same_loss_curve(tmp_path)
