"""The evaluation view of patch and tile pretexts: an encoder trained on tiles (jigsaw, relative
location) or patches (CPC) is evaluated on the same tiles of a whole image, features averaged.
The tests check the geometry against the methods' own training cuts, and that run directories
record the view and load_encoder applies it (to the random baseline too), while export gets
the bare backbone."""

from __future__ import annotations

import json

import pytest
import torch

from selfsup.augment.tiles import cut_patch_grid, standardize_tiles
from selfsup.backbones import PatchGridEncoder, build_backbone, patch_grid_view
from selfsup.config import load_config
from selfsup.models import build_method, load_encoder
from selfsup.train import Trainer


class _Sum(torch.nn.Module):
    """A stand-in backbone: each patch (P, C, h, w) -> its per-channel sums and its side."""

    feature_dim, in_channels = 4, 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        side = torch.full((len(x), 1), float(x.shape[-1]))
        return torch.cat([x.sum((2, 3)), side], 1)


def test_patches_are_the_grid_windows_and_features_their_mean():
    x = torch.rand(2, 3, 20, 20)
    net = _Sum()
    enc = PatchGridEncoder(net, image_size=20, window=6, stride=5, offset=2)
    assert enc.grid == 3 and enc.feature_dim == 4
    out = enc(x)
    patches = net.seen[0].view(2, 3, 3, 3, 6, 6)
    for i in range(3):
        for j in range(3):
            r, c = 2 + 5 * i, 2 + 5 * j
            assert torch.equal(patches[:, i, j], x[:, :, r : r + 6, c : c + 6])
    expected = patches.sum((-1, -2)).mean((1, 2))
    assert torch.allclose(out[:, :3], expected, atol=1e-5) and torch.all(out[:, 3] == 6)


def test_images_are_resized_patches_rescaled_and_standardised():
    net = _Sum()
    enc = PatchGridEncoder(net, image_size=16, window=8, stride=8, patch_size=4,
                           standardize="per_channel")  # fmt: skip
    enc(torch.rand(3, 3, 32, 32))
    seen = net.seen[0]
    assert seen.shape == (3 * 4, 3, 4, 4)
    assert torch.allclose(seen.mean((2, 3)), torch.zeros(12, 3), atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        PatchGridEncoder(net, image_size=16, window=8, stride=8, offset=10)


@pytest.mark.parametrize("name", ["jigsaw", "relative_location"])
def test_tile_view_cuts_the_tiles_training_cuts_at_the_mean_jitter(name):
    cfg = load_config(name, f"{name}_cifar10_cpu", ["backbone.name=resnet_tiny",
                                                      "backbone.width=null"])  # fmt: skip
    method = build_method(cfg, 32, 3, None).eval()
    view = method.eval_view()
    assert view is not None and view["image_size"] == method.grid.puzzle_size
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    puzzles = method.puzzle_views(images, g, None, 0, train=False)  # (2, 3, P, P) in [0, 1]
    mean_jitter = torch.full((2, method.grid.num_cells, 2), method.grid.jitter // 2)
    tiles = method.grid.cut(puzzles, mean_jitter)  # (2, 9, 3, t, t)
    trained_on, _ = method.finish_tiles(tiles, g, None, 0, train=False)
    shown = PatchGridEncoder(method.encoder, **view).patches(puzzles)
    assert torch.allclose(shown, trained_on.flatten(0, 1), atol=1e-5)


def test_cpc_view_cuts_its_training_patch_grid():
    cfg = load_config("cpc", "cpc_cifar10_cpu", ["method_args.patch_normalization=per_channel"])
    method = build_method(cfg, 32, 3, None).eval()
    view = method.eval_view()
    assert (view["window"], view["stride"], view["standardize"]) == (8, 4, "per_channel")
    x = torch.rand(2, 3, 32, 32)
    grid = cut_patch_grid(x, 8, 4).flatten(1, 2).flatten(0, 1)  # (2 * 49, 3, 8, 8)
    shown = PatchGridEncoder(build_backbone("resnet_tiny"), **view).patches(x)
    assert torch.allclose(shown, standardize_tiles(grid, per_channel=True), atol=1e-5)


def test_run_records_the_view_and_load_encoder_applies_it(tiny_npz, tmp_path):
    run = tmp_path / "jigsaw"
    cfg = load_config("jigsaw", "jigsaw_cifar10_cpu", [
        f"data.source={tiny_npz}", "data.subset=null", "backbone.name=resnet_tiny",
        "backbone.width=null", "train.batch_size=8", "train.max_steps=1", "train.progress=false",
        "train.knn_monitor.every_epochs=0", "eval_data.source=null", f"out_dir={run}"])  # fmt: skip
    Trainer(cfg).fit()
    meta = json.loads((run / "encoder.json").read_text())
    assert meta["view"] == patch_grid_view(**{k: v for k, v in meta["view"].items()
                                              if k != "kind"})  # fmt: skip
    trained, rnd = load_encoder(str(run)), load_encoder(f"random:{run}")
    bare = load_encoder(str(run), eval_view=False)
    assert isinstance(trained.encoder, PatchGridEncoder)
    assert isinstance(rnd.encoder, PatchGridEncoder)
    assert not isinstance(bare.encoder, PatchGridEncoder) and "view" not in bare.meta
    assert trained.identity != bare.identity  # features of the two are cached apart
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(trained.encoder(x), bare.encoder(trained.encoder.patches(x))
                              .view(2, 9, -1).mean(1), atol=1e-5)  # fmt: skip


def test_whole_image_methods_have_no_view():
    cfg = load_config("simclr", None, ["backbone.name=resnet_tiny"])
    assert build_method(cfg, 32, 3, None).eval_view() is None
