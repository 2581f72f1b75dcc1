"""Synthetic clips (shapes, determinism, masks consistent with the sprites' motion) and the
video folder source (clips, skipped frames and videos)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import load_source
from selfsup.data.textures import procedural_textures
from selfsup.data.video import (
    ClipParams,
    SyntheticVideoOptions,
    VideoClips,
    make_clips,
    render_clips,
    split_frames,
)
from selfsup.errors import ConfigError

IMAGES = procedural_textures(40, 32, seed=3)


def _tex() -> torch.Tensor:
    return torch.from_numpy(IMAGES).permute(0, 3, 1, 2).float() / 255


def test_clip_shapes_and_determinism() -> None:
    opts = SyntheticVideoOptions(clips=12, frames=5, seed=4)
    a = make_clips(IMAGES, opts, size=24)
    assert a.frames.shape == (12, 5, 3, 24, 24) and a.frames.dtype == torch.uint8
    assert a.masks.shape == (12, 5, 24, 24) and a.masks.dtype == torch.uint8
    assert a.centers.shape == (12, 5, 4, 2)
    assert ((a.count >= 2) & (a.count <= 4)).all()
    # labels never exceed the clip's sprite count, and every clip shows some sprite
    assert (a.masks.flatten(1).max(1).values.long() <= a.count).all()
    assert (a.masks.flatten(1).max(1).values > 0).all()
    b = make_clips(IMAGES, opts, size=24, chunk=5)  # other rendering batches: same clips
    assert torch.equal(a.frames, b.frames) and torch.equal(a.masks, b.masks)
    c = make_clips(IMAGES, opts.model_copy(update={"seed": 5}), size=24)
    assert not torch.equal(a.frames, c.frames)
    # consecutive frames differ (things move) but not completely
    diff = (a.frames[:, 1:].float() - a.frames[:, :-1].float()).abs().mean()
    assert 1.0 < diff < 60.0


def _one_sprite(velocity_px: tuple[float, float], size: int = 32, **over) -> ClipParams:
    """One circular sprite at the centre, moving ``velocity_px`` pixels per frame, nothing
    else changing (no pan, zoom, spin or brightness drift)."""
    unit = 2.0 / size  # pixels -> frame coordinates
    p = dict(
        background=torch.tensor([0]), zoom=torch.tensor([1.0]), zoom_rate=torch.zeros(1),
        pan=torch.zeros(1, 2), pan_rate=torch.zeros(1, 2), brightness_rate=torch.zeros(1),
        count=torch.tensor([1]), sprite=torch.tensor([[1]]), radius=torch.tensor([[0.3]]),
        harmonics=torch.zeros(1, 1, 3), phases=torch.zeros(1, 1, 3),
        center=torch.zeros(1, 1, 2),
        velocity=torch.tensor([[[velocity_px[0] * unit, velocity_px[1] * unit]]]),
        angle=torch.zeros(1, 1), spin=torch.zeros(1, 1), sprite_brightness_rate=torch.zeros(1, 1),
    )  # fmt: skip
    p.update(over)
    return ClipParams(**p)


def test_masks_move_with_the_sprite_and_carry_its_texture() -> None:
    clips = render_clips(_tex(), _one_sprite((2.0, -1.0)), size=32, frames=4)
    m, f = clips.masks[0], clips.frames[0]
    assert m[0].sum() > 0
    for t in range(1, 4):
        shifted = torch.roll(m[0], shifts=(-t, 2 * t), dims=(0, 1))  # y up by t, x right by 2t
        assert torch.equal(m[t], shifted), f"frame {t}: mask is not the first one moved"
        inside = shifted.bool()
        moved = torch.roll(f[0], shifts=(-t, 2 * t), dims=(1, 2))
        # the sprite's pixels travel with it (the background does not move)
        assert torch.equal(f[t][:, inside], moved[:, inside])
        assert torch.equal(f[t][:, ~(inside | m[0].bool())], f[0][:, ~(inside | m[0].bool())])


def test_circle_mask_matches_centre_and_area() -> None:
    params = _one_sprite((1.5, 0.5), center=torch.tensor([[[0.1, -0.2]]]))
    clips = render_clips(_tex(), params, size=64, frames=3)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    radius_px = 0.3 * 32
    for t in range(3):
        mask = clips.masks[0, t].bool()
        cx, cy = xs[mask].mean(), ys[mask].mean()
        assert torch.allclose(torch.stack([cx, cy]), clips.centers[0, t, 0], atol=0.15)
        assert abs(mask.sum().item() / (math.pi * radius_px**2) - 1) < 0.03


def test_later_sprites_occlude_earlier_ones() -> None:
    p = _one_sprite((0.0, 0.0))
    two = ClipParams(**{
        **p.__dict__, "count": torch.tensor([2]), "sprite": torch.tensor([[1, 2]]),
        "radius": torch.tensor([[0.4, 0.2]]), "harmonics": torch.zeros(1, 2, 3),
        "phases": torch.zeros(1, 2, 3), "center": torch.zeros(1, 2, 2),
        "velocity": torch.zeros(1, 2, 2), "angle": torch.zeros(1, 2), "spin": torch.zeros(1, 2),
        "sprite_brightness_rate": torch.zeros(1, 2),
    })  # fmt: skip
    mask = render_clips(_tex(), two, size=32, frames=1).masks[0, 0]
    alone = render_clips(_tex(), _one_sprite((0, 0), radius=torch.tensor([[0.2]])), 32, 1)
    assert torch.equal(mask == 2, alone.masks[0, 0] == 1)  # the front sprite is whole
    assert (mask == 1).sum() > 0 and ((mask == 1) & (mask == 2)).sum() == 0
    big = render_clips(_tex(), _one_sprite((0, 0), radius=torch.tensor([[0.4]])), 32, 1)
    assert torch.equal((mask > 0), big.masks[0, 0] == 1)  # together they cover the big one


def test_sprites_stay_in_frame() -> None:
    opts = SyntheticVideoOptions(clips=20, frames=30, max_speed=0.3, seed=1)
    clips = make_clips(IMAGES, opts, size=32)
    assert isinstance(clips, VideoClips)
    assert clips.centers.min() > -1 and clips.centers.max() < 32


def test_synthetic_video_source(tmp_path: Path) -> None:
    npz = tmp_path / "base.npz"
    np.savez(npz, images=IMAGES)
    options = {"synthetic_video": {"clips": 10, "frames": 4}}
    train = load_source(f"synthetic_video:{npz}", image_size=16, options=options)
    assert train.layout == "clip" and train.images.shape == (10, 16, 16, 12)
    assert train.frames == 4 and train.num_channels == 12
    test = load_source(f"synthetic_video:{npz}", split="test", image_size=16, options=options)
    assert not np.array_equal(train.images, test.images)
    again = load_source(f"synthetic_video:{npz}", image_size=16, options=options)
    assert np.array_equal(train.images, again.images)
    # items hold the frames in order: frame t in channels 3t..3t+2
    batch = train.as_tensor_chw([0, 1])
    clips = make_clips(IMAGES, SyntheticVideoOptions(clips=10, frames=4), size=16)
    assert torch.equal(split_frames(batch), clips.frames[:2])
    with pytest.raises(ConfigError, match="data.options.synthetic_video.clipz: unknown key"):
        load_source(f"synthetic_video:{npz}", options={"synthetic_video": {"clipz": 3}})
    with pytest.raises(ValueError, match="data.options.synthetic_vidoe: unknown source kind"):
        load_source(f"synthetic_video:{npz}", options={"synthetic_vidoe": {"clips": 3}})
    # the sections of other source kinds are ignored: a recipe can switch sources
    plain = load_source(str(npz), options={"synthetic_video": {"clips": 3}})
    assert plain.layout == "image" and len(plain) == len(IMAGES)


def test_synthetic_video_falls_back_to_procedural_textures(tmp_path: Path) -> None:
    options = {"synthetic_video": {"clips": 3, "frames": 2}}
    source = load_source("synthetic_video", root=str(tmp_path), options=options)
    assert source.images.shape == (3, 32, 32, 6)
    assert "procedural" in source.name


def _write_frames(folder: Path, n: int, bad: tuple[int, ...] = (), seed: int = 0) -> list:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        frames.append(arr)
        path = folder / f"frame_{i:03d}.png"
        if i in bad:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(arr).save(path)
    return frames


def test_video_folder_clips_skip_bad_frames_and_short_videos(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    a = _write_frames(root / "a", 10, bad=(4,))
    _write_frames(root / "short", 2, seed=1)
    (root / "notes.txt").write_text("hello")
    options = {"video": {"frames": 3, "clip_step": 1}}
    source = load_source(f"video:{root}", image_size=16, options=options)
    assert source.layout == "clip"
    # clips of 3 consecutive frames of video a that avoid frame 4: starts 0, 1, 5, 6, 7
    assert source.images.shape == (5, 16, 16, 9)
    first = split_frames(source.as_tensor_chw([0]))[0]
    assert torch.equal(first, torch.from_numpy(np.stack(a[0:3])).permute(0, 3, 1, 2))
    third = split_frames(source.as_tensor_chw([2]))[0]
    assert torch.equal(third, torch.from_numpy(np.stack(a[5:8])).permute(0, 3, 1, 2))
    reasons = {Path(p).name: r for p, r in source.skipped}
    assert "unreadable frame" in reasons["frame_004.png"]
    assert "no clip of 3 frames" in reasons["short"]
    assert "neither a folder of frames nor a video file" in reasons["notes.txt"]
    # cached: the same call gives the same clips and list of skipped items
    again = load_source(f"video:{root}", image_size=16, options=options)
    assert np.array_equal(np.asarray(again.images), np.asarray(source.images))
    assert again.skipped == source.skipped
    # frame_step: every second frame; starts 1, 3, 5 avoid frame 4 (0, 2 and 4 hit it)
    options = {"video": {"frames": 3, "frame_step": 2, "clip_step": 1}}
    stepped = load_source(f"video:{root}", image_size=16, options=options)
    assert len(stepped) == 3
    frames = split_frames(stepped.as_tensor_chw([1]))[0]
    assert torch.equal(frames, torch.from_numpy(np.stack(a[3:8:2])).permute(0, 3, 1, 2))


def test_video_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        load_source(f"video:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    _write_frames(empty / "v", 2)
    with pytest.raises(ValueError, match="no clip of 8 readable frames"):
        load_source(f"video:{empty}")
    with pytest.raises(ValueError, match="give a folder"):
        load_source("video:")


def test_video_files_need_pyav(tmp_path: Path) -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        root = tmp_path / "files"
        root.mkdir()
        (root / "clip.mp4").write_bytes(b"\x00" * 64)
        with pytest.raises(ImportError, match=r"selfsup\[video\]"):
            load_source(f"video:{root}")
    else:
        pytest.skip("PyAV is installed: the missing-extra message cannot be provoked")
