"""sRGB <-> CIE Lab in torch, batched, on any device and float dtype; the Lab input spaces.

Conversions follow the CIE / IEC 61966-2-1 definitions with the D65 white point and the
2-degree observer, with the same constants as scikit-image and kornia:

* sRGB gamma: ``lin = c / 12.92`` for ``c <= 0.04045``, else ``((c + 0.055) / 1.055) ** 2.4``;
* linear RGB -> XYZ with the sRGB matrix (:data:`XYZ_FROM_RGB`), D65 white
  ``(0.95047, 1.0, 1.08883)``;
* XYZ -> Lab: ``L = 116 f(Y/Yn) - 16``, ``a = 500 (f(X/Xn) - f(Y/Yn))``,
  ``b = 200 (f(Y/Yn) - f(Z/Zn))`` with ``f(t) = t ** (1/3)`` above ``(6/29) ** 3`` and the linear
  segment ``t / (3 (6/29)^2) + 4/29`` below.

Images are ``(N, 3, H, W)`` RGB in ``[0, 1]`` and ``(N, 3, H, W)`` Lab with L in ``[0, 100]`` and
a, b roughly in ``[-128, 128]`` (sRGB reaches about -86..98 in a and -108..95 in b). The 3x3
colour mixing is written as elementwise sums, so autocast never runs it in bf16/fp16; half
precision inputs are computed in float32 and cast back.

**Input spaces.** A method declares what its encoder sees (``Method.input_space``), recorded
in ``encoder.json`` so that evaluation feeds the encoder exactly what it saw in training:

* ``"rgb"``: the data's own channels, normalised with the run's ``normalize`` statistics;
* ``"lab_l"``: 1 channel, the L of CIE Lab scaled to ``(L - 50) / 50`` (in ``[-1, 1]``);
* ``"lab"``: 3 channels, ``(L - 50) / 50`` and ``a / 110``, ``b / 110``.

:func:`rgb_to_input` maps ``[0, 1]`` RGB batches to the two Lab spaces; grey data is
expanded to RGB first (``a = b = 0``).

Example:
    >>> import torch
    >>> from selfsup.augment.color import rgb_to_lab, lab_to_rgb
    >>> x = torch.rand(2, 3, 8, 8)
    >>> lab = rgb_to_lab(x)                       # (2, 3, 8, 8): L, a, b
    >>> bool((lab_to_rgb(lab) - x).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "AB_SCALE",
    "D65_WHITE",
    "INPUT_SPACES",
    "L_CENTER",
    "L_SCALE",
    "RGB_FROM_XYZ",
    "XYZ_FROM_RGB",
    "input_channels",
    "input_to_lab",
    "lab_to_input",
    "lab_to_rgb",
    "lab_to_xyz",
    "linear_to_srgb",
    "rgb_to_input",
    "rgb_to_lab",
    "rgb_to_xyz",
    "srgb_to_linear",
    "xyz_to_lab",
    "xyz_to_rgb",
]

XYZ_FROM_RGB: tuple[tuple[float, float, float], ...] = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
"""Linear sRGB -> CIE XYZ (D65), as in scikit-image / kornia."""


def _inverse3(m: tuple[tuple[float, float, float], ...]) -> tuple[tuple[float, float, float], ...]:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    inv = (
        (e * i - f * h, c * h - b * i, b * f - c * e),
        (f * g - d * i, a * i - c * g, c * d - a * f),
        (d * h - e * g, b * g - a * h, a * e - b * d),
    )
    return tuple(tuple(v / det for v in row) for row in inv)  # type: ignore[return-value]


RGB_FROM_XYZ = _inverse3(XYZ_FROM_RGB)
"""CIE XYZ (D65) -> linear sRGB: the exact inverse of :data:`XYZ_FROM_RGB`."""
D65_WHITE = (0.95047, 1.0, 1.08883)
"""Reference white (Xn, Yn, Zn) of D65, 2-degree observer."""

_DELTA = 6.0 / 29.0
_EPSILON = _DELTA**3  # 0.008856...
_KAPPA = 1.0 / (3.0 * _DELTA**2)  # 7.787...

L_CENTER, L_SCALE, AB_SCALE = 50.0, 50.0, 110.0
"""Encoder input scaling of the Lab spaces: ``(L - L_CENTER) / L_SCALE`` and ``ab / AB_SCALE``."""
INPUT_SPACES = ("rgb", "lab_l", "lab")


def _work(x: Tensor) -> tuple[Tensor, torch.dtype]:
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor, got {x.dtype}")
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W) images, got shape {tuple(x.shape)}")
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float(), x.dtype
    return x, x.dtype


def _mix(m: tuple[tuple[float, float, float], ...], x: Tensor) -> Tensor:
    """3x3 colour matrix applied over dim -3, as elementwise ops (no autocast, any dtype)."""
    c0, c1, c2 = x.unbind(-3)
    return torch.stack([r[0] * c0 + r[1] * c1 + r[2] * c2 for r in m], dim=-3)


def srgb_to_linear(x: Tensor) -> Tensor:
    """Undo the sRGB gamma: companded ``[0, 1]`` values -> linear light (any shape)."""
    return torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055).pow(2.4), x / 12.92)


def linear_to_srgb(x: Tensor) -> Tensor:
    """Apply the sRGB gamma: linear light -> companded values (any shape; no clipping)."""
    return torch.where(
        x > 0.0031308, 1.055 * x.clamp_min(0.0031308).pow(1.0 / 2.4) - 0.055, 12.92 * x
    )


def rgb_to_xyz(rgb: Tensor) -> Tensor:
    """sRGB (..., 3, H, W) in [0, 1] -> CIE XYZ (..., 3, H, W) (D65, Y of white = 1)."""
    x, dtype = _work(rgb)
    return _mix(XYZ_FROM_RGB, srgb_to_linear(x)).to(dtype)


def xyz_to_rgb(xyz: Tensor) -> Tensor:
    """CIE XYZ (..., 3, H, W) -> sRGB (..., 3, H, W), not clipped (out-of-gamut leaves [0, 1])."""
    x, dtype = _work(xyz)
    return linear_to_srgb(_mix(RGB_FROM_XYZ, x)).to(dtype)


def _f(t: Tensor) -> Tensor:
    return torch.where(t > _EPSILON, t.clamp_min(_EPSILON).pow(1.0 / 3.0), _KAPPA * t + 4.0 / 29.0)


def _f_inv(t: Tensor) -> Tensor:
    return torch.where(t > _DELTA, t.pow(3), (t - 4.0 / 29.0) / _KAPPA)


def xyz_to_lab(xyz: Tensor) -> Tensor:
    """CIE XYZ (..., 3, H, W) -> CIE Lab (..., 3, H, W) under D65."""
    x, dtype = _work(xyz)
    fx, fy, fz = (_f(c / w) for c, w in zip(x.unbind(-3), D65_WHITE, strict=True))
    lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)
    return lab.to(dtype)


def lab_to_xyz(lab: Tensor) -> Tensor:
    """CIE Lab (..., 3, H, W) -> CIE XYZ (..., 3, H, W) under D65."""
    x, dtype = _work(lab)
    l, a, b = x.unbind(-3)
    fy = (l + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0
    xyz = torch.stack([w * _f_inv(f) for f, w in zip((fx, fy, fz), D65_WHITE, strict=True)], -3)
    return xyz.to(dtype)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB (N, 3, H, W) in [0, 1] -> CIE Lab (N, 3, H, W): L in [0, 100], a and b signed.

    White -> (100, 0, 0), black -> (0, 0, 0), sRGB red -> (53.24, 80.09, 67.20).
    """
    x, dtype = _work(rgb)
    return xyz_to_lab(rgb_to_xyz(x)).to(dtype)


def lab_to_rgb(lab: Tensor, clip: bool = True) -> Tensor:
    """CIE Lab (N, 3, H, W) -> sRGB (N, 3, H, W); ``clip`` clamps out-of-gamut colours to
    [0, 1] (a predicted ab need not be reachable at every L)."""
    x, dtype = _work(lab)
    rgb = xyz_to_rgb(lab_to_xyz(x))
    return (rgb.clamp(0.0, 1.0) if clip else rgb).to(dtype)


def input_channels(space: str, data_channels: int = 3) -> int:
    """Channels an encoder takes in input space ``space`` for data of ``data_channels``."""
    if space == "rgb":
        return data_channels
    if space == "lab_l":
        return 1
    if space == "lab":
        return 3
    raise ValueError(f"unknown input space {space!r}; expected one of {INPUT_SPACES}")


def lab_to_input(lab: Tensor, space: str) -> Tensor:
    """Lab (N, 3, H, W) -> what an encoder of input ``space`` sees: (N, 1, H, W) scaled L for
    ``lab_l``, (N, 3, H, W) scaled L, a, b for ``lab``."""
    scale = lab.new_tensor([1.0 / L_SCALE, 1.0 / AB_SCALE, 1.0 / AB_SCALE]).view(3, 1, 1)
    shift = lab.new_tensor([L_CENTER, 0.0, 0.0]).view(3, 1, 1)
    scaled = (lab - shift) * scale
    if space == "lab_l":
        return scaled[:, :1]
    if space == "lab":
        return scaled
    raise ValueError(f"input space {space!r} is not a Lab space ('lab_l' or 'lab')")


def input_to_lab(x: Tensor) -> Tensor:
    """Inverse of :func:`lab_to_input` for any leading channels: (N, C, H, W) scaled L (and ab)
    -> Lab units (channel 0 is L, channels 1-2 are a, b)."""
    scale = x.new_tensor([L_SCALE, AB_SCALE, AB_SCALE][: x.shape[1]]).view(-1, 1, 1)
    shift = x.new_tensor([L_CENTER, 0.0, 0.0][: x.shape[1]]).view(-1, 1, 1)
    return x * scale + shift


def rgb_to_input(rgb: Tensor, space: str) -> Tensor:
    """RGB or grey (N, C, H, W) floats in [0, 1] -> the encoder input of a Lab ``space``.

    Values are clamped to [0, 1] first (resampling can overshoot slightly); 1-channel images
    are treated as grey RGB. ``rgb`` input space is not handled here: it is the data's own
    channels, normalised by the eval/training pipeline.
    """
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    return lab_to_input(rgb_to_lab(rgb.clamp(0.0, 1.0)), space)
