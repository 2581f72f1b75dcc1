"""The depth probe and its mean-depth baselines."""

from __future__ import annotations

import torch

from selfsup.backbones import build_backbone
from selfsup.data.rgbd import pack_depth
from selfsup.evaluate.depth_probe import DepthProbeConfig, depth_probe, mean_depth_baseline


def _items(depth: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    return torch.cat([rgb, torch.from_numpy(pack_depth(depth)).permute(0, 3, 1, 2)], 1)


def test_mean_depth_baselines_by_hand() -> None:
    train_depth = torch.tensor([[[1.0, 3.0]], [[3.0, 5.0]]])  # (2, 1, 2): mean 3, map [2, 4]
    test_depth = torch.tensor([[[2.0, 0.0]]])  # the second pixel is unknown
    rgb = torch.zeros(1, 3, 1, 2, dtype=torch.uint8)
    out = mean_depth_baseline(_items(train_depth, rgb.expand(2, -1, -1, -1)),
                              _items(test_depth, rgb))  # fmt: skip
    assert abs(out["mean_depth"]["value"] - 3.0) < 1e-4
    assert abs(out["mean_depth"]["rmse"] - 1.0) < 1e-4  # |3 - 2| on the one known pixel
    assert abs(out["mean_depth_map"]["rmse"] - 0.0) < 1e-4  # the map says 2 there
    assert out["mean_depth"]["delta1"] == 0.0 and out["mean_depth_map"]["delta1"] == 1.0


def test_probe_reads_depth_that_the_image_shows() -> None:
    """Images whose brightness encodes depth: the probe on a (random) encoder recovers depth
    far better than the mean depth."""
    g = torch.Generator().manual_seed(0)
    n, s = 96, 16
    ramp = torch.linspace(0, 1, s).view(1, 1, s).expand(n, s, s)
    level = torch.rand(n, 1, 1, generator=g)
    depth = 1.0 + 4.0 * (0.5 * ramp + 0.5 * level)  # 1..5 m, per image and along x
    rgb = (255 * (depth - 1) / 4).round().to(torch.uint8)[:, None].expand(n, 3, s, s)
    items = _items(depth, rgb)
    torch.manual_seed(0)
    encoder = build_backbone("resnet_tiny")
    meta = {"image_size": s, "in_channels": 3, "normalize": "none", "input_space": "rgb"}
    result, first = depth_probe(encoder, meta, items[:64], items[64:],
                                DepthProbeConfig(epochs=60, batch_size=16, lr=3e-3))  # fmt: skip
    base = mean_depth_baseline(items[:64], items[64:])
    assert first.shape == (8, 1, s, s)
    assert result["rmse"] < 0.5 * base["mean_depth"]["rmse"], (result, base)
    assert result["delta1"] > base["mean_depth"]["delta1"]
