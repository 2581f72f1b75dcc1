"""RGB-D cross-modal prediction: depth pooling, joint augmentation, the training step, a
few-step training run through the CLI and ``eval depth``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.data.rgbd import pack_depth
from selfsup.data.synthetic_rgbd import SyntheticRGBDOptions, make_scenes
from selfsup.data.textures import procedural_textures
from selfsup.errors import ConfigError
from selfsup.methods import RGBDCrossModal, get_method
from selfsup.methods.rgbd_crossmodal import pool_depth

IMAGES = procedural_textures(48, 32, seed=13)


def _method(**cfg) -> RGBDCrossModal:
    torch.manual_seed(0)
    config = RGBDCrossModal.Config(**{"decoder_dim": 32, **cfg})
    return RGBDCrossModal(build_backbone("resnet_tiny"), config, image_size=16,
                          mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip


def _items(n: int = 8, seed: int = 0) -> torch.Tensor:
    sc = make_scenes(IMAGES, SyntheticRGBDOptions(scenes=n, seed=seed), size=16)
    return torch.cat([sc.rgb, torch.from_numpy(pack_depth(sc.depth)).permute(0, 3, 1, 2)], 1)


def test_pool_depth_is_a_geometric_mean_of_known_cells() -> None:
    depth = torch.tensor([[[[1.0, 4.0, 2.0, 2.0], [4.0, 1.0, 0.0, 2.0]]]])
    valid = depth > 0
    pooled, ok = pool_depth(depth, valid, 2)  # 2 x 2 cells of 1 x 2 pixels
    assert ok.tolist() == [[[[True, True], [True, False]]]]
    assert torch.allclose(pooled[0, 0, 0], torch.tensor([2.0, 2.0]))
    assert torch.allclose(pooled[0, 0, 1, 0], torch.tensor(2.0))


def test_joint_augmentation_keeps_rgb_and_depth_aligned() -> None:
    m = _method(crop_scale=(1.0, 1.0), flip=False)
    items = _items(4)
    rgb, depth, valid = m.augment(items, torch.Generator().manual_seed(0), None, 0)
    _, true_depth, _ = m.decode(items)
    assert valid.all()
    assert torch.allclose(depth, true_depth, atol=1e-5)  # the whole image: nothing resampled
    assert torch.allclose(rgb, items[:, :3].float() / 255, atol=1e-6)
    # a hole in the depth never leaks into its neighbours' values
    holed = items.clone()
    holed[:, 3:, 4:8, 4:8] = 0
    m2 = _method(crop_scale=(0.5, 0.5))
    _, d2, v2 = m2.augment(holed, torch.Generator().manual_seed(1), None, 0)
    assert (~v2).any() and (d2[~v2] == 0).all()
    assert d2[v2].min() >= true_depth.min() - 1e-4 and d2[v2].max() <= true_depth.max() + 1e-4
    # the rows of one process are those rows of the global batch
    full = m2.augment(items, torch.Generator().manual_seed(3), None, 0)[0]
    half = m2.augment(items[2:], torch.Generator().manual_seed(3), 4, 2)[0]
    assert torch.equal(half, full[2:])


def test_step_trains_both_branches() -> None:
    m = _method()
    loss, metrics = m(_items(), None, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and {"depth_loss", "lab_loss", "depth_rmse"} <= set(metrics)
    loss.backward()
    assert {n for n, p in m.named_parameters() if p.grad is None} == set()
    only_depth = _method(lab_weight=0.0)
    only_depth(_items(), None, torch.Generator().manual_seed(0))[0].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0
               for p in only_depth.depth_encoder.parameters())  # fmt: skip
    inverse = _method(depth_loss="inverse_l1")
    assert torch.isfinite(inverse(_items(), None, torch.Generator().manual_seed(0))[0])


def test_refuses_non_rgbd_data() -> None:
    assert RGBDCrossModal.encoder_channels(5) == 3
    with pytest.raises(ConfigError, match="synthetic_rgbd"):
        RGBDCrossModal.encoder_channels(3)


def test_pretext_metrics_and_pictures() -> None:
    m = _method().eval()
    items = _items(4)
    metrics = m.pretext_metrics(items, torch.Generator().manual_seed(0))
    assert set(metrics) == {"depth_rmse", "depth_abs_rel", "depth_delta1", "lab_psnr"}
    assert all(math.isfinite(v) for v in metrics.values())
    grid = m.pictures(items, torch.Generator().manual_seed(0))["rgbd_crossmodal"]
    assert grid.shape == (3, 4 * 17 + 1, 4 * 17 + 1)


def _train(tmp: Path, *extra: str) -> Path:
    from selfsup.cli import main

    npz = tmp / "base.npz"
    np.savez(npz, images=IMAGES)
    run = tmp / "run"
    code = main([
        "train", "rgbd_crossmodal", f"out_dir={run}", f"data.source=synthetic_rgbd:{npz}",
        "data.image_size=16", "data.options.synthetic_rgbd.scenes=24",
        "backbone.name=resnet_tiny", "train.batch_size=8", "train.max_steps=4",
        "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
        "train.num_threads=1", "method_args.decoder_dim=16", *extra,
    ])  # fmt: skip
    assert code == 0
    return run


def test_trains_and_evaluates_end_to_end(tmp_path: Path, tiny_npz: Path) -> None:
    from selfsup.cli import main

    run = _train(tmp_path)
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["input_space"] == "rgb" and meta["in_channels"] == 3
    assert meta["data_channels"] == 5
    assert list((run / "pictures").glob("rgbd_crossmodal_step*.png"))
    out = tmp_path / "knn.json"
    assert main(["eval", "knn", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())[0]["knn@20"] <= 1
    out = tmp_path / "depth.json"
    assert main(["eval", "depth", str(run), "--train-subset", "16", "--test-subset", "8",
                 "--probe-epochs", "2", "--json", str(out)]) == 0  # fmt: skip
    (row,) = json.loads(out.read_text())
    for key in ("depth_rmse", "random_encoder_depth_rmse", "mean_depth_depth_rmse",
                "mean_depth_map_depth_rmse"):  # fmt: skip
        assert 0 < row[key] < 20
    assert 0 <= row["depth_delta1"] <= 1
    assert (run / "pictures" / "depth_probe.png").exists()
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert rows[-1]["protocol"] == "depth_probe"


@pytest.mark.parametrize("recipe", ["rgbd_crossmodal_default", "rgbd_crossmodal_cifar10_cpu"])
def test_recipes_load(recipe: str) -> None:
    cfg = load_config("rgbd_crossmodal", recipe)
    assert get_method(cfg.method) is RGBDCrossModal
    assert cfg.data.source.startswith("synthetic_rgbd")


def train_briefly(method: RGBDCrossModal, items: torch.Tensor, steps: int, batch: int = 16):
    opt = torch.optim.AdamW(method.parameters(), lr=3e-3, weight_decay=0.0)
    method.train()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        idx = torch.randperm(len(items), generator=g)[:batch]
        loss, _ = method(items[idx], None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return method.eval()


@pytest.mark.slow
def test_learns_depth_from_rgb() -> None:
    """A short training predicts held-out depth better than the untrained model."""
    train, test = _items(96, seed=1), _items(24, seed=2)
    m = _method()
    g = torch.Generator().manual_seed(0)
    before = m.eval().pretext_metrics(test, g)
    after = train_briefly(m, train, 60).pretext_metrics(test, g)
    assert after["depth_rmse"] < 0.7 * before["depth_rmse"], (before, after)
    assert after["depth_delta1"] > before["depth_delta1"] + 0.1, (before, after)


@pytest.mark.slow
def test_default_recipe_trains_with_no_data_set_up(tmp_path: Path, monkeypatch) -> None:
    """``selfsup train rgbd_crossmodal`` needs nothing but the method: without CIFAR-10 the
    scenes are textured with procedural textures (a few steps here instead of the recipe's 2
    epochs)."""
    from selfsup.cli import main

    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "nothing"))
    run = tmp_path / "run"
    assert main(["train", "rgbd_crossmodal", f"out_dir={run}", "train.max_steps=2",
                 "train.progress=false"]) == 0  # fmt: skip
    assert (run / "encoder.safetensors").exists()
