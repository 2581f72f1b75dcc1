"""Random, batched transforms with explicit, per-sample parameters.

Every transform is a plain Python object with

* ``sample_params(n, generator, device) -> dict[str, Tensor]``: draws the random parameters of
  ``n`` samples from ``generator`` only (never the global RNG); every tensor has leading dim ``n``,
* ``apply(x, params) -> Tensor``: applies them to a batch ``x`` of shape ``(N, C, H, W)``,
* ``__call__(x, generator)``: ``apply(x, sample_params(len(x), generator, x.device))``.

Parameters are stored in a size-independent way where needed (``RandomResizedCrop`` keeps its raw
uniform draws and turns them into pixel boxes in ``apply``), so the same parameters can be
sampled once for a *global* batch and sliced per process with :func:`slice_params`.

``Transform.__call__`` and ``Compose.__call__`` are excluded from ``torch.compile``
(``torch.compiler.disable``): they draw from a ``torch.Generator``, which Dynamo cannot trace,
and pick rows with data-dependent shapes (``nonzero``), so tracing them split a compiled
training step into dozens of graphs that recompiled as the row counts changed. Under
``train.compile=true`` they run eagerly and the network around them is compiled.

Example:
    >>> import torch
    >>> from selfsup.augment import Compose, ToFloat, RandomResizedCrop, RandomHorizontalFlip
    >>> pipe = Compose([ToFloat(), RandomResizedCrop(32), RandomHorizontalFlip()])
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> pipe(x, g).shape
    torch.Size([8, 3, 32, 32])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from selfsup.augment import functional as AF

__all__ = [
    "Transform",
    "ToFloat",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "ColorJitter",
    "RandomGrayscale",
    "GaussianBlur",
    "RandomSolarize",
    "Normalize",
    "Compose",
    "MultiView",
    "slice_params",
]

Params = dict[str, Tensor]


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: Any) -> Tensor:
    """Uniform ``[0, 1)`` float32 draws from ``generator``, returned on ``device``."""
    if generator is None:
        raise TypeError("a torch.Generator is required (the global RNG is never used)")
    out = torch.rand(shape, generator=generator, device=generator.device)
    return out.to(device) if device is not None else out


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return AF._pair(size)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(e) for e in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def _select(x: Tensor, mask: Tensor, fn: Any) -> Tensor:
    """Apply ``fn(rows, idx)`` only to the rows selected by the bool ``mask``; others pass.

    On an accelerator (:func:`~selfsup.augment.functional.sync_free`) ``fn`` runs on every
    row and ``mask`` picks."""
    if AF.sync_free(x):
        idx = torch.arange(x.shape[0], device=x.device)
        return torch.where(mask.to(x.device).reshape(-1, 1, 1, 1), fn(x, idx), x)
    idx = mask.nonzero().squeeze(1)
    k = idx.numel()
    if k == 0:
        return x
    if k == x.shape[0]:
        return fn(x, idx)
    out = x.clone()
    out.index_copy_(0, idx, fn(x.index_select(0, idx), idx))
    return out


def slice_params(params: Any, start: int, length: int) -> Any:
    """Rows ``[start, start + length)`` of a params dict, or of each dict in a list of them.

    Used to sample parameters for a global batch (e.g. all DDP ranks) and keep a local slice.
    """
    if isinstance(params, dict):
        return {k: v[start : start + length] for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [slice_params(p, start, length) for p in params]
    raise TypeError(f"params must be a dict or a list of dicts, got {type(params)}")


class Transform:
    """Base class: deterministic transforms only override :meth:`apply`."""

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> Params:
        """Draw parameters for ``n`` samples (none for a deterministic transform)."""
        return {}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.compiler.disable
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(x, self.sample_params(len(x), generator, x.device))

    def _repr_fields(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_fmt(v)}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"


class ToFloat(Transform):
    """uint8 ``(N, C, H, W)`` -> float32 in ``[0, 1]`` (float input -> float32 unchanged)."""

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return AF.to_float(x)


class Resize(Transform):
    """Deterministic bilinear (antialiased) resize of the whole image to ``size``.

    ``size`` is an int (square output ``(size, size)``) or ``(height, width)``. Note: unlike
    torchvision's ``Resize(int)`` the aspect ratio is not preserved.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return AF.resize(AF.to_float(x), self.size)

    def _repr_fields(self) -> dict[str, Any]:
        return {"size": self.size}


class CenterCrop(Transform):
    """Deterministic centre crop to ``size`` (torchvision's rounding; zero-pads small images)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        th, tw = self.size
        h, w = x.shape[-2:]
        if th > h or tw > w:
            pl, pt = max(tw - w, 0) // 2, max(th - h, 0) // 2
            pr, pb = (max(tw - w, 0) + 1) // 2, (max(th - h, 0) + 1) // 2
            x = torch.nn.functional.pad(x, (pl, pr, pt, pb))
            h, w = x.shape[-2:]
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return x[..., top : top + th, left : left + tw]

    def _repr_fields(self) -> dict[str, Any]:
        return {"size": self.size}


class RandomResizedCrop(Transform):
    """Random area/aspect-ratio crop resized to ``size`` (torchvision's sampling, vectorised).

    For each sample, 10 attempts draw ``area ~ U(scale) * H * W`` and ``log(ratio) ~ U(log
    ratio)``; the first attempt whose rounded ``(h, w)`` fits is used with a uniformly random
    integer position, otherwise the centre crop with the ratio clamped to ``ratio``. The raw
    draws are the params (``area``, ``log_ratio``: ``(n, 10)``; ``pos``: ``(n, 2)``) and
    :meth:`boxes` turns them into integer pixel boxes for a given input size, so params do not
    depend on the image size. The resize is bilinear with antialias (see
    :func:`selfsup.augment.functional.resized_crop`); output is float32 ``(N, C, *size)``.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        antialias: bool = True,
    ) -> None:
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError("scale and ratio must be (min, max)")
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.antialias = antialias

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> Params:
        u = _rand((n, 22), generator, device)
        lo, hi = self.scale
        lr0, lr1 = math.log(self.ratio[0]), math.log(self.ratio[1])
        return {
            "area": lo + (hi - lo) * u[:, :10],
            "log_ratio": lr0 + (lr1 - lr0) * u[:, 10:20],
            "pos": u[:, 20:22],
        }

    def boxes(self, params: Params, height: int, width: int) -> Tensor:
        """Integer crop boxes ``(N, 4)`` as float ``(top, left, h, w)`` for an image size."""
        # float64 where available so rounding matches torchvision's Python-float arithmetic.
        dt = torch.float32 if params["area"].device.type == "mps" else torch.float64
        area = params["area"].to(dt) * float(height * width)
        ar = torch.exp(params["log_ratio"].to(dt))
        w = torch.round(torch.sqrt(area * ar))
        h = torch.round(torch.sqrt(area / ar))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
        found = ok.any(dim=1)
        h = h.gather(1, first).squeeze(1)
        w = w.gather(1, first).squeeze(1)
        # Fallback: centre crop with the aspect ratio clamped into ``ratio``.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw, fh = int(round(height * self.ratio[1])), height
        else:
            fw, fh = width, height
        h = torch.where(found, h, torch.full_like(h, fh))
        w = torch.where(found, w, torch.full_like(w, fw))
        pos = params["pos"].to(dt)
        top = torch.floor(pos[:, 0] * (height - h + 1)).clamp_(max=height - h)
        left = torch.floor(pos[:, 1] * (width - w + 1)).clamp_(max=width - w)
        top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
        left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
        return torch.stack((top, left, h, w), dim=1).to(torch.float32)

    def apply(self, x: Tensor, params: Params) -> Tensor:
        x = AF.to_float(x)
        boxes = self.boxes(params, x.shape[-2], x.shape[-1])
        return AF.resized_crop(x, boxes, self.size, antialias=self.antialias)

    def _repr_fields(self) -> dict[str, Any]:
        return {"size": self.size, "scale": self.scale, "ratio": self.ratio}


class RandomHorizontalFlip(Transform):
    """Mirror each sample with probability ``p``. Params: ``flip`` bool ``(n,)``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> Params:
        return {"flip": _rand((n,), generator, device) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return AF.hflip(x, params["flip"])

    def _repr_fields(self) -> dict[str, Any]:
        return {"p": self.p}


def _jitter_range(
    value: float | Sequence[float] | None, name: str, center: float, bound: tuple[float, float]
) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        lo, hi = center - float(value), center + float(value)
        if name != "hue":
            lo = max(lo, 0.0)
    else:
        lo, hi = (float(v) for v in value)
    if not (bound[0] <= lo <= hi <= bound[1]):
        raise ValueError(f"{name} range {(lo, hi)} must lie within {bound}")
    if lo == hi == center:
        return None
    return lo, hi


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue in a random order per sample.

    Factors are drawn like torchvision: ``U[max(0, 1 - b), 1 + b]`` for brightness, contrast and
    saturation (a pair ``(min, max)`` is also accepted) and ``U[-h, h]`` for hue. The whole
    jitter is applied to each sample with probability ``p`` (``RandomApply`` in torchvision).
    Each sample has its own permutation ``order[i]`` of the four ops (0 brightness, 1 contrast,
    2 saturation, 3 hue); ops with a zero range are skipped. Cost: at every position each op is
    applied only to the samples that have that op at that position, so every op runs once per
    sample in total.

    Params: ``apply`` bool ``(n,)``, ``brightness``, ``contrast``, ``saturation``, ``hue``
    float ``(n,)``, ``order`` long ``(n, 4)``.
    """

    _OPS = ("brightness", "contrast", "saturation", "hue")

    def __init__(
        self,
        brightness: float | Sequence[float] = 0.0,
        contrast: float | Sequence[float] = 0.0,
        saturation: float | Sequence[float] = 0.0,
        hue: float | Sequence[float] = 0.0,
        p: float = 1.0,
    ) -> None:
        inf = float("inf")
        self.brightness = _jitter_range(brightness, "brightness", 1.0, (0.0, inf))
        self.contrast = _jitter_range(contrast, "contrast", 1.0, (0.0, inf))
        self.saturation = _jitter_range(saturation, "saturation", 1.0, (0.0, inf))
        self.hue = _jitter_range(hue, "hue", 0.0, (-0.5, 0.5))
        self.p = float(p)
        # In-place variants (they may modify their argument; hue returns a new tensor).
        self._inplace_fns = (AF._brightness_, AF._contrast_, AF._saturation_, AF._hue)

    def _ranges(self) -> tuple[tuple[float, float] | None, ...]:
        return (self.brightness, self.contrast, self.saturation, self.hue)

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> Params:
        u = _rand((n, 9), generator, device)
        params: Params = {"apply": u[:, 0] < self.p}
        for k, (name, rng) in enumerate(zip(self._OPS, self._ranges(), strict=True)):
            if rng is None:
                neutral = 0.0 if name == "hue" else 1.0
                params[name] = torch.full_like(u[:, 0], neutral)
            else:
                params[name] = rng[0] + (rng[1] - rng[0]) * u[:, 1 + k]
        params["order"] = torch.argsort(u[:, 5:9], dim=1)
        return params

    def apply(self, x: Tensor, params: Params) -> Tensor:
        owned = x.dtype == torch.uint8  # to_float then returns a fresh tensor we may modify
        x = AF.to_float(x)
        enabled = [k for k, rng in enumerate(self._ranges()) if rng is not None]
        if x.shape[1] == 1:  # saturation and hue are no-ops on grey images
            enabled = [k for k in enabled if k < 2]
        if not enabled:
            return x
        out = x if owned else x.clone()
        active = params["apply"].to(x.device)
        order = params["order"].to(x.device)
        factors = [params[name].to(x.device) for name in self._OPS]
        if AF.sync_free(x):
            return self._apply_masked(out, active, order, factors, enabled)
        for pos in range(4):
            for k in enabled:
                idx = (active & (order[:, pos] == k)).nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                sub = out.index_select(0, idx)  # a fresh buffer: in-place ops are safe
                sub = self._inplace_fns[k](sub, factors[k].index_select(0, idx))
                out.index_copy_(0, idx, sub)
        return out

    def _apply_masked(
        self,
        x: Tensor,
        active: Tensor,
        order: Tensor,
        factors: list[Tensor],
        enabled: list[int],
    ) -> Tensor:
        """The same jitter without row selection (accelerators): at every position each op
        runs on the whole batch with its factor where the sample has that op there and the
        op's neutral value (1, or a hue shift of 0) elsewhere; a hue shift is applied only
        where it was drawn (``torch.where``), since an HSV round trip is not exactly the
        identity."""
        for pos in range(4):
            for k in enabled:
                here = active & (order[:, pos] == k)
                if k == 3:
                    shifted = self._inplace_fns[k](x, factors[k])
                    x = torch.where(here.reshape(-1, 1, 1, 1), shifted, x)
                else:
                    neutral = torch.ones_like(factors[k])  # x * 1 (+ 0): exactly x
                    x = self._inplace_fns[k](x, torch.where(here, factors[k], neutral))
        return x

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
            "p": self.p,
        }


class RandomGrayscale(Transform):
    """Convert each sample to greyscale with probability ``p``, keeping ``C`` channels.

    Grey (C=1) input is unchanged. Params: ``apply`` bool ``(n,)``.
    """

    def __init__(self, p: float = 0.1) -> None:
        self.p = float(p)

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> Params:
        return {"apply": _rand((n,), generator, device) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        x = AF.to_float(x)
        if x.shape[1] == 1:
            return x
        gray = AF.rgb_to_grayscale(x, num_output_channels=3)
        m = params["apply"].to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)
        # lerp with a 0/1 weight is exact (and much faster than a boolean ``where`` on CPU)
        return torch.lerp(x, gray, m)

    def _repr_fields(self) -> dict[str, Any]:
        return {"p": self.p}


class GaussianBlur(Transform):
    """Gaussian blur with probability ``p`` and ``sigma ~ U(sigma)`` per sample.

    ``kernel_size`` is an odd int (or ``(kernel_w, kernel_h)``); reflect padding as in
    torchvision. Params: ``apply`` bool ``(n,)``, ``sigma`` float ``(n,)``.
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        sigma: float | tuple[float, float] = (0.1, 2.0),
        p: float = 0.5,
    ) -> None:
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size, kernel_size)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        if any(k % 2 == 0 or k < 1 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if isinstance(sigma, (int, float)):
            sigma = (float(sigma), float(sigma))
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma must satisfy 0 < min <= max, got {sigma}")
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.p = float(p)

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> Params:
        u = _rand((n, 2), generator, device)
        lo, hi = self.sigma
        return {"apply": u[:, 0] < self.p, "sigma": lo + (hi - lo) * u[:, 1]}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        x = AF.to_float(x)
        sigma = params["sigma"].to(x.device)
        return _select(
            x,
            params["apply"].to(x.device),
            lambda xs, idx: AF.gaussian_blur(xs, sigma[idx], self.kernel_size),
        )

    def _repr_fields(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "sigma": self.sigma, "p": self.p}


class RandomSolarize(Transform):
    """Solarize (``x >= threshold -> 1 - x``) each sample with probability ``p``.

    Params: ``apply`` bool ``(n,)``.
    """

    def __init__(self, threshold: float = 0.5, p: float = 0.5) -> None:
        self.threshold = float(threshold)
        self.p = float(p)

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> Params:
        return {"apply": _rand((n,), generator, device) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        x = AF.to_float(x)
        mask = params["apply"].to(x.device).reshape(-1, 1, 1, 1) & (x >= self.threshold)
        return torch.where(mask, 1.0 - x, x)

    def _repr_fields(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "p": self.p}


class Normalize(Transform):
    """Per-channel ``(x - mean) / std``. A 3-entry mean/std on grey input uses their average."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("mean and std must have the same length and std must be > 0")

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return AF.normalize(AF.to_float(x), self.mean, self.std)

    def _repr_fields(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}


class Compose:
    """A sequence of transforms with a list of per-transform params.

    ``__call__(x, generator, global_size=G, offset=o)`` samples params for ``G`` rows and uses
    rows ``[o, o + len(x))``, so that e.g. every DDP rank seeds the same generator, samples the
    global batch and applies its own slice: the union equals augmenting the global batch at once.

    Example:
        >>> pipe = Compose([ToFloat(), RandomHorizontalFlip(0.5)])
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
        >>> pipe(x, g, global_size=8, offset=4).dtype
        torch.float32
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def sample_params(
        self, n: int, generator: torch.Generator | None, device: Any = None
    ) -> list[Params]:
        return [t.sample_params(n, generator, device) for t in self.transforms]

    def apply(self, x: Tensor, params_list: Sequence[Params]) -> Tensor:
        if len(params_list) != len(self.transforms):
            raise ValueError(f"got {len(params_list)} params for {len(self.transforms)} transforms")
        for t, p in zip(self.transforms, params_list, strict=True):
            x = t.apply(x, p)
        return x

    @torch.compiler.disable
    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        global_size: int | None = None,
        offset: int = 0,
    ) -> Tensor:
        n = len(x)
        if global_size is None:
            if offset != 0:
                raise ValueError("offset requires global_size")
            return self.apply(x, self.sample_params(n, generator, x.device))
        if offset < 0 or offset + n > global_size:
            raise ValueError(f"rows [{offset}, {offset + n}) exceed global_size={global_size}")
        params = self.sample_params(global_size, generator, x.device)
        return self.apply(x, slice_params(params, offset, n))

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class MultiView:
    """Several views of the same batch, e.g. SimCLR's two views.

    ``views = MultiView([pipe, pipe])(x, generator)`` returns a list with one tensor per
    pipeline; params are drawn view by view from the same generator (``global_size``/``offset``
    are forwarded to each :class:`Compose`).
    """

    def __init__(self, pipelines: Sequence[Compose]) -> None:
        self.pipelines = list(pipelines)

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        global_size: int | None = None,
        offset: int = 0,
    ) -> list[Tensor]:
        return [p(x, generator, global_size=global_size, offset=offset) for p in self.pipelines]

    def __repr__(self) -> str:
        return f"MultiView({self.pipelines!r})"
