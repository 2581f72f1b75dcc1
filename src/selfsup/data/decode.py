"""Decode one image file straight to a small uint8 crop: the per-image work of streaming.

A streaming loader never holds a decoded full-resolution image for longer than one call: it
picks the crop box from the file's header (its size), asks Pillow for the smallest JPEG DCT
scale that still covers the box at the output resolution (``Image.draft``: decoding at 1/2, 1/4
or 1/8 of the size costs a fraction of a full decode), and resizes only the box to the output
size in one step (``Image.resize(box=...)``, antialiased bilinear). The result is a uint8
``(size, size, C)`` array, the same kind of rows the decode-once cache holds.

Crop boxes follow torchvision's ``RandomResizedCrop`` rule (area fraction uniform in ``scale``,
log-uniform aspect ratio in ``ratio``, ten tries, then the centre crop), drawn from a
``numpy.random.Generator`` the caller seeds, so a sample's crop depends only on what the caller
derives its seed from (the loaders use ``(seed, epoch, sample index)``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from selfsup.data.sources import _pil_to_8bit

Box = tuple[float, float, float, float]
"""A crop box ``(left, top, width, height)`` in pixels of the (EXIF-oriented) image."""


@dataclass(frozen=True)
class DecodeSpec:
    """How a streamed image becomes a training row.

    Attributes:
        size: output side length ``S``: rows are uint8 ``(S, S, C)``.
        grayscale: one luminance channel (``C == 1``) instead of RGB (``C == 3``).
        scale: area fraction range of the random crop taken at decode time. The method's own
            augmentation (on the device) crops again from this row, so the default keeps most
            of the image: ``(0.25, 1.0)``.
        ratio: aspect-ratio range (width / height) of the random crop.
        draft: decode JPEGs at the smallest DCT scale that covers the crop (fast; differs
            from a full decode by JPEG noise); False decodes in full.
    """

    size: int
    grayscale: bool = False
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    draft: bool = True

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"decode size must be positive, got {self.size}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {self.ratio}")

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


def random_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """A random resized crop box of a ``width`` x ``height`` image (torchvision's rule: up to
    ten draws of area fraction in ``scale`` and log-uniform aspect ratio in ``ratio``, else
    the largest centred box of an in-range ratio). Returns ``(left, top, w, h)``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return float(left), float(top), float(w), float(h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) / 2, (height - h) / 2, float(w), float(h)


def center_box(width: int, height: int) -> Box:
    """The largest centred square: what the decode-once cache keeps (shorter side + centre
    crop)."""
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, float(side), float(side)


# EXIF orientations that swap width and height (transpose, 90 and 270 degree rotations)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def decode_crop(
    data: bytes | str | Path,
    spec: DecodeSpec,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Decode one image (a path or the file's bytes) to a uint8 ``(S, S, C)`` crop.

    With ``rng`` the box is a random resized crop (``spec.scale``, ``spec.ratio``), without it
    the centred square. EXIF orientation is applied first (the box is drawn on the image as
    displayed), transparency is composited on white, any mode becomes RGB or L.

    Raises whatever Pillow raises for unreadable, truncated or non-image data.
    """
    fp = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    with Image.open(fp) as im:
        stored_w, stored_h = im.size
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except Exception:  # malformed EXIF: keep the image as stored
            orientation = 1
        swap = orientation in _SWAPPING_ORIENTATIONS
        width, height = (stored_h, stored_w) if swap else (stored_w, stored_h)
        if rng is None:
            box = center_box(width, height)
        else:
            box = random_crop_box(width, height, rng, spec.scale, spec.ratio)
        if im.format == "JPEG" and spec.draft:
            # the largest DCT scale (1, 1/2, 1/4, 1/8) that keeps the box >= S pixels
            shrink = min(box[2], box[3]) / spec.size
            request = (
                max(1, math.ceil(stored_w / shrink)),
                max(1, math.ceil(stored_h / shrink)),
            )
            im.draft("L" if spec.grayscale and im.mode == "RGB" else im.mode, request)
        im.load()  # raises on truncated data
        if orientation != 1:
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # malformed EXIF must not lose the image
                pass
        im = _pil_to_8bit(im)
        if im.mode == "RGBA":
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        mode = "L" if spec.grayscale else "RGB"
        if im.mode != mode:
            im = im.convert(mode)
        # the box in the decoded (possibly DCT-downscaled) image's pixels
        fx, fy = im.size[0] / width, im.size[1] / height
        left, top, w, h = box
        scaled = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        out = im.resize((spec.size, spec.size), Image.Resampling.BILINEAR, box=scaled)
        arr = np.asarray(out, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side resized to ``size`` (antialiased bilinear) and the centre cropped to a
    square: how the decode-once cache and evaluation see an image."""
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a file that could not be decoded (as the cache lists them)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
