"""The procedural RGB-D renderer (shapes, determinism, depth consistent with the geometry),
depth packing, and the RGB-D folder source (pairs, skipped files)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import load_source
from selfsup.data.rgbd import pack_depth, unpack_rgbd
from selfsup.data.synthetic_rgbd import (
    BOX,
    CYLINDER,
    ROOM_SURFACES,
    SPHERE,
    SceneParams,
    SyntheticRGBDOptions,
    camera_rays,
    make_scenes,
    render_scenes,
    sample_scene_params,
)
from selfsup.data.textures import procedural_textures

IMAGES = procedural_textures(30, 32, seed=5)


def _tex() -> torch.Tensor:
    return torch.from_numpy(IMAGES).permute(0, 3, 1, 2).float() / 255


def test_scene_shapes_determinism_and_depth_range() -> None:
    opts = SyntheticRGBDOptions(scenes=10, seed=2)
    a = make_scenes(IMAGES, opts, size=32)
    assert a.rgb.shape == (10, 3, 32, 32) and a.rgb.dtype == torch.uint8
    assert a.depth.shape == (10, 32, 32) and a.depth.dtype == torch.float32
    assert a.surface.shape == (10, 32, 32)
    assert torch.isfinite(a.depth).all() and a.depth.min() > 0.1 and a.depth.max() < 20
    b = make_scenes(IMAGES, opts, size=32, chunk=3)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)
    c = make_scenes(IMAGES, opts.model_copy(update={"seed": 3}), size=32)
    assert not torch.equal(a.depth, c.depth)
    # every scene shows its floor, and objects appear somewhere
    assert ((a.surface == 2).flatten(1).any(1)).all()
    assert (a.surface >= ROOM_SURFACES).any()


def _level_room(**over) -> SceneParams:
    """A 6 x 3 x (1.5 + 6) m room, camera 1.5 m up looking straight ahead, no objects."""
    k = 3
    p = dict(
        half_width=torch.tensor([3.0]), back=torch.tensor([6.0]), height=torch.tensor([3.0]),
        camera=torch.tensor([[0.0, 1.5, 0.0]]), yaw=torch.zeros(1), pitch=torch.zeros(1),
        fov=torch.tensor([math.radians(60)]), light=torch.tensor([[0.0, 1.0, 0.0]]),
        ambient=torch.tensor([0.3]), present=torch.zeros(1, k, dtype=torch.bool),
        position=torch.zeros(1, k, 2), size=torch.full((1, k, 3), 0.5), turn=torch.zeros(1, k),
        room_texture=torch.zeros(1, 6, dtype=torch.long),
        object_texture=torch.zeros(1, k, dtype=torch.long), tile=torch.ones(1, 6),
    )  # fmt: skip
    p.update(over)
    return SceneParams(**p)


def test_floor_depth_matches_the_pinhole_formula() -> None:
    size = 32
    scene = render_scenes(_tex(), _level_room(), size)
    focal = size / 2 / math.tan(math.radians(30))
    rows = torch.arange(size).float() + 0.5 - size / 2  # pixel rows below the centre are > 0
    floor = scene.surface[0] == 2
    assert floor[-1].all() and not floor[: size // 2].any()
    expected = (1.5 * focal / rows)[:, None].expand(size, size)
    assert torch.allclose(scene.depth[0][floor], expected[floor], rtol=1e-4)
    back = scene.surface[0] == 5
    assert torch.allclose(scene.depth[0][back], torch.tensor(6.0), atol=1e-4)


def _back_project(params: SceneParams, depth: torch.Tensor) -> torch.Tensor:
    o, d, _ = camera_rays(params, depth.shape[-1])
    return o + depth.flatten(1)[..., None] * d  # (N, P, 3)


def test_depth_back_projects_onto_the_surfaces() -> None:
    opts = SyntheticRGBDOptions(scenes=6, min_objects=3, max_objects=6, seed=7)
    params = sample_scene_params(6, len(IMAGES), opts, torch.Generator().manual_seed(1))
    scene = render_scenes(_tex(), params, 32, shadows=False)
    pts = _back_project(params, scene.depth)  # (N, P, 3)
    surf = scene.surface.flatten(1)
    x, y, z = pts.unbind(-1)
    hw, h, back = (v[:, None].expand_as(x) for v in (params.half_width, params.height, params.back))
    for sid, coord, value in ((0, x, -hw), (1, x, hw), (2, y, torch.zeros_like(y)), (3, y, h),
                              (5, z, back)):  # fmt: skip
        sel = surf == sid
        if sel.any():
            assert torch.allclose(coord[sel], value[sel], atol=1e-3), f"surface {sid}"
    checked = set()
    for n in range(len(params)):
        for k in range(params.size.shape[1]):
            sel = surf[n] == ROOM_SURFACES + k
            if not sel.any():
                continue
            assert params.present[n, k]
            p = pts[n, sel]
            px, pz = params.position[n, k]
            size = params.size[n, k]
            kind = int(params.kind[n, k])
            if kind == SPHERE:
                centre = torch.stack([px, size[0], pz])
                assert torch.allclose((p - centre).norm(dim=1), size[0], atol=1e-3)
            elif kind == CYLINDER:
                radial = torch.stack([p[:, 0] - px, p[:, 2] - pz], 1).norm(dim=1)
                on_side = (radial - size[0]).abs() < 1e-3
                on_top = (p[:, 1] - size[1]).abs() < 1e-3
                assert (on_side | on_top).all() and (p[:, 1] <= size[1] + 1e-3).all()
            else:
                assert kind == BOX
                c, s = torch.cos(params.turn[n, k]), torch.sin(params.turn[n, k])
                rel = p - torch.stack([px, size[1], pz])
                local = torch.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1],
                                     s * rel[:, 0] + c * rel[:, 2]], 1)  # fmt: skip
                ratio = (local.abs() / size).max(1).values
                assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-3)
            checked.add(kind)
    assert checked == {BOX, SPHERE, CYLINDER}


def test_shadows_only_darken() -> None:
    opts = SyntheticRGBDOptions(scenes=8, min_objects=4, seed=1)
    lit = make_scenes(IMAGES, opts.model_copy(update={"shadows": False}), size=32)
    shaded = make_scenes(IMAGES, opts, size=32)
    assert torch.equal(lit.depth, shaded.depth)
    assert (shaded.rgb <= lit.rgb).all() and (shaded.rgb < lit.rgb).any()


def test_pack_and_unpack_depth() -> None:
    depth = torch.tensor([[0.0, 0.0004, 1.2345], [9.9999, 65.535, 80.0]])
    packed = torch.from_numpy(pack_depth(depth))  # (2, 3, 2)
    rgb = torch.zeros(2, 3, 3, dtype=torch.uint8)
    items = torch.cat([rgb, packed], -1).permute(2, 0, 1)[None]  # (1, 5, 2, 3)
    _, metres, valid = unpack_rgbd(items)
    expected = torch.tensor([[0.0, 0.0, 1.235], [10.0, 65.535, 65.535]])
    assert torch.allclose(metres[0, 0], expected, atol=1e-6)
    assert valid[0, 0].tolist() == [[False, False, True], [True, True, True]]
    with pytest.raises(ValueError, match=r"\(N, 5, H, W\)"):
        unpack_rgbd(torch.zeros(1, 4, 2, 2, dtype=torch.uint8))


def test_synthetic_rgbd_source(tmp_path: Path) -> None:
    npz = tmp_path / "base.npz"
    np.savez(npz, images=IMAGES)
    options = {"synthetic_rgbd": {"scenes": 5}}
    source = load_source(f"synthetic_rgbd:{npz}", image_size=16, options=options)
    assert source.layout == "rgbd" and source.images.shape == (5, 16, 16, 5)
    rgb, depth, valid = unpack_rgbd(source.as_tensor_chw([0, 1, 2]))
    scenes = make_scenes(IMAGES, SyntheticRGBDOptions(scenes=5), size=16)
    assert torch.equal(rgb, scenes.rgb[:3]) and valid.all()
    assert torch.allclose(depth[:, 0], scenes.depth[:3], atol=5e-4)  # millimetre rounding
    test = load_source(f"synthetic_rgbd:{npz}", split="test", image_size=16, options=options)
    assert not np.array_equal(test.images, source.images)


def _save_depth(path: Path, mm: np.ndarray) -> None:
    Image.fromarray(mm.astype(np.uint16)).save(path)


def test_rgbd_folder_pairs_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "nyu"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    rng = np.random.default_rng(0)
    good = {}
    for name in ("a", "b"):
        rgb = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        mm = rng.integers(0, 9000, (12, 12)).astype(np.uint16)
        Image.fromarray(rgb).save(root / "rgb" / f"{name}.png")
        _save_depth(root / "depth" / f"{name}.png", mm)
        good[name] = (rgb, mm)
    Image.fromarray(good["a"][0]).save(root / "rgb" / "no_depth.jpg")
    _save_depth(root / "depth" / "no_rgb.png", good["a"][1])
    Image.fromarray(good["a"][0]).save(root / "rgb" / "eight_bit.png")
    Image.fromarray((good["a"][1] // 100).astype(np.uint8)).save(root / "depth" / "eight_bit.png")
    Image.fromarray(good["a"][0]).save(root / "rgb" / "sizes.png")
    _save_depth(root / "depth" / "sizes.png", np.zeros((10, 12)))
    (root / "rgb" / "broken.png").write_bytes(b"garbage")
    _save_depth(root / "depth" / "broken.png", good["a"][1])

    source = load_source(f"rgbd:{root}", image_size=12)
    assert source.layout == "rgbd" and source.images.shape == (2, 12, 12, 5)
    rgb, depth, valid = unpack_rgbd(source.as_tensor_chw([0, 1]))
    for i, name in enumerate(("a", "b")):
        assert torch.equal(rgb[i], torch.from_numpy(good[name][0]).permute(2, 0, 1))
        assert torch.equal((depth[i, 0] * 1000).round().long(),
                           torch.from_numpy(good[name][1].astype(np.int64)))  # fmt: skip
        assert torch.equal(valid[i, 0], torch.from_numpy(good[name][1] > 0))
    reasons = {Path(p).name: r for p, r in source.skipped}
    assert reasons["no_depth.jpg"] == "rgb image without a depth map"
    assert reasons["no_rgb.png"] == "depth map without an rgb image"
    assert "16-bit" in reasons["eight_bit.png"]
    assert "sizes differ" in reasons["sizes.png"]
    assert "broken.png" in reasons
    # resized: depth is resampled nearest, so every value is one of the originals
    small = load_source(f"rgbd:{root}", image_size=5)
    _, d5, _ = unpack_rgbd(small.as_tensor_chw([0]))
    values = set((d5 * 1000).round().long().flatten().tolist())
    assert values <= set(good["a"][1].astype(np.int64).flatten().tolist())


def test_rgbd_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="rgb/"):
        load_source(f"rgbd:{tmp_path}")
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    with pytest.raises(ValueError, match="no readable rgb/depth pair"):
        load_source(f"rgbd:{tmp_path}")
