"""Common image corruptions at 5 severities, in pure torch, after CIFAR-10-C.

Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", built CIFAR-10-C by corrupting the test set with numpy / scikit-image /
OpenCV / PIL / ImageMagick code at severities 1..5. This module re-implements the corruptions
that need no external assets in batched torch (CPU or CUDA, the input's device), with the
published CIFAR severity parameters (:data:`SEVERITY_PARAMS`). Pixel values ``x`` below are in
``[0, 1]``; every result is clipped to ``[0, 1]``.

============================  ==========================================  =====================
corruption                    severity 1 .. 5                             meaning
============================  ==========================================  =====================
``gaussian_noise``            0.04, 0.06, 0.08, 0.09, 0.10                ``x + N(0, c^2)``
``shot_noise``                500, 250, 100, 75, 50                       ``Poisson(c x) / c``
``impulse_noise``             0.01, 0.02, 0.03, 0.05, 0.07                salt & pepper amount
``speckle_noise``             0.06, 0.10, 0.12, 0.16, 0.20                ``x + x N(0, c^2)``
``defocus_blur``              (0.3, .4) (0.4, .5) (0.5, .6) (1, .2)       (disk radius,
                              (1.5, .1)                                   anti-alias sigma)
``gaussian_blur``             0.4, 0.6, 0.7, 0.8, 1.0                     Gaussian sigma (px)
``motion_blur``               (6, 1) (6, 1.5) (6, 2) (8, 2) (9, 2.5)      (radius, sigma) px
``brightness``                0.05, 0.10, 0.15, 0.20, 0.30                HSV ``V + c``
``contrast``                  0.75, 0.50, 0.40, 0.30, 0.15                ``(x - m) c + m``
``saturate``                  (0.3, 0) (0.1, 0) (1.5, 0) (2, .1)          HSV ``S a + b``
                              (2.5, .2)
``jpeg_compression``          80, 65, 58, 50, 40                          JPEG quality
``pixelate``                  0.95, 0.90, 0.85, 0.75, 0.65                resize factor
============================  ==========================================  =====================

Details (``N, C, H, W`` images, ``C`` in ``{1, 3}``):

* **Noise.** Gaussian and speckle noise and impulse flips are drawn per value (per pixel and
  channel). Impulse noise is scikit-image's ``s&p``: each value is replaced, with probability
  ``amount``, by 0 or 1 (equally likely).
* **defocus_blur**: OpenCV-style disk kernel: the pixels with ``dx^2 + dy^2 <= r^2`` averaged,
  then smoothed by a 3x3 Gaussian of sigma ``alias_blur`` (5x5 for ``r > 8``). At CIFAR radii
  below 1 the disk is a single pixel, so severities 1-3 are 3x3 Gaussians. **gaussian_blur**:
  Gaussian of sigma ``c`` truncated at ``int(4 c + 0.5)`` pixels (scipy's default). Both use
  ``reflect`` padding (OpenCV's default border; scikit-image used ``nearest`` for the Gaussian).
* **motion_blur**: ImageMagick's ``-motion-blur radius x sigma + angle``, with the angle
  uniform in ``[-45, 45]`` degrees per image: ``2 ceil(radius) + 1`` taps at integer offsets
  ``round(i (cos a, sin a))``, ``i = 0, 1, ...``, weighted ``exp(-i^2 / (2 sigma^2))``
  (a one-sided line kernel: the image is smeared along one direction); the border is
  replicated, as ImageMagick's edge virtual pixels.
* **brightness / saturate**: exact HSV arithmetic without a hue round trip. With H and S fixed
  every channel is proportional to V, so brightness is ``x * min(V + c, 1) / V`` (a black pixel
  becomes grey ``c``). With H and V fixed, a channel is ``V - S V w(H)``, so saturate is
  ``V - (S' / S) (V - x)`` with ``S' = clip(a S + b, 0, 1)``. Grey pixels have hue 0 (red)
  in scikit-image's (and ``colorsys``') convention, so the offset ``b`` at severities 4-5
  tints them red, as in CIFAR-10-C. **Grey images** (``C = 1``): brightness adds ``c`` to the
  value; saturate is the identity (there is no chroma to change).
* **contrast**: ``m`` is the per-image, per-channel mean over the pixels.
* **jpeg_compression**: a real baseline-JPEG round trip (as libjpeg through PIL): 8-bit
  samples, RGB -> YCbCr (JFIF), 4:2:0 chroma subsampling (2x2 average, "fancy" triangle
  upsampling back), 8x8 block DCT-II, quantisation with the standard (Annex K) luminance and
  chrominance tables scaled by the IJG quality formula (``5000 / q`` below 50, ``200 - 2 q``
  from 50, clamped to 1..255), dequantisation, inverse DCT, YCbCr -> RGB, each plane rounded
  and clamped to 0..255 as the codec does. Images are edge-padded to a multiple of the
  block size (16 with subsampling) and cropped back. Grey images use the luminance path only.
  The float DCT differs slightly from libjpeg's integer DCT (mean difference well under one
  grey level).
* **pixelate**: PIL ``BOX`` resize to ``int(c H) x int(c W)`` (each output pixel averages the
  input pixels whose centres fall in its footprint), then ``BOX`` back up, which is nearest
  neighbour.

Output is rounded to the nearest integer (CIFAR-10-C truncated with ``np.uint8``, which
darkens by half a level on average). Severities are not equally spaced, and ``saturate`` is not
monotone: severities 1-2 desaturate (0.3, then 0.1) and 3-5 oversaturate. CIFAR-10-C's 15
benchmark corruptions include the noise, defocus and motion blur, brightness, contrast, jpeg
and pixelate corruptions here; ``speckle_noise``, ``gaussian_blur`` and ``saturate`` are its
held-out extras. Not implemented: glass and zoom blur, snow, frost, fog, elastic, spatter.

:data:`CORRUPTIONS` maps each name to ``fn(x, severity, generator) -> Tensor`` acting on float
images in ``[0, 1]``; :func:`corrupt` wraps it for uint8 images with checks, rounding and a
default generator seeded from ``(name, severity)``, so a given batch is corrupted the same way
every time; it computes in float64, so TF32 settings on CUDA do not change the result. Random
draws are made on the generator's device and moved to the images' device, so a CPU generator
gives the same result on CPU and CUDA. The default generator is re-seeded on every call: when
corrupting a data set in several batches, pass one generator for all of them, or each batch
gets the same noise pattern.

Example:
    >>> import torch
    >>> from selfsup.evaluate.corruptions import corrupt
    >>> x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    >>> y = corrupt(x, "contrast", 5)
    >>> y.dtype, tuple(y.shape), bool((y == 128).all())
    (torch.uint8, (2, 3, 32, 32), True)
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "CORRUPTIONS",
    "JPEG_CHROMINANCE",
    "JPEG_LUMINANCE",
    "SEVERITY_PARAMS",
    "brightness",
    "contrast",
    "corrupt",
    "corruption_names",
    "default_generator",
    "defocus_blur",
    "defocus_kernel",
    "gaussian_blur",
    "gaussian_noise",
    "impulse_noise",
    "jpeg_compression",
    "jpeg_quant_table",
    "motion_blur",
    "pixelate",
    "saturate",
    "shot_noise",
    "speckle_noise",
]

SEVERITY_PARAMS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "saturate": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
"""CIFAR-10-C parameters per corruption, severity 1..5 (index ``severity - 1``); see the module
docstring for their meaning."""

JPEG_LUMINANCE: tuple[tuple[int, ...], ...] = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
"""Standard JPEG luminance quantisation table (ITU T.81 Annex K.1), quality 50."""

JPEG_CHROMINANCE: tuple[tuple[int, ...], ...] = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
"""Standard JPEG chrominance quantisation table (ITU T.81 Annex K.1), quality 50."""


# --------------------------------------------------------------------------- helpers


def _param(name: str, severity: int) -> Any:
    return SEVERITY_PARAMS[name][severity - 1]


def _randn(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


def _rand(
    shape: tuple[int, ...],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _pad(x: Tensor, pad: int, mode: str = "reflect") -> Tensor:
    """Pad the last two dims of (N, C, H, W) by ``pad``; ``reflect`` falls back to
    ``replicate`` where the image is too small to reflect."""
    if pad == 0:
        return x
    if mode == "reflect" and pad >= min(x.shape[-2:]):
        mode = "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def _filter2d(x: Tensor, kernel: Tensor, mode: str = "reflect") -> Tensor:
    """Correlate every channel of (N, C, H, W) with the odd square ``kernel`` (k, k)."""
    n, c, h, w = x.shape
    k = kernel.shape[-1]
    planes = _pad(x.reshape(n * c, 1, h, w), k // 2, mode)
    weight = kernel.to(device=x.device, dtype=x.dtype).view(1, 1, k, k)
    return F.conv2d(planes, weight).view(n, c, h, w)


def _filter_separable(x: Tensor, kernel_1d: Tensor, mode: str = "reflect") -> Tensor:
    """Correlate every channel of (N, C, H, W) with ``outer(kernel_1d, kernel_1d)``, as two
    1-D passes."""
    n, c, h, w = x.shape
    k = kernel_1d.shape[0]
    planes = _pad(x.reshape(n * c, 1, h, w), k // 2, mode)
    weight = kernel_1d.to(device=x.device, dtype=x.dtype)
    planes = F.conv2d(planes, weight.view(1, 1, k, 1))
    return F.conv2d(planes, weight.view(1, 1, 1, k)).view(n, c, h, w)


def _gaussian_1d(sigma: float, radius: int, dtype: torch.dtype = torch.float64) -> Tensor:
    i = torch.arange(-radius, radius + 1, dtype=dtype)
    g = torch.exp(-(i**2) / (2.0 * sigma**2))
    return g / g.sum()


# --------------------------------------------------------------------------- noise


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Additive Gaussian noise of std ``c`` (x in [0, 1], (N, C, H, W) float)."""
    c = _param("gaussian_noise", severity)
    return (x + c * _randn(x, generator)).clamp(0.0, 1.0)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Poisson (photon) noise: ``Poisson(c x) / c``."""
    c = float(_param("shot_noise", severity))
    rates = (x * c).to(generator.device)
    counts = torch.poisson(rates, generator=generator).to(x.device)
    return (counts / c).clamp(0.0, 1.0)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Salt & pepper: each value becomes 0 or 1 (equally likely) with probability ``amount``."""
    amount = _param("impulse_noise", severity)
    u = _rand((2, *x.shape), generator, x.device)
    flip = u[0] < amount
    salt = (u[1] < 0.5).to(x.dtype)
    return torch.where(flip, salt, x)


def speckle_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Multiplicative Gaussian noise: ``x + x N(0, c^2)``."""
    c = _param("speckle_noise", severity)
    return (x + x * c * _randn(x, generator)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- blur


def defocus_kernel(radius: float, alias_blur: float) -> Tensor:
    """Anti-aliased disk (k, k) float64 summing to 1, as CIFAR-10-C's ``disk``: the pixels with
    ``dx^2 + dy^2 <= radius^2`` averaged, then convolved with a 3x3 Gaussian of sigma
    ``alias_blur`` (5x5 when ``radius > 8``). Trimmed to its support."""
    ksize = 3 if radius <= 8 else 5
    reach = int(math.floor(radius)) + ksize // 2
    pos = torch.arange(-reach, reach + 1, dtype=torch.float64)
    disk = ((pos[:, None] ** 2 + pos[None, :] ** 2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    g = _gaussian_1d(alias_blur, ksize // 2)
    smooth = torch.outer(g, g).view(1, 1, ksize, ksize)
    # The disk lies within floor(radius) of the centre, so zero padding loses nothing.
    return F.conv2d(disk.view(1, 1, *disk.shape), smooth, padding=ksize // 2)[0, 0]


def defocus_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Defocus: convolution with :func:`defocus_kernel` (reflect padding)."""
    radius, alias_blur = _param("defocus_blur", severity)
    return _filter2d(x, defocus_kernel(radius, alias_blur)).clamp(0.0, 1.0)


def gaussian_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Gaussian blur of sigma ``c`` pixels, truncated at ``int(4 c + 0.5)`` (reflect padding)."""
    sigma = _param("gaussian_blur", severity)
    g = _gaussian_1d(sigma, int(4.0 * sigma + 0.5))
    return _filter_separable(x, g).clamp(0.0, 1.0)


def motion_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """ImageMagick-style motion blur along a random angle in [-45, 45] degrees per image: output
    ``(y, x) = sum_i k_i img(y + round(i sin a), x + round(i cos a))`` over
    ``i < 2 ceil(radius) + 1`` with ``k_i`` proportional to ``exp(-i^2 / (2 sigma^2))``;
    borders replicated."""
    radius, sigma = _param("motion_blur", severity)
    n, c, h, w = x.shape
    width = 2 * int(math.ceil(radius)) + 1
    angle = _rand((n,), generator, x.device, torch.float64) * 90.0 - 45.0
    rad = torch.deg2rad(angle)
    taps = torch.arange(width, device=x.device, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2.0 * sigma**2))
    weights = (weights / weights.sum()).tolist()
    # ImageMagick rounds half down: ceil(v - 0.5).
    dx = torch.ceil(taps[None, :] * torch.cos(rad)[:, None] - 0.5).long()  # (N, width)
    dy = torch.ceil(taps[None, :] * torch.sin(rad)[:, None] - 0.5).long()
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for i, k in enumerate(weights):
        r = (rows[None, :, None] + dy[:, i, None, None]).clamp(0, h - 1)  # (N, H, 1)
        q = (cols[None, None, :] + dx[:, i, None, None]).clamp(0, w - 1)  # (N, 1, W)
        index = (r * w + q).reshape(n, 1, h * w).expand(n, c, h * w)
        out += k * torch.gather(flat, 2, index)
    return out.view(n, c, h, w).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- colour


def brightness(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """HSV value ``V + c`` (clipped to 1) with hue and saturation kept: every channel scales by
    ``V' / V``; black pixels become grey ``c``. Grey images: ``min(x + c, 1)``."""
    c = _param("brightness", severity)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp(0.0, 1.0)


def contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """``(x - m) c + m`` with ``m`` the per-image, per-channel mean."""
    c = _param("contrast", severity)
    m = x.mean(dim=(2, 3), keepdim=True)
    return ((x - m) * c + m).clamp(0.0, 1.0)


def saturate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """HSV saturation ``S' = clip(a S + b, 0, 1)`` with hue and value kept:
    ``x' = V - (S' / S) (V - x)``. Grey pixels (S = 0) have hue 0, so they become
    ``(V, V (1 - S'), V (1 - S'))``. Identity on grey (C = 1) images."""
    if x.shape[1] != 3:
        return x.clone()
    a, b = _param("saturate", severity)
    v = x.amax(dim=1, keepdim=True)
    chroma = v - x.amin(dim=1, keepdim=True)  # V S
    s = torch.where(v > 0, chroma / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (a * s + b).clamp(0.0, 1.0)
    achromatic = torch.tensor([0.0, 1.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    w = torch.where(chroma > 0, (v - x) / chroma.clamp_min(1e-12), achromatic)
    return (v - v * s_new * w).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- digital


def jpeg_quant_table(quality: int, chroma: bool = False) -> Tensor:
    """(8, 8) float64 quantisation table for IJG ``quality`` (1..100), baseline-clamped."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(JPEG_CHROMINANCE if chroma else JPEG_LUMINANCE, dtype=torch.float64)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> Tensor:
    """Orthonormal 8-point DCT-II matrix ``D`` (coefficients = ``D @ block @ D.T``)."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(device=device, dtype=dtype)


def _jpeg_plane(plane: Tensor, table: Tensor) -> Tensor:
    """Quantise (N, P, H, W) 0..255 sample planes (H, W multiples of 8) in 8x8 DCT blocks."""
    n, p, h, w = plane.shape
    d = _dct_matrix(plane.dtype, plane.device)
    q = table.to(device=plane.device, dtype=plane.dtype)
    blocks = (plane - 128.0).view(n, p, h // 8, 8, w // 8, 8).transpose(3, 4)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / q) * q
    blocks = d.T @ coef @ d
    out = blocks.transpose(3, 4).reshape(n, p, h, w) + 128.0
    return out.round().clamp(0.0, 255.0)


def _jpeg(x: Tensor, quality: int, subsample: bool = True) -> Tensor:
    """Baseline JPEG encode + decode of (N, C, H, W) images in [0, 1], C in {1, 3}."""
    n, c, h, w = x.shape
    luma_table = jpeg_quant_table(quality)
    block = 16 if (subsample and c == 3) else 8
    ph, pw = (-h) % block, (-w) % block
    samples = (x * 255.0).round().clamp(0.0, 255.0)
    if ph or pw:
        samples = F.pad(samples, (0, pw, 0, ph), mode="replicate")
    if c == 1:
        return _jpeg_plane(samples, luma_table)[..., :h, :w] / 255.0
    r, g, b = samples.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    y = y.round().clamp(0.0, 255.0)[:, None]
    chroma = torch.stack([cb, cr], dim=1).round().clamp(0.0, 255.0)
    if subsample:
        chroma = F.avg_pool2d(chroma, 2).round()
    y = _jpeg_plane(y, luma_table)
    chroma = _jpeg_plane(chroma, jpeg_quant_table(quality, chroma=True))
    if subsample:
        # libjpeg's "fancy" upsampling: the 3/4, 1/4 triangle filter, edges replicated.
        chroma = F.interpolate(chroma, scale_factor=2.0, mode="bilinear", align_corners=False)
    y, cb, cr = y[:, 0], chroma[:, 0] - 128.0, chroma[:, 1] - 128.0
    rgb = torch.stack(
        [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1
    ).round()
    return rgb.clamp(0.0, 255.0)[..., :h, :w] / 255.0


def jpeg_compression(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """JPEG round trip at quality ``c`` with 4:2:0 chroma subsampling (as PIL's default)."""
    return _jpeg(x, int(_param("jpeg_compression", severity)), subsample=True)


def _box_resize_matrix(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """(size_out, size_in) PIL ``BOX`` resampling weights: output ``i`` averages the inputs whose
    centres lie in ``(c - s/2, c + s/2]`` with ``c = (i + 0.5) size_in / size_out`` and
    ``s = max(size_in / size_out, 1)`` (nearest neighbour when upsampling)."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centre = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    offset = (torch.arange(size_in, dtype=torch.float64) + 0.5)[None, :] - centre[:, None]
    m = ((offset > -support / 2) & (offset <= support / 2)).to(torch.float64)
    return (m / m.sum(dim=1, keepdim=True)).to(device)


def pixelate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """BOX downsample to ``int(c H) x int(c W)``, then BOX (nearest) upsample back."""
    c = _param("pixelate", severity)
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c + 1e-9)), max(1, int(w * c + 1e-9))
    down_h = _box_resize_matrix(h, sh, x.device).to(x.dtype)
    down_w = _box_resize_matrix(w, sw, x.device).to(x.dtype)
    up_h = _box_resize_matrix(sh, h, x.device).to(x.dtype)
    up_w = _box_resize_matrix(sw, w, x.device).to(x.dtype)
    small = down_h @ x @ down_w.T
    return (up_h @ small @ up_w.T).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- registry

Corruption = Callable[[Tensor, int, torch.Generator], Tensor]

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
}
"""Name -> ``fn(x, severity, generator)`` on float (N, C, H, W) images in [0, 1], returning
float images in [0, 1] of the same shape. Use :func:`corrupt` for uint8 images."""


def corruption_names() -> list[str]:
    """Names of the available corruptions, in CIFAR-10-C order."""
    return list(CORRUPTIONS)


def _check(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(
            f"unknown corruption {name!r}; valid names: {', '.join(corruption_names())}"
        )
    if (
        isinstance(severity, bool)
        or not isinstance(severity, numbers.Integral)
        or not 1 <= severity <= 5
    ):
        raise ValueError(f"corruption severity must be an integer in 1..5, got {severity!r}")


def default_generator(name: str, severity: int) -> torch.Generator:
    """CPU generator seeded from ``crc32("name:severity")``: the default of :func:`corrupt`."""
    _check(name, severity)
    seed = zlib.crc32(f"{name}:{int(severity)}".encode())
    return torch.Generator().manual_seed(seed)


def corrupt(
    images: Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> Tensor:
    """Corrupt uint8 images (N, C, H, W), C in {1, 3}, with ``name`` at ``severity`` (1..5).

    Returns uint8 (N, C, H, W) on the images' device. Random corruptions draw from
    ``generator`` (consumed) on its own device; by default from :func:`default_generator`, so
    the result depends only on the images, the name and the severity.
    """
    _check(name, severity)
    if images.dtype != torch.uint8:
        raise TypeError(f"corrupt expects uint8 images, got {images.dtype}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"corrupt expects (N, C, H, W) images with C in {{1, 3}}, got {tuple(images.shape)}"
        )
    if generator is None:
        generator = default_generator(name, severity)
    # float64 keeps CPU and CUDA results equal, whatever the TF32 settings of conv / matmul.
    x = images.to(torch.float64) / 255.0
    out = CORRUPTIONS[name](x, int(severity), generator)
    return (out * 255.0).round().clamp(0.0, 255.0).to(torch.uint8)
