"""Jigsaw: permutation labels, permutation set, global-batch slicing, loss, learning, CLI."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from selfsup.augment.tiles import maximal_hamming_permutations, min_hamming_distance
from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.methods import Jigsaw, get_method

MEAN, STD = (0.5,) * 3, (0.25,) * 3


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are small: one thread is faster, and far steadier on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _jigsaw(image_size=16, **cfg) -> Jigsaw:
    cfg.setdefault("head_hidden_dim", 64)
    return Jigsaw(
        build_backbone("resnet_tiny"),
        Jigsaw.Config(**cfg),
        image_size=image_size,
        mean=MEAN,
        std=STD,
    )


def _images(n=8, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def position_images(n: int, size: int) -> torch.Tensor:
    """uint8 (n, 3, size, size): red is each pixel's row, green its column (size <= 256)."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8).expand(n, -1, -1, -1)


def blobs(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size): a soft bright blob near the centre on a dark background, random
    colours, size and noise. Each tile's shading says where it sits relative to the centre."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2 + (2 * torch.rand(n, 2, generator=g) - 1) * size / 16
    sigma = size * (0.25 + 0.15 * torch.rand(n, generator=g))
    r2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    bump = torch.exp(-r2 / (2 * sigma[:, None, None] ** 2)).unsqueeze(1)
    fg = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)
    bg = 0.3 * torch.rand(n, 3, 1, 1, generator=g)
    img = bg + (fg - bg) * bump + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


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


def test_global_batch_slices_equal_the_single_process_batch_and_are_deterministic():
    m = _jigsaw(tile_color_jitter=0.4, tile_grayscale=0.5)
    images = _images(8)

    def inputs(rows, global_size=None, offset=0, seed=5):
        return m.make_inputs(rows, torch.Generator().manual_seed(seed), global_size, offset)

    full = inputs(images)
    parts = [inputs(images[o : o + 4], 8, o) for o in (0, 4)]
    assert torch.equal(torch.cat([p[1] for p in parts]), full[1])
    for i in (0, 2):
        assert torch.allclose(torch.cat([p[i] for p in parts]), full[i], atol=1e-5)
    again = inputs(images)
    assert all(torch.equal(a, b) for a, b in zip(again, full, strict=True))
    assert not torch.equal(inputs(images, seed=6)[0], full[0])


class _FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(features)] + 0 * features.sum()


def test_loss_is_cross_entropy_over_the_permutation_classes():
    m = _jigsaw()
    classes = len(m.permutations)
    logits = torch.zeros(16, classes)
    logits[:, 0] = 3.0  # every puzzle scores 3 for class 0 and 0 for the others
    m.head = _FixedLogits(logits)
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


def test_training_lifts_held_out_permutation_accuracy_far_above_chance():
    torch.manual_seed(0)
    m = _jigsaw(puzzle_size=24)  # 6 px tiles keep the test fast
    train, held_out = blobs(256, seed=0), blobs(64, seed=1)

    def accuracy() -> float:
        m.eval()
        value = m.pretext_metrics(held_out, torch.Generator().manual_seed(0))
        m.train()
        return value["permutation_accuracy"]

    before = accuracy()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    for step in range(40):
        idx = torch.randint(0, len(train), (32,), generator=torch.Generator().manual_seed(step))
        loss, _ = m(train[idx], None, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert before < 0.1 and after > 0.7, (before, after)  # chance: 1/64


def test_input_making_stays_out_of_torch_compile_graphs():
    """The random draws run eagerly; the networks compile into one graph (Dynamo's eager
    backend: nothing is code-generated) that gives the eager losses."""
    import torch._dynamo as dynamo

    m = _jigsaw()
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


@pytest.mark.parametrize("recipe", ["jigsaw_default", "jigsaw_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("jigsaw", recipe)
    assert cfg.method == "jigsaw" and cfg.backbone.name == "resnet18"
    args = cfg.method_config()
    assert args.num_permutations in (64, 1000) and args.tile_normalization == "per_channel"


def test_train_then_eval_pretext_and_knn_from_the_cli(tiny_npz, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "jigsaw", f"out_dir={run}", f"data.source={tiny_npz}",
        "eval_data.source=null", "backbone.name=resnet_tiny", "backbone.width=null",
        "train.batch_size=16", "train.epochs=1", "train.progress=false",
        "train.tensorboard=false", "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        "method_args.puzzle_size=24", "method_args.num_permutations=32",
        "method_args.head_hidden_dim=32",
    ]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "permutation_accuracy" in r]
    assert logged and logged[-1]["permutation_min_hamming"] == min_hamming_distance(
        maximal_hamming_permutations(32)
    )
    assert list((run / "pictures").glob("puzzles_step*.png"))
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "jigsaw" and 0 <= row["permutation_accuracy"] <= 1
    assert row["pictures"][0].rsplit("/", 1)[-1].startswith("puzzles_eval")
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
    common = [
        f"data.source={tiny_npz}", "eval_data.source=null", "backbone.name=resnet_tiny",
        "backbone.width=null", "train.batch_size=16", "train.max_steps=4", "train.epochs=2",
        "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
        "train.log_every_steps=1", "train.num_threads=1", "train.knn_monitor.every_epochs=0",
        "method_args.num_permutations=64", "method_args.puzzle_size=24",
        "method_args.head_hidden_dim=32", "method_args.tile_color_jitter=0.4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "selfsup", "train", "jigsaw"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                "2", "-m", "selfsup", "train", "jigsaw"]  # fmt: skip
    for command, run in ((train, "single"), (torchrun, "ddp")):
        proc = subprocess.run(
            [*command, f"out_dir={tmp_path / run}", *common],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]

    def curve(run: str) -> list[float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r and "event" not in r]

    assert len(curve("single")) == 4
    assert curve("ddp") == pytest.approx(curve("single"), rel=1e-4, abs=1e-5)
