"""Relative patch location: neighbour labels, global-batch slicing, loss, learning, CLI."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.methods import RelativeLocation, get_method
from selfsup.methods.relative_location import CENTRE_CELL, NEIGHBOUR_CELLS, NEIGHBOUR_OFFSETS

MEAN, STD = (0.5,) * 3, (0.25,) * 3


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are small: one thread is faster, and far steadier on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _relloc(image_size=16, **cfg) -> RelativeLocation:
    cfg.setdefault("head_hidden_dim", 64)
    return RelativeLocation(
        build_backbone("resnet_tiny"),
        RelativeLocation.Config(**cfg),
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
    colours, size and noise. A tile's shading says where it sits relative to the centre."""
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


def test_global_batch_slices_equal_the_single_process_batch_and_are_deterministic():
    m = _relloc(tile_color_jitter=0.4, tile_grayscale=0.5)
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
    assert not torch.equal(inputs(images, seed=6)[1], full[1])


class _FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(features)] + 0 * features.sum()


def test_loss_is_eight_way_cross_entropy():
    m = _relloc()
    logits = torch.zeros(16, 8)
    logits[:, 0] = 3.0  # every pair scores 3 for "top-left" and 0 for the others
    m.head = _FixedLogits(logits)
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


def test_training_lifts_held_out_location_accuracy_far_above_chance():
    torch.manual_seed(0)
    m = _relloc(puzzle_size=24)  # 6 px tiles keep the test fast
    train, held_out = blobs(256, seed=0), blobs(128, seed=1)

    def accuracy() -> float:
        m.eval()
        value = m.pretext_metrics(held_out, torch.Generator().manual_seed(0))
        m.train()
        return value["location_accuracy"]

    before = accuracy()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    for step in range(60):
        idx = torch.randint(0, len(train), (32,), generator=torch.Generator().manual_seed(step))
        loss, _ = m(train[idx], None, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert before < 0.3 and after > 0.7, (before, after)  # chance: 1/8


def test_input_making_stays_out_of_torch_compile_graphs():
    """The random draws run eagerly; the networks compile into one graph (Dynamo's eager
    backend: nothing is code-generated) that gives the eager losses."""
    import torch._dynamo as dynamo

    m = _relloc()
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


@pytest.mark.parametrize("recipe", ["relative_location_default", "relative_location_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("relative_location", recipe)
    assert cfg.method == "relative_location" and cfg.backbone.name == "resnet18"
    assert cfg.method_config().tile_normalization == "per_channel"


def test_train_then_eval_pretext_and_knn_from_the_cli(tiny_npz, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "relative_location", f"out_dir={run}", f"data.source={tiny_npz}",
        "eval_data.source=null", "backbone.name=resnet_tiny", "backbone.width=null",
        "train.batch_size=16", "train.epochs=1", "train.progress=false",
        "train.tensorboard=false", "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        "method_args.head_hidden_dim=32",
    ]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("location_accuracy" in r for r in rows)
    assert list((run / "pictures").glob("patch_pairs_step*.png"))
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "relative_location" and 0 <= row["location_accuracy"] <= 1
    assert row["pictures"][0].rsplit("/", 1)[-1].startswith("patch_pairs_eval")
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
        "method_args.head_hidden_dim=32", "method_args.tile_color_jitter=0.4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "selfsup", "train", "relative_location"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                "2", "-m", "selfsup", "train", "relative_location"]  # fmt: skip
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
