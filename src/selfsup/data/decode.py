"""Decode one image file straight to a small uint8 crop: the per-image work of streaming.

A streaming loader never holds a decoded full-resolution image for longer than one call: it
picks the crop box from the file's header (its size), asks Pillow for the smallest JPEG DCT
scale that still covers the box at the output resolution (``Image.draft``: decoding at 1/2, 1/4
or 1/8 of the size costs a fraction of a full decode; other JPEGs go to torchvision's
libjpeg-turbo decoder, which is faster than Pillow's full decode), and resizes only the box to
the output size in one step (torch's antialiased bilinear uint8 kernel, several times faster
than Pillow's resize). The result is a uint8 ``(size, size, C)`` array, the same kind of rows
the decode-once cache holds.

Crop boxes follow torchvision's ``RandomResizedCrop`` rule (area fraction uniform in ``scale``,
log-uniform aspect ratio in ``ratio``, ten tries, then the centre crop), drawn from a
``numpy.random.Generator`` the caller seeds, so a sample's crop depends only on what the caller
derives its seed from (the loaders use ``(seed, epoch, sample index)``).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # deprecated in torchvision 0.29 (for torchcodec); Pillow decodes everything without it
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - depends on the torchvision build
    decode_jpeg = None

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
        fast: decode a JPEG at the smallest DCT scale that covers the crop, or else with
            torchvision's libjpeg-turbo decoder (fast; differs from Pillow's full decode by
            JPEG noise); False: Pillow decodes every file in full, so a row equals
            ``resize_center_crop(Image.open(file))`` (what ``Encoder.preprocess`` computes).
    """

    size: int
    grayscale: bool = False
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    fast: bool = True

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

    The box is read from the header; a JPEG whose box is at least twice the output size is
    decoded by Pillow at a DCT scale (``spec.draft``), another RGB or grey JPEG by
    torchvision's libjpeg-turbo decoder, anything else by Pillow. The box (rounded to whole
    pixels) is resized to ``S x S`` by torch's antialiased bilinear uint8 kernel.

    Raises whatever the decoders raise for unreadable, truncated or non-image data.
    """
    raw = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else None
    if raw is None:
        with open(data, "rb") as f:
            raw = f.read()
    try:
        opened = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        what = "the given bytes" if isinstance(data, bytes | bytearray | memoryview) else data
        raise UnidentifiedImageError(f"cannot identify image file {what}") from None
    with opened as im:
        stored_w, stored_h = im.size
        try:
            orientation = int(im.getexif().get(0x0112, 1)) if "exif" in im.info else 1
        except Exception:  # malformed EXIF: keep the image as stored
            orientation = 1
        swap = orientation in _SWAPPING_ORIENTATIONS
        width, height = (stored_h, stored_w) if swap else (stored_w, stored_h)
        if rng is None:
            box = center_box(width, height)
        else:
            box = random_crop_box(width, height, rng, spec.scale, spec.ratio)
        shrink = min(box[2], box[3]) / spec.size
        jpeg = im.format == "JPEG" and spec.fast
        if jpeg and shrink >= 2:
            pixels = _pillow_pixels(im, spec, orientation, (stored_w, stored_h), shrink)
        elif jpeg and decode_jpeg is not None and im.mode in ("RGB", "L"):
            im.close()
            pixels = _libjpeg_pixels(raw, spec.grayscale)
        else:
            pixels = _pillow_pixels(im, spec, orientation, None, 1.0)
    # the box in the decoded (possibly DCT-downscaled) image's pixels
    fx, fy = pixels.shape[-1] / width, pixels.shape[-2] / height
    left, top, w, h = box
    return resize_box(pixels, (left * fx, top * fy, w * fx, h * fy), spec.size)


def resize_box(pixels: torch.Tensor, box: Box, size: int) -> np.ndarray:
    """The ``box`` (rounded to whole pixels) of a uint8 ``(C, H, W)`` image resized to
    ``(size, size, C)`` uint8 by torch's antialiased bilinear kernel."""
    left, top, w, h = box
    x0, y0 = round(left), round(top)
    x1 = min(max(round(left + w), x0 + 1), pixels.shape[-1])
    y1 = min(max(round(top + h), y0 + 1), pixels.shape[-2])
    crop = pixels[None, :, y0:y1, x0:x1].contiguous(memory_format=torch.channels_last)
    if crop.shape[-2:] != (size, size):
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
    return crop[0].permute(1, 2, 0).numpy()


def _libjpeg_pixels(raw: bytes, grayscale: bool) -> torch.Tensor:
    """A JPEG decoded by torchvision (EXIF orientation applied): uint8 ``(C, H, W)``."""
    mode = ImageReadMode.GRAY if grayscale else ImageReadMode.RGB
    encoded = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_jpeg(encoded, mode=mode, apply_exif_orientation=True)
        except RuntimeError as e:  # "decode_jpeg, <source file>:<line>, <what went wrong>"
            raise OSError(f"JPEG decoding failed: {str(e).rsplit(', ', 1)[-1]}") from None


def _pillow_pixels(
    im: Image.Image,
    spec: DecodeSpec,
    orientation: int,
    stored: tuple[int, int] | None,
    shrink: float,
) -> torch.Tensor:
    """Decode with Pillow (with ``stored`` size: a JPEG at the DCT scale that keeps the box
    ``shrink`` times the output size at least the output size): uint8 ``(C, H, W)``."""
    if stored is not None:
        request = (max(1, math.ceil(stored[0] / shrink)), max(1, math.ceil(stored[1] / shrink)))
        im.draft("L" if spec.grayscale and im.mode == "RGB" else im.mode, request)
    im.load()  # raises on truncated data
    arr = np.asarray(as_displayed(im, spec.grayscale, orientation != 1), dtype=np.uint8)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def as_displayed(im: Image.Image, grayscale: bool = False, orient: bool = True) -> Image.Image:
    """A loaded PIL image as RGB (or L with ``grayscale``), as it is displayed: EXIF
    orientation applied (with ``orient``), any mode converted, transparency on white."""
    if orient:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # malformed EXIF must not lose the image
            pass
    im = _pil_to_8bit(im)
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    mode = "L" if grayscale else "RGB"
    return im if im.mode == mode else im.convert(mode)


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """The centred square of a PIL image (as displayed: :func:`as_displayed`) resized to
    ``(size, size, 3)`` uint8 (antialiased bilinear): what a stream decodes without random
    crop and ``fast=False``."""
    image = as_displayed(image)
    arr = np.asarray(image, dtype=np.uint8)
    arr = arr[..., None] if arr.ndim == 2 else arr
    pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return resize_box(pixels, center_box(image.size[0], image.size[1]), size)


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a file that could not be decoded (as the cache lists them)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
