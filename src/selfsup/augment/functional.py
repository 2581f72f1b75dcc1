"""Pure, batched image operations with per-sample parameters.

Every function takes a float tensor ``x`` of shape ``(N, C, H, W)`` with values in ``[0, 1]``
(``C`` is 3 for RGB or 1 for grey) and per-sample parameters given either as a Python number
(shared by all samples) or as a tensor of shape ``(N,)`` on the same device. No function loops
over the images in Python, so a whole batch costs a handful of kernel launches on any device.

The semantics follow ``torchvision.transforms.v2.functional`` on float images; differences are
stated in each docstring.

Example:
    >>> import torch
    >>> from selfsup.augment import functional as AF
    >>> x = torch.rand(4, 3, 32, 32)
    >>> y = AF.adjust_brightness(x, torch.tensor([0.5, 1.0, 1.5, 2.0]))
    >>> y.shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "to_float",
    "resized_crop",
    "resize",
    "crop_resize_weights",
    "hflip",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "gaussian_blur",
    "gaussian_kernel1d",
    "solarize",
    "normalize",
]

# ITU-R 601-2 luma weights, as used by torchvision / PIL.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def _check_image(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images of shape (N, C, H, W), got {tuple(x.shape)}")


def _per_sample(v: float | Tensor, x: Tensor) -> Tensor | float:
    """Turn a scalar or an ``(N,)`` tensor into something broadcastable against ``x``."""
    if isinstance(v, Tensor):
        if v.ndim == 0:
            return v.to(device=x.device, dtype=x.dtype)
        if v.shape[0] != x.shape[0]:
            raise ValueError(
                f"per-sample parameter has {v.shape[0]} rows but the batch has {x.shape[0]}"
            )
        return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return float(v)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(f"size must be an int or a pair (height, width), got {size}")
    return size[0], size[1]


def to_float(x: Tensor) -> Tensor:
    """Convert a uint8 batch to float32 in ``[0, 1]``; float input is returned as float32.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float32).mul_(1.0 / 255.0)
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or floating point images, got {x.dtype}")
    return x.to(torch.float32)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def crop_resize_weights(
    in_size: int, start: Tensor, length: Tensor, out_size: int, *, antialias: bool = True
) -> Tensor:
    """Per-sample 1-D interpolation matrices for "crop then bilinear resize" along one axis.

    Reproduces PyTorch's ``interpolate(mode="bilinear", align_corners=False, antialias=True)``
    (the PIL-style triangle filter whose support widens by the scale factor when
    downscaling; for upscaling it reduces to plain bilinear with edge clamping) applied to the
    crop ``[start, start + length)`` of an axis of ``in_size`` pixels.

    Args:
        in_size: length of the input axis.
        start: ``(N,)`` float, first pixel of the crop (may be negative/fractional; pixels
            outside the image get zero weight and rows are renormalised).
        length: ``(N,)`` float, crop length in input pixels (> 0).
        out_size: number of output pixels.
        antialias: if False, never widen the filter (plain bilinear even when downscaling).

    Returns:
        ``(N, out_size, in_size)`` float32 matrix ``W`` such that ``out = W @ in``.
    """
    device = start.device
    start = start.to(torch.float32)
    length = length.to(torch.float32)
    scale = (length / out_size)[:, None, None]  # (N,1,1)
    if antialias:
        support = torch.clamp(scale, min=1.0)
        invscale = 1.0 / support
    else:
        support = torch.ones_like(scale)
        invscale = support
    i = torch.arange(out_size, device=device, dtype=torch.float32)[None, :, None]
    center = scale * (i + 0.5)  # (N,S,1) in crop coordinates
    j = torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :]
    j = j - start[:, None, None]  # (N,1,L) crop coordinates of every input pixel
    # ATen's _compute_index_ranges_weights evaluates the filter on the window
    # [trunc(center - support + .5), trunc(center + support + .5)) clipped to the crop; that
    # window always contains the filter's support, so only the clipping to the crop matters.
    inside = ((j >= 0) & (j < length[:, None, None])).to(torch.float32)  # (N,1,L)
    w = (j + 0.5) * invscale - center * invscale  # (N,S,L)
    w.abs_().neg_().add_(1.0).clamp_(min=0.0).mul_(inside)
    total = w.sum(-1, keepdim=True)
    return w.div_(total.clamp_(min=1e-12))


def resized_crop(
    x: Tensor, boxes: Tensor, size: int | Sequence[int], *, antialias: bool = True
) -> Tensor:
    """Crop a per-sample box from each image and resize it bilinearly.

    Equivalent to ``torchvision.transforms.v2.functional.resized_crop(img, top, left, height,
    width, size, antialias=True)`` on float images for integer boxes inside the image (exact up
    to float rounding, both when upscaling and when downscaling: the antialias filter is the
    same triangle filter PyTorch uses). The crop-and-resize is separable, so it is computed as
    two batched matrix products ``Wy @ x @ Wx^T`` with ``(N, size, H)`` and ``(N, size, W)``
    interpolation matrices; cost grows with ``H*W*size``, which is fine for CIFAR/ImageNet-sized
    inputs.

    Args:
        x: ``(N, C, H, W)`` float images.
        boxes: ``(N, 4)`` float as ``(top, left, height, width)`` in input pixels.
        size: output size ``s`` or ``(out_h, out_w)``.
        antialias: widen the filter when downscaling (torchvision's ``antialias=True``).

    Returns:
        ``(N, C, out_h, out_w)`` tensor of ``x``'s dtype.

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [4.0, 8.0, 16.0, 12.0]])
        >>> resized_crop(x, boxes, 24).shape
        torch.Size([2, 3, 24, 24])
    """
    _check_image(x)
    out_h, out_w = _pair(size)
    n, c, h, w = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must have shape ({n}, 4), got {tuple(boxes.shape)}")
    wy = crop_resize_weights(h, boxes[:, 0], boxes[:, 2], out_h, antialias=antialias)
    wx = crop_resize_weights(w, boxes[:, 1], boxes[:, 3], out_w, antialias=antialias)
    wy = wy.to(x.dtype)
    wx = wx.to(x.dtype)
    wxt = wx.transpose(1, 2)  # (N, W, T)
    # Two batched GEMMs with the channels folded into the matrix dimension (few, larger GEMMs).
    if out_h * w * (h + out_w) <= h * out_w * (w + out_h):
        # height first: (N,S,H) @ (N,H,C*W) -> (N,S,C*W) = (N,S*C,W) @ (N,W,T) -> (N,S,C,T)
        xt = x.permute(0, 2, 1, 3).reshape(n, h, c * w)
        y = torch.bmm(wy, xt).view(n, out_h * c, w)
        y = torch.bmm(y, wxt).view(n, out_h, c, out_w)
    else:
        # width first: (N,C*H,W) @ (N,W,T) -> (N,C,H,T) -> (N,H,C*T); (N,S,H) @ that
        y = torch.bmm(x.reshape(n, c * h, w), wxt).view(n, c, h, out_w)
        y = y.permute(0, 2, 1, 3).reshape(n, h, c * out_w)
        y = torch.bmm(wy, y).view(n, out_h, c, out_w)
    return y.permute(0, 2, 1, 3).contiguous()


def resize(x: Tensor, size: int | Sequence[int], *, antialias: bool = True) -> Tensor:
    """Resize whole images to exactly ``size`` (``s`` -> ``(s, s)``) with bilinear + antialias.

    Shapes: ``(N, C, H, W) -> (N, C, out_h, out_w)``. Unlike torchvision's ``Resize(int)`` an int
    means a square output, not "match the shorter edge".
    """
    _check_image(x)
    out_h, out_w = _pair(size)
    n, _, h, w = x.shape
    if (out_h, out_w) == (h, w):
        return x
    boxes = torch.tensor([0.0, 0.0, float(h), float(w)], device=x.device).expand(n, 4)
    return resized_crop(x, boxes, (out_h, out_w), antialias=antialias)


def sync_free(x: Tensor) -> bool:
    """Whether per-sample choices must avoid data-dependent shapes for ``x``'s device.

    On an accelerator, picking rows with ``nonzero`` makes the host wait for the device (the
    number of rows is needed to size the result), once per random choice: the augmentation
    then costs round trips, not arithmetic. There every random choice is masked arithmetic
    over the whole batch (``torch.where`` / neutral factors), which queues without waiting. On
    the CPU the row selection is cheaper (each op touches only its rows) and is kept.
    """
    return x.device.type != "cpu"


def hflip(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mirror images left-right; with ``mask`` (bool ``(N,)``) only the selected ones.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``; works for any dtype.
    """
    _check_image(x)
    if mask is None:
        return x.flip(-1)
    if sync_free(x):
        return torch.where(mask.to(x.device).reshape(-1, 1, 1, 1), x.flip(-1), x)
    idx = mask.to(x.device).nonzero().squeeze(1)
    out = x.clone()
    if idx.numel() > 0:
        out.index_copy_(0, idx, x.index_select(0, idx).flip(-1))
    return out


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------


def _weight(v: float | Tensor, x: Tensor) -> Tensor | float:
    return _per_sample(v, x)


# The colour ops below are written as chains of in-place ops on one freshly allocated buffer:
# on CPU, every large temporary costs page faults, which dominate these memory-bound kernels.
# The ``_..._`` variants modify their argument in place; ``ColorJitter`` uses them on buffers it
# owns, the public functions clone first and never modify their input.


def _brightness_(x: Tensor, factor: float | Tensor) -> Tensor:
    return x.mul_(_weight(factor, x)).clamp_(0.0, 1.0)


def _gray_mean(x: Tensor) -> Tensor:
    """Per-sample mean of the greyscale image, ``(N, 1, 1, 1)`` (mean is linear: no gray image)."""
    ch = x.mean(dim=(2, 3))  # (N, C)
    if x.shape[1] == 3:
        w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device)
        m = ch @ w
    else:
        m = ch.mean(dim=1)
    return m.reshape(-1, 1, 1, 1)


def _contrast_(x: Tensor, factor: float | Tensor) -> Tensor:
    f = _weight(factor, x)
    mean = _gray_mean(x)
    return x.mul_(f).add_(mean * (1.0 - f)).clamp_(0.0, 1.0)


def _saturation_(x: Tensor, factor: float | Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    f = _weight(factor, x)
    gray = rgb_to_grayscale(x)
    if isinstance(f, Tensor):
        return x.mul_(f).addcmul_(gray, 1.0 - f).clamp_(0.0, 1.0)
    return x.mul_(f).add_(gray, alpha=1.0 - f).clamp_(0.0, 1.0)


def rgb_to_grayscale(x: Tensor, num_output_channels: int = 1) -> Tensor:
    """ITU-R 601-2 luma ``L = 0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights).

    Shapes: ``(N, 3, H, W) -> (N, num_output_channels, H, W)`` (3 outputs are an expanded
    view). Grey input ``(N, 1, H, W)`` is returned as a copy (or repeated to 3 channels).
    """
    _check_image(x)
    if num_output_channels not in (1, 3):
        raise ValueError(f"num_output_channels must be 1 or 3, got {num_output_channels}")
    c = x.shape[1]
    if c == 1:
        return x.clone() if num_output_channels == 1 else x.repeat(1, 3, 1, 1)
    if c != 3:
        raise ValueError(f"expected 1 or 3 channels, got {c}")
    r, g, b = x.unbind(1)
    gray = (r * _GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2])
    gray = gray.unsqueeze(1)
    if num_output_channels == 3:
        gray = gray.expand(-1, 3, -1, -1)
    return gray


def adjust_brightness(x: Tensor, factor: float | Tensor) -> Tensor:
    """``clamp(x * factor, 0, 1)`` with a per-sample factor (``(N,)`` or scalar, >= 0).

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """
    _check_image(x)
    return (x * _weight(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with the mean of its greyscale version (torchvision semantics).

    ``clamp(f * x + (1 - f) * mean(gray(x)), 0, 1)``; for grey input the mean of the image.
    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """
    _check_image(x)
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: Tensor, factor: float | Tensor) -> Tensor:
    """Blend each image with its greyscale version: ``clamp(f * x + (1 - f) * gray(x), 0, 1)``.

    Grey (C=1) input is returned unchanged, as in torchvision.
    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """
    _check_image(x)
    if x.shape[1] == 1:
        return x
    return _saturation_(x.clone(), factor)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """Batched RGB -> HSV, all channels in ``[0, 1]`` (same formulas as torchvision/PIL).

    Shapes: ``(N, 3, H, W) -> (N, 3, H, W)``.
    """
    _check_image(x)
    maxc, delta, h6 = _hue_parts(x)
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    h = torch.remainder(h6 / 6.0, 1.0)
    return torch.stack((h.squeeze(1), s.squeeze(1), maxc.squeeze(1)), dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Batched HSV -> RGB (inverse of :func:`rgb_to_hsv`).

    Uses the closed form ``c_n = v - v * s * clamp(min(k_n, 4 - k_n), 0, 1)`` with
    ``k_n = (n + 6h) mod 6`` for ``n = 5, 3, 1``, which equals torchvision's sector table
    up to float rounding but needs no gather. Shapes: ``(N, 3, H, W) -> (N, 3, H, W)``.
    """
    h, s, v = x.unbind(1)
    return _hue_out(v.unsqueeze(1), (v * s).unsqueeze(1), (h * 6.0).unsqueeze(1), 0.0)


_TINY = 1e-30


def _hue_parts(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``maxc``, ``delta = max - min`` and ``6 * hue`` (in ``[-1, 5)``), each ``(N, 1, H, W)``.

    Branch-free: the PIL/torchvision branches (max is R, else G, else B) are selected with
    arithmetic masks, because boolean ``where`` is slow on CPU.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    delta = torch.minimum(r, g)
    torch.minimum(delta, b, out=delta)
    delta.neg_().add_(maxc)  # max - min
    inv = delta.clamp(min=_TINY).reciprocal_()  # delta == 0 -> numerators are 0 anyway
    is_r = torch.empty_like(maxc)
    torch.eq(r, maxc, out=is_r)
    is_g = torch.empty_like(maxc)
    torch.eq(g, maxc, out=is_g)
    is_g.addcmul_(is_g, is_r, value=-1.0)  # G is max and R is not
    # numerator of 6*h per branch: R: g - b; G: 2d + b - r; B: 4d + r - g
    num = torch.sub(g, b).mul_(is_r)
    tmp = torch.sub(b, r).add_(delta, alpha=2.0)
    num.addcmul_(tmp, is_g)
    torch.sub(r, g, out=tmp).add_(delta, alpha=4.0)
    is_r.add_(is_g).neg_().add_(1.0)  # now: B is max
    num.addcmul_(tmp, is_r)
    h6 = num.mul_(inv)
    return maxc.unsqueeze(1), delta.unsqueeze(1), h6.unsqueeze(1)


def _hue_out(maxc: Tensor, delta: Tensor, h6: Tensor, shift6: float | Tensor) -> Tensor:
    """RGB from max, delta (= v * s) and 6 * hue (+ per-sample shift): ``(N, 3, H, W)``."""
    offs = torch.tensor([5.0, 3.0, 1.0], dtype=maxc.dtype, device=maxc.device).reshape(1, 3, 1, 1)
    if isinstance(shift6, Tensor):
        offs = offs + shift6.reshape(-1, 1, 1, 1)
    else:
        offs = offs + shift6
    k = h6 + offs  # (N,3,H,W), in [-4, 14)
    tmp = torch.mul(k, 1.0 / 6.0)
    k.sub_(tmp.floor_().mul_(6.0))  # k mod 6
    torch.neg(k, out=tmp).add_(4.0)
    torch.minimum(k, tmp, out=k)
    k.clamp_(0.0, 1.0)
    return k.mul_(delta).neg_().add_(maxc).clamp_(0.0, 1.0)


def _hue(x: Tensor, factor: float | Tensor) -> Tensor:
    maxc, delta, h6 = _hue_parts(x)
    f = _weight(factor, x)
    return _hue_out(maxc, delta, h6, f * 6.0)


def adjust_hue(x: Tensor, factor: float | Tensor) -> Tensor:
    """Rotate the hue by ``factor`` (per sample, in ``[-0.5, 0.5]``) in HSV space.

    Grey (C=1) input is returned unchanged, as in torchvision. Uses a fused, branch-free form of
    torchvision's RGB->HSV->RGB round trip (value and ``v * s = max - min`` are kept, only the
    hue moves); matches ``torchvision.transforms.v2.functional.adjust_hue`` to ~1e-6 on float
    input. Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """
    _check_image(x)
    if x.shape[1] == 1:
        return x
    return _hue(x, factor)


def solarize(x: Tensor, threshold: float | Tensor = 0.5) -> Tensor:
    """Invert pixels ``>= threshold``: ``where(x >= t, 1 - x, x)`` (per-sample ``t`` allowed).

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """
    _check_image(x)
    return torch.where(x >= _per_sample(threshold, x), 1.0 - x, x)


# --------------------------------------------------------------------------------------------
# Filtering / normalisation
# --------------------------------------------------------------------------------------------


def gaussian_kernel1d(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels, one per sample.

    Args:
        sigma: ``(N,)`` standard deviations (> 0).
        kernel_size: odd number of taps.

    Returns:
        ``(N, kernel_size)`` float32 kernels centred on tap ``kernel_size // 2``.
    """
    half = (kernel_size - 1) / 2.0
    d = torch.arange(kernel_size, device=sigma.device, dtype=torch.float32) - half
    logits = -0.5 * (d[None, :] / sigma.to(torch.float32)[:, None]) ** 2
    return torch.softmax(logits, dim=1)


def gaussian_blur(x: Tensor, sigma: float | Tensor, kernel_size: int | Sequence[int]) -> Tensor:
    """Gaussian blur with a per-sample sigma, reflect padding, separable filtering.

    Matches ``torchvision.transforms.v2.functional.gaussian_blur(img, kernel_size, [s, s])``
    (same kernel, same reflect padding) up to float rounding; the 2-D kernel is applied as two
    1-D passes, each a weighted sum of shifted slices with per-sample weights.

    Args:
        x: ``(N, C, H, W)`` float images (``H, W > kernel_size // 2``).
        sigma: scalar or ``(N,)`` standard deviation(s) in pixels.
        kernel_size: odd int, or ``(kernel_w, kernel_h)`` in torchvision's order.

    Returns:
        ``(N, C, H, W)`` blurred images.

    Example:
        >>> x = torch.rand(3, 3, 32, 32)
        >>> gaussian_blur(x, torch.tensor([0.5, 1.0, 2.0]), 5).shape
        torch.Size([3, 3, 32, 32])
    """
    _check_image(x)
    if isinstance(kernel_size, int):
        kw = kh = kernel_size
    else:
        kw, kh = (int(k) for k in kernel_size)
    if kw % 2 == 0 or kh % 2 == 0 or kw < 1 or kh < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    n = x.shape[0]
    if not isinstance(sigma, Tensor):
        sigma = torch.full((n,), float(sigma), device=x.device)
    elif sigma.ndim == 0:
        sigma = sigma.expand(n)
    sigma = sigma.to(x.device)
    out = x
    if kw > 1:
        kx = gaussian_kernel1d(sigma, kw).to(x.dtype)
        out = _conv1d_per_sample(out, kx, dim=-1)
    if kh > 1:
        ky = gaussian_kernel1d(sigma, kh).to(x.dtype)
        out = _conv1d_per_sample(out, ky, dim=-2)
    return out


def _conv1d_per_sample(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """Correlate ``x`` along ``dim`` (-1 or -2) with per-sample kernels ``(N, K)``, reflect pad."""
    k = kernel.shape[1]
    p = k // 2
    pad = (p, p, 0, 0) if dim == -1 else (0, 0, p, p)
    xp = F.pad(x, pad, mode="reflect")
    length = x.shape[dim]
    w = kernel.reshape(-1, 1, 1, 1, k)
    out = xp.narrow(dim, 0, length) * w[..., 0]
    for t in range(1, k):
        out.addcmul_(xp.narrow(dim, t, length), w[..., t])
    return out


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Per-channel ``(x - mean) / std``.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``; ``mean``/``std`` have ``C`` entries (a 3-entry
    mean/std applied to grey input is reduced to its average, see ``Normalize``).
    """
    _check_image(x)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    if x.shape[1] == 1 and mean_t.shape[1] != 1:
        mean_t = mean_t.mean(dim=1, keepdim=True)
    if x.shape[1] == 1 and std_t.shape[1] != 1:
        std_t = std_t.mean(dim=1, keepdim=True)
    return (x - mean_t) / std_t
