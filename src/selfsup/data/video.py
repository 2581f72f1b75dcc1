"""Video clips: a synthetic clip generator with instance masks, and a video folder source.

Clips travel through the data pipeline as one uint8 item of ``3 T`` channels (the ``"clip"``
layout of :class:`~selfsup.data.sources.ImageSource`): frame ``t`` is in channels
``3t .. 3t + 2``. :func:`split_frames` turns a batch ``(N, 3 T, H, W)`` back into
``(N, T, 3, H, W)``.

**Synthetic clips** (``data.source=synthetic_video`` or ``synthetic_video:IMAGES``) are made from
an image set (CIFAR-10 by default, any dataset name, ``.npz`` or image folder; procedural
textures when none is available, see :mod:`selfsup.data.textures`):

* a background image, panned and zoomed over time;
* 2–4 sprites (by default), each cut from another image with a random star-shaped outline
  (a circle whose radius is modulated by harmonics 2–4), moving with a constant velocity
  (bouncing off the borders) and spinning, drawn in order so that later ones occlude earlier
  ones;
* a global brightness drift and a per-sprite one.

Every clip comes with per-frame instance masks (0 = background, k = the k-th sprite, only where
it is visible). Everything is drawn from one ``torch.Generator`` seeded by ``seed`` (and the
split), all parameters up front, so a clip depends only on the seed and its index.

**Video folders** (``data.source=video:PATH``): every sub-folder of ``PATH`` holding image files
is one video (frames in name order); every video file (``.mp4``, ``.avi``, ``.mov``, ``.mkv``,
``.webm``) is one video, decoded with PyAV (``pip install 'selfsup[video]'``). Videos are cut
into clips of ``frames`` frames taken every ``frame_step`` frames, one clip starting every
``clip_step`` frames. Unreadable frames are skipped and listed, and no clip spans one; videos
too short for a clip are listed too. Decoded once into the cache, like image folders.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor
from torch.nn import functional as F

from selfsup.data.sources import register_source_kind
from selfsup.errors import ConfigError, MissingExtraError

logger = logging.getLogger("selfsup.data")

__all__ = [
    "ClipParams",
    "SyntheticVideoOptions",
    "VIDEO_EXTENSIONS",
    "VideoClips",
    "VideoFolderOptions",
    "clips_to_items",
    "load_video_folder",
    "make_clips",
    "render_clips",
    "sample_clip_params",
    "split_frames",
    "synthetic_video_source",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
#: Sprites keep their centres inside this box of the [-1, 1] frame (they bounce off it).
SPRITE_BOX = 0.75


def parse_options(model: type[BaseModel], options: dict[str, Any] | None, where: str) -> Any:
    """Validate ``data.options`` with a source's options model; errors name the key."""
    try:
        return model.model_validate(options or {})
    except ValidationError as err:
        lines = [f"invalid data.options.{where}:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  data.options.{where}.{key}: {msg}")
        lines.append(f"  (known: {', '.join(model.model_fields)})")
        raise ConfigError("\n".join(lines)) from None


class SyntheticVideoOptions(BaseModel):
    """``data.options`` of ``synthetic_video`` (motion in units of the half frame width, i.e.
    0.1 = 5% of the frame per frame)."""

    model_config = ConfigDict(extra="forbid")

    clips: int = Field(default=2000, gt=0)
    frames: int = Field(default=8, ge=2)
    min_objects: int = Field(default=2, ge=1)
    max_objects: int = Field(default=4, ge=1)
    max_speed: float = Field(default=0.12, ge=0)
    """Largest sprite speed per frame (each axis)."""
    max_spin: float = Field(default=0.2, ge=0)
    """Largest sprite rotation per frame, radians."""
    max_pan: float = Field(default=0.04, ge=0)
    """Largest background pan per frame (each axis)."""
    max_zoom: float = Field(default=0.03, ge=0)
    """Largest relative background zoom change per frame."""
    max_brightness: float = Field(default=0.04, ge=0)
    """Largest relative brightness change per frame (global, and per sprite)."""
    seed: int = 0
    images: int | None = Field(default=None, gt=1)
    """Use only the first N images of the image set (None: all)."""


# ----------------------------------------------------------------------------- synthetic
@dataclass
class ClipParams:
    """Everything that decides a batch of N clips with K sprite slots (a slot is drawn when
    ``k < count``). Positions are in [-1, 1] frame coordinates (x right, y down), angles in
    radians; rates are per frame."""

    background: Tensor  # (N,) index into the images
    zoom: Tensor  # (N,) background zoom at t = 0 (>= 1 magnifies)
    zoom_rate: Tensor  # (N,)
    pan: Tensor  # (N, 2) background centre at t = 0
    pan_rate: Tensor  # (N, 2)
    brightness_rate: Tensor  # (N,)
    count: Tensor  # (N,) sprites in the clip
    sprite: Tensor  # (N, K) index into the images
    radius: Tensor  # (N, K) mean radius
    harmonics: Tensor  # (N, K, 3) relative amplitudes of the 2nd, 3rd and 4th harmonic
    phases: Tensor  # (N, K, 3)
    center: Tensor  # (N, K, 2) position at t = 0
    velocity: Tensor  # (N, K, 2)
    angle: Tensor  # (N, K) orientation at t = 0
    spin: Tensor  # (N, K)
    sprite_brightness_rate: Tensor  # (N, K)

    def __len__(self) -> int:
        return int(self.background.shape[0])

    def rows(self, start: int, stop: int) -> ClipParams:
        """Clips ``start .. stop - 1``."""
        return ClipParams(**{k: v[start:stop] for k, v in self.__dict__.items()})


@dataclass
class VideoClips:
    """Rendered clips.

    Attributes:
        frames: (N, T, 3, S, S) uint8.
        masks: (N, T, S, S) uint8 instance labels: 0 background, k the k-th sprite (1-based),
            only where it is visible.
        centers: (N, T, K, 2) sprite centres in pixels (x, y).
        count: (N,) sprites per clip.
    """

    frames: Tensor
    masks: Tensor
    centers: Tensor
    count: Tensor


def sample_clip_params(
    n: int, num_images: int, opts: SyntheticVideoOptions, generator: torch.Generator
) -> ClipParams:
    """Draw the parameters of ``n`` clips from ``generator`` (CPU), in a fixed order."""
    if opts.min_objects > opts.max_objects:
        raise ConfigError(
            f"data.options.synthetic_video: min_objects={opts.min_objects} > "
            f"max_objects={opts.max_objects}"
        )
    k = opts.max_objects
    g = generator

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    background = torch.randint(0, num_images, (n,), generator=g)
    # sprites come from other images than the background (an offset in 1 .. M-1)
    sprite = (background[:, None] + torch.randint(1, num_images, (n, k), generator=g)) % num_images
    return ClipParams(
        background=background,
        zoom=uniform((n,), 1.0, 1.4),
        zoom_rate=uniform((n,), -opts.max_zoom, opts.max_zoom),
        pan=uniform((n, 2), -0.2, 0.2),
        pan_rate=uniform((n, 2), -opts.max_pan, opts.max_pan),
        brightness_rate=uniform((n,), -opts.max_brightness, opts.max_brightness),
        count=torch.randint(opts.min_objects, opts.max_objects + 1, (n,), generator=g),
        sprite=sprite,
        radius=uniform((n, k), 0.25, 0.45),
        harmonics=uniform((n, k, 3), -0.18, 0.18),
        phases=uniform((n, k, 3), 0.0, 2 * math.pi),
        center=uniform((n, k, 2), -0.6, 0.6),
        velocity=uniform((n, k, 2), -opts.max_speed, opts.max_speed),
        angle=uniform((n, k), 0.0, 2 * math.pi),
        spin=uniform((n, k), -opts.max_spin, opts.max_spin),
        sprite_brightness_rate=uniform((n, k), -opts.max_brightness, opts.max_brightness),
    )


def _bounce(x: Tensor, limit: float) -> Tensor:
    """Fold positions into [-limit, limit] as a ball bouncing off both walls would move."""
    period = 4 * limit
    y = torch.remainder(x + limit, period)
    return torch.where(y > 2 * limit, period - y, y) - limit


def pixel_grid(size: int) -> Tensor:
    """(S, S, 2) pixel-centre coordinates (x, y) in [-1, 1] (``align_corners=False``)."""
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], -1)


def render_clips(images: Tensor, params: ClipParams, size: int, frames: int) -> VideoClips:
    """Render clips from their parameters.

    Args:
        images: (M, 3, h, w) float in [0, 1], the image set.
        params: from :func:`sample_clip_params` (or written by hand, e.g. in tests).
        size: frame side S.
        frames: frames per clip T.

    Returns:
        :class:`VideoClips` (uint8 frames and masks).
    """
    n, k = params.sprite.shape
    t = torch.arange(frames, dtype=torch.float32)  # (T,)
    grid = pixel_grid(size)  # (S, S, 2)

    # background: src = (x - pan_t) ... sampled at x / zoom_t + pan_t
    zoom = (params.zoom[:, None] * (1 + params.zoom_rate[:, None] * t)).clamp_min(0.5)  # (N, T)
    pan = params.pan[:, None] + params.pan_rate[:, None] * t[None, :, None]  # (N, T, 2)
    bg_grid = grid[None, None] / zoom[..., None, None, None] + pan[:, :, None, None]
    bg_grid = bg_grid.reshape(n, frames * size, size, 2)
    out = (
        F.grid_sample(
            images[params.background],
            bg_grid,
            mode="bilinear",
            padding_mode="reflection",
            align_corners=False,
        )
        .view(n, 3, frames, size, size)
        .permute(0, 2, 1, 3, 4)
    )  # (N, T, 3, S, S)
    labels = torch.zeros(n, frames, size, size, dtype=torch.uint8)

    # sprites: local coordinates u = R(-angle_t) (x - center_t)
    center = _bounce(
        params.center[:, None] + params.velocity[:, None] * t[None, :, None, None], SPRITE_BOX
    )  # (N, T, K, 2)
    angle = params.angle[:, None] + params.spin[:, None] * t[None, :, None]  # (N, T, K)
    cos, sin = torch.cos(angle), torch.sin(angle)
    d = grid[None, None, None] - center[..., None, None, :]  # (N, T, K, S, S, 2)
    ux = cos[..., None, None] * d[..., 0] + sin[..., None, None] * d[..., 1]
    uy = -sin[..., None, None] * d[..., 0] + cos[..., None, None] * d[..., 1]
    rho, phi = torch.sqrt(ux * ux + uy * uy), torch.atan2(uy, ux)
    m = torch.tensor([2.0, 3.0, 4.0])
    wobble = params.harmonics[:, None, :, None, None, :] * torch.cos(
        m * phi[..., None] + params.phases[:, None, :, None, None, :]
    )  # (N, T, K, S, S, 3)
    edge = params.radius[:, None, :, None, None] * (1 + wobble.sum(-1))
    inside = rho < edge  # (N, T, K, S, S)
    tex_grid = torch.stack([ux, uy], -1) / (1.25 * params.radius[:, None, :, None, None, None])
    tex_grid = tex_grid.permute(0, 2, 1, 3, 4, 5).reshape(n * k, frames * size, size, 2)
    tex = (
        F.grid_sample(
            images[params.sprite.reshape(-1)],
            tex_grid,
            mode="bilinear",
            padding_mode="reflection",
            align_corners=False,
        )
        .view(n, k, 3, frames, size, size)
        .permute(0, 3, 1, 2, 4, 5)
    )  # (N, T, K, 3, S, S)
    shade = 1 + params.sprite_brightness_rate[:, None, :] * t[None, :, None]  # (N, T, K)
    tex = tex * shade[..., None, None, None]
    for slot in range(k):
        draw = inside[:, :, slot] & (slot < params.count)[:, None, None, None]  # (N, T, S, S)
        out = torch.where(draw[:, :, None], tex[:, :, slot], out)
        labels = torch.where(draw, torch.tensor(slot + 1, dtype=torch.uint8), labels)
    out = out * (1 + params.brightness_rate[:, None] * t)[..., None, None, None]
    frames_u8 = (out.clamp(0, 1) * 255).round().to(torch.uint8)
    centers_px = (center + 1) * (size / 2) - 0.5
    return VideoClips(frames_u8, labels, centers_px, params.count.clone())


def make_clips(
    images: np.ndarray,
    opts: SyntheticVideoOptions,
    *,
    size: int = 32,
    seed_offset: int = 0,
    chunk: int = 64,
) -> VideoClips:
    """``opts.clips`` clips of ``opts.frames`` frames at ``size`` px from an image set
    ``(M, h, w, 3)`` uint8; deterministic in ``(opts.seed, seed_offset)``, independent of
    ``chunk`` (the rendering batch)."""
    if opts.images is not None:
        images = images[: opts.images]
    base = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    g = torch.Generator().manual_seed(opts.seed * 1_000_003 + seed_offset)
    params = sample_clip_params(opts.clips, len(base), opts, g)
    parts = [
        render_clips(base, params.rows(i, min(i + chunk, len(params))), size, opts.frames)
        for i in range(0, len(params), chunk)
    ]
    return VideoClips(
        torch.cat([p.frames for p in parts]),
        torch.cat([p.masks for p in parts]),
        torch.cat([p.centers for p in parts]),
        torch.cat([p.count for p in parts]),
    )


def clips_to_items(frames: Tensor | np.ndarray) -> np.ndarray:
    """(N, T, 3, H, W) uint8 clips -> (N, H, W, 3 T) items of the ``clip`` layout."""
    f = torch.as_tensor(frames)
    n, t, c, h, w = f.shape
    return f.permute(0, 3, 4, 1, 2).reshape(n, h, w, t * c).contiguous().numpy()


def split_frames(batch: Tensor) -> Tensor:
    """A batch of clip items (N, 3 T, H, W) -> (N, T, 3, H, W) (a view)."""
    n, c, h, w = batch.shape
    if c % 3:
        raise ValueError(f"clip batches have 3 x frames channels, got {c}")
    return batch.view(n, c // 3, 3, h, w)


SPLIT_SEEDS = {"train": 0, "test": 1, "val": 2}


def synthetic_video_source(
    base_spec: str | None,
    *,
    split: str,
    root: str | None,
    image_size: int | None,
    cache_dir: str | None,
    options: dict[str, Any] | None,
) -> Any:
    """The ``synthetic_video`` :class:`~selfsup.data.sources.ImageSource` (``clip`` layout).

    The ``test`` split draws other clips (another seed) from the image set's test split when
    it has one (named datasets), so held-out clips share no sprite or background image with
    the training clips.
    """
    from selfsup.data.sources import ImageSource
    from selfsup.data.textures import base_images

    opts = parse_options(SyntheticVideoOptions, options, "synthetic_video")
    if split not in SPLIT_SEEDS:
        raise ValueError(
            f"synthetic_video: split must be one of {list(SPLIT_SEEDS)}, got {split!r}"
        )
    images, name = base_images(
        base_spec,
        split="train" if split == "train" else "test",
        root=root,
        cache_dir=cache_dir,
        seed=opts.seed,
    )
    clips = make_clips(images, opts, size=image_size or 32, seed_offset=SPLIT_SEEDS[split])
    return ImageSource(
        images=clips_to_items(clips.frames),
        name=f"synthetic_video({name})-{split}",
        layout="clip",
    )


# ----------------------------------------------------------------------------- folders
class VideoFolderOptions(BaseModel):
    """``data.options`` of ``video:PATH``."""

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(default=8, ge=2)
    """Frames per clip."""
    frame_step: int = Field(default=1, ge=1)
    """Take every n-th frame of the video."""
    clip_step: int | None = Field(default=None, ge=1)
    """A clip starts every n frames of the video (default: frames x frame_step, no overlap)."""


@dataclass
class _Video:
    name: str
    frames: list[np.ndarray | None]  # None where a frame could not be read
    frame_names: list[str]


def _read_frame_folder(folder: Path, size: int, skipped: list[tuple[str, str]]) -> _Video:
    from selfsup.data.sources import IMAGE_EXTENSIONS, _decode_image

    frames: list[np.ndarray | None] = []
    names: list[str] = []
    for p in sorted(q for q in folder.iterdir() if not q.name.startswith(".")):
        if p.is_dir():
            skipped.append((str(p), "a folder inside a video folder (not read)"))
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append((str(p), f"not an image extension ({p.suffix or 'none'})"))
            continue
        try:
            frames.append(_decode_image(str(p), size, False))
        except Exception as e:  # any failure = unreadable frame
            frames.append(None)
            skipped.append((str(p), f"unreadable frame: {type(e).__name__}: {e}"))
        names.append(p.name)
    return _Video(folder.name, frames, names)


def _read_video_file(path: Path, size: int) -> _Video:
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        raise MissingExtraError(
            f"{path}: decoding video files needs PyAV; install it with "
            "pip install 'selfsup[video]' (or pip install av), or give a folder of frames"
        ) from None
    from selfsup.data.sources import _fit

    frames: list[np.ndarray | None] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            im = frame.to_image().convert("RGB")
            frames.append(np.asarray(_fit(im, size), dtype=np.uint8))
    return _Video(path.name, frames, [f"{path.name}#{i}" for i in range(len(frames))])


def _clip_starts(video: _Video, opts: VideoFolderOptions) -> list[int]:
    """Start indices of the clips of a video that contain no unreadable frame."""
    span = (opts.frames - 1) * opts.frame_step + 1
    step = opts.clip_step or opts.frames * opts.frame_step
    bad = np.array([f is None for f in video.frames], dtype=bool)
    starts = []
    for s in range(0, len(video.frames) - span + 1, step):
        if not bad[s : s + span : opts.frame_step].any():
            starts.append(s)
    return starts


def load_video_folder(
    path: str,
    *,
    image_size: int | None,
    cache_dir: str | None,
    options: dict[str, Any] | None,
) -> Any:
    """The ``video:PATH`` :class:`~selfsup.data.sources.ImageSource` (``clip`` layout); see
    the module docstring. Decoded once into ``$SELFSUP_CACHE`` (keyed by the files' sizes and
    times, the size and the options)."""
    from selfsup.data.sources import (
        CACHE_FORMAT_VERSION,
        DEFAULT_FOLDER_IMAGE_SIZE,
        IMAGE_EXTENSIONS,
        ImageSource,
        _hash,
        _safe,
        _save_item_cache,
        _warn_skipped,
        default_cache_dir,
    )

    opts = parse_options(VideoFolderOptions, options, "video")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}")
    size = image_size or DEFAULT_FOLDER_IMAGE_SIZE
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stats = []
    for p in entries:
        for q in [p] if p.is_file() else sorted(p.iterdir()):
            st = q.stat()
            stats.append((str(q.relative_to(root)), st.st_size, st.st_mtime_ns))
    key = _hash({"video": str(root.resolve()), "files": stats, "size": size,
                 "opts": opts.model_dump(), "v": CACHE_FORMAT_VERSION})  # fmt: skip
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    stem = f"video-{_safe(root.resolve().name)}-{size}px-{key}"
    npy_path, meta_path = cache / f"{stem}.npy", cache / f"{stem}.json"
    if npy_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return ImageSource(
            images=np.load(npy_path, mmap_mode="r"),
            name=root.name,
            layout="clip",
            skipped=[(p, r) for p, r in meta["skipped"]],
        )

    skipped: list[tuple[str, str]] = []
    videos: list[_Video] = []
    for p in entries:
        if p.is_dir():
            if any(q.suffix.lower() in IMAGE_EXTENSIONS for q in p.iterdir()):
                videos.append(_read_frame_folder(p, size, skipped))
            else:
                skipped.append((str(p), "no image files in this folder"))
        elif p.suffix.lower() in VIDEO_EXTENSIONS:
            try:
                videos.append(_read_video_file(p, size))
            except MissingExtraError:
                raise
            except Exception as e:  # unreadable container
                skipped.append((str(p), f"unreadable video: {type(e).__name__}: {e}"))
        else:
            skipped.append((str(p), "neither a folder of frames nor a video file"))
    items: list[np.ndarray] = []
    for video in videos:
        starts = _clip_starts(video, opts)
        if not starts:
            good = sum(f is not None for f in video.frames)
            skipped.append(
                (
                    str(root / video.name),
                    f"no clip of {opts.frames} frames (step {opts.frame_step}) without an "
                    f"unreadable frame ({len(video.frames)} frames, {good} readable)",
                )
            )
        for s in starts:
            idx = range(s, s + (opts.frames - 1) * opts.frame_step + 1, opts.frame_step)
            items.append(np.concatenate([video.frames[i] for i in idx], axis=-1))  # type: ignore[misc]
    _warn_skipped(root, skipped)
    if not items:
        raise ValueError(f"no clip of {opts.frames} readable frames in {root} "
                         f"({len(videos)} video(s), {len(skipped)} item(s) skipped)")  # fmt: skip
    return _save_item_cache(root, npy_path, meta_path, items, skipped, "clip", "clips")


def _video_folder(arg: str, *, image_size: int | None, cache_dir: str | None,
                  options: dict[str, Any] | None, **_: Any) -> Any:  # fmt: skip
    return load_video_folder(arg, image_size=image_size, cache_dir=cache_dir, options=options)


register_source_kind("synthetic_video", synthetic_video_source)
register_source_kind("video", _video_folder)
