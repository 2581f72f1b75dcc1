"""RGB-D items: depth packed into uint8 channels, the RGB-D folder source, the synthetic one.

An RGB-D item is 5 uint8 channels (the ``"rgbd"`` layout of
:class:`~selfsup.data.sources.ImageSource`): R, G, B, then the depth in **millimetres** as a
16-bit number, high byte then low byte (the unit and range of NYU-style 16-bit depth PNGs);
0 means unknown depth (a hole of the sensor), which losses and metrics skip.
:func:`pack_depth` / :func:`unpack_rgbd` convert.

**RGB-D folders** (``data.source=rgbd:PATH``) follow the common NYU-style layout:
``PATH/rgb/NAME.png|jpg`` beside ``PATH/depth/NAME.png`` (16-bit, millimetres). Pairs are
matched by file name stem; an image without depth (or depth without image), an unreadable file,
a depth map that is not 16-bit, or a pair whose sizes differ is skipped and listed. Both are
cropped to a centred square and resized to ``data.image_size`` (default 64): RGB antialiased
bilinear, depth nearest (so no depth value is invented between a near and a far surface).

**Synthetic RGB-D** (``data.source=synthetic_rgbd`` or ``synthetic_rgbd:IMAGES``) renders
:mod:`selfsup.data.synthetic_rgbd` scenes textured from an image set (CIFAR-10 by default,
see :mod:`selfsup.data.textures`); the ``test`` split uses another seed and the image set's
test split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from selfsup.data.sources import register_source_kind
from selfsup.data.video import SPLIT_SEEDS, parse_options

logger = logging.getLogger("selfsup.data")

__all__ = [
    "MAX_DEPTH_M",
    "load_rgbd_folder",
    "pack_depth",
    "synthetic_rgbd_source",
    "unpack_rgbd",
]

MAX_DEPTH_M = 65.535
"""The largest depth an RGB-D item holds (16-bit millimetres)."""
RGB_EXTENSIONS = (".png", ".jpg", ".jpeg")


def pack_depth(depth_m: Tensor | np.ndarray) -> np.ndarray:
    """Metric depth (..., H, W) in metres -> (..., H, W, 2) uint8 millimetres (high, low byte).

    Depths are rounded to the millimetre and clipped to [0, 65.535] m; 0 (and anything that
    rounds to 0 or is not finite) means unknown."""
    d = torch.as_tensor(depth_m, dtype=torch.float64)
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    mm = (d * 1000).round().clamp(0, 65535).to(torch.int32)
    return torch.stack([mm // 256, mm % 256], -1).to(torch.uint8).numpy()


def unpack_rgbd(items: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A batch of RGB-D items (N, 5, H, W) uint8 -> (RGB (N, 3, H, W) uint8, depth (N, 1, H, W)
    float32 metres, valid (N, 1, H, W) bool: depth known)."""
    if items.ndim != 4 or items.shape[1] != 5:
        raise ValueError(f"RGB-D batches are (N, 5, H, W) uint8, got {tuple(items.shape)}")
    mm = items[:, 3:4].to(torch.int32) * 256 + items[:, 4:5].to(torch.int32)
    return items[:, :3], mm.float() / 1000.0, mm > 0


def _fit_pair(rgb: Image.Image, depth: Image.Image, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop both to a square and resize: RGB bilinear (antialiased), depth nearest."""
    rgb_sq = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BILINEAR)
    depth_sq = ImageOps.fit(depth, (size, size), method=Image.Resampling.NEAREST)
    return np.asarray(rgb_sq, dtype=np.uint8), np.asarray(depth_sq, dtype=np.int64)


def _read_pair(rgb_path: Path, depth_path: Path, size: int) -> np.ndarray:
    """One (size, size, 5) uint8 item; raises ValueError with the reason for a bad pair."""
    with Image.open(rgb_path) as im:
        im.load()
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    with Image.open(depth_path) as dm:
        dm.load()
        if dm.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"depth must be a 16-bit PNG in millimetres, got mode {dm.mode}")
        depth = dm.convert("I")
    if rgb.size != depth.size:
        raise ValueError(f"sizes differ: rgb {rgb.size}, depth {depth.size}")
    rgb_arr, depth_arr = _fit_pair(rgb, depth, size)
    if depth_arr.max() > 65535 or depth_arr.min() < 0:
        raise ValueError("depth values outside 0..65535")
    packed = pack_depth(depth_arr / 1000.0)
    return np.concatenate([rgb_arr, packed], axis=-1)


def load_rgbd_folder(
    path: str,
    *,
    image_size: int | None,
    cache_dir: str | None,
    options: dict[str, Any] | None,
) -> Any:
    """The ``rgbd:PATH`` :class:`~selfsup.data.sources.ImageSource` (module docstring),
    decoded once into ``$SELFSUP_CACHE``."""
    from selfsup.data.sources import (
        CACHE_FORMAT_VERSION,
        DEFAULT_FOLDER_IMAGE_SIZE,
        ImageSource,
        _hash,
        _safe,
        _save_item_cache,
        _warn_skipped,
        default_cache_dir,
    )

    del options  # RGB-D folders have no options
    root = Path(path).expanduser()
    rgb_dir, depth_dir = root / "rgb", root / "depth"
    if not rgb_dir.is_dir() or not depth_dir.is_dir():
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else "nothing"
        raise FileNotFoundError(
            f"RGB-D folder {root} must hold rgb/ (png or jpg) and depth/ (16-bit png, mm) "
            f"sub-folders; found: {found}"
        )
    size = image_size or DEFAULT_FOLDER_IMAGE_SIZE
    rgb_files = {p.stem: p for p in sorted(rgb_dir.iterdir()) if not p.name.startswith(".")}
    depth_files = {p.stem: p for p in sorted(depth_dir.iterdir()) if not p.name.startswith(".")}
    stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
             for p in [*rgb_files.values(), *depth_files.values()]]  # fmt: skip
    key = _hash({"rgbd": str(root.resolve()), "files": sorted(stats), "size": size,
                 "v": CACHE_FORMAT_VERSION})  # fmt: skip
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    stem = f"rgbd-{_safe(root.resolve().name)}-{size}px-{key}"
    npy_path, meta_path = cache / f"{stem}.npy", cache / f"{stem}.json"
    if npy_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return ImageSource(images=np.load(npy_path, mmap_mode="r"), name=root.name, layout="rgbd",
                           skipped=[(p, r) for p, r in meta["skipped"]])  # fmt: skip

    skipped: list[tuple[str, str]] = []
    items: list[np.ndarray] = []
    for name in sorted(set(rgb_files) | set(depth_files)):
        rgb_path, depth_path = rgb_files.get(name), depth_files.get(name)
        if rgb_path is None:
            skipped.append((str(depth_path), "depth map without an rgb image"))
            continue
        if depth_path is None:
            skipped.append((str(rgb_path), "rgb image without a depth map"))
            continue
        if rgb_path.suffix.lower() not in RGB_EXTENSIONS or depth_path.suffix.lower() != ".png":
            skipped.append((str(rgb_path), "expected rgb/*.png|jpg and depth/*.png"))
            continue
        try:
            items.append(_read_pair(rgb_path, depth_path, size))
        except Exception as e:  # any failure = a bad pair
            skipped.append((str(rgb_path), f"{type(e).__name__}: {e}"))
    _warn_skipped(root, skipped)
    if not items:
        raise ValueError(f"no readable rgb/depth pair in {root} ({len(skipped)} skipped)")
    return _save_item_cache(root, npy_path, meta_path, items, skipped, "rgbd", "items")


def synthetic_rgbd_source(
    base_spec: str | None,
    *,
    split: str,
    root: str | None,
    image_size: int | None,
    cache_dir: str | None,
    options: dict[str, Any] | None,
) -> Any:
    """The ``synthetic_rgbd`` :class:`~selfsup.data.sources.ImageSource` (``rgbd`` layout)."""
    from selfsup.data.sources import ImageSource
    from selfsup.data.synthetic_rgbd import SyntheticRGBDOptions, make_scenes
    from selfsup.data.textures import base_images

    opts = parse_options(SyntheticRGBDOptions, options, "synthetic_rgbd")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"synthetic_rgbd: split must be one of {list(SPLIT_SEEDS)}, got {split!r}")
    images, name = base_images(
        base_spec,
        split="train" if split == "train" else "test",
        root=root,
        cache_dir=cache_dir,
        seed=opts.seed,
    )
    scenes = make_scenes(images, opts, size=image_size or 64, seed_offset=SPLIT_SEEDS[split])
    rgb = scenes.rgb.permute(0, 2, 3, 1).numpy()
    items = np.concatenate([rgb, pack_depth(scenes.depth)], axis=-1)
    return ImageSource(images=np.ascontiguousarray(items), name=f"synthetic_rgbd({name})-{split}",
                       layout="rgbd")  # fmt: skip


def _rgbd_folder(arg: str, *, image_size: int | None, cache_dir: str | None,
                 options: dict[str, Any] | None, **_: Any) -> Any:  # fmt: skip
    return load_rgbd_folder(arg, image_size=image_size, cache_dir=cache_dir, options=options)


register_source_kind("synthetic_rgbd", synthetic_rgbd_source)
register_source_kind("rgbd", _rgbd_folder)
