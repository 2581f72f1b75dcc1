"""Named view pipelines (SimCLR, supervised, eval) behind a small registry.

Example:
    >>> import torch
    >>> from selfsup.augment import build_pipeline, CIFAR10_MEAN, CIFAR10_STD
    >>> pipe = build_pipeline("simclr_cifar", 32, CIFAR10_MEAN, CIFAR10_STD)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    >>> v1, v2 = pipe(x, g), pipe(x, g)   # two independently augmented views
    >>> v1.shape
    torch.Size([16, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from selfsup.augment.transforms import (
    ColorJitter,
    Compose,
    GaussianBlur,
    Normalize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomSolarize,
    Resize,
    ToFloat,
    Transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "build_pipeline",
    "list_pipelines",
    "register_pipeline",
    "blur_kernel_size",
    "crop_flip_pipeline",
    "recrop_pipeline",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

PipelineFactory = Callable[[int, Sequence[float], Sequence[float]], Compose]

_REGISTRY: dict[str, PipelineFactory] = {}
_DEFAULT_STATS: dict[str, tuple[Sequence[float], Sequence[float]]] = {}


def register_pipeline(
    name: str,
    default_mean: Sequence[float] = IMAGENET_MEAN,
    default_std: Sequence[float] = IMAGENET_STD,
) -> Callable[[PipelineFactory], PipelineFactory]:
    """Decorator registering ``factory(size, mean, std) -> Compose`` under ``name``."""

    def deco(factory: PipelineFactory) -> PipelineFactory:
        if name in _REGISTRY:
            raise ValueError(f"pipeline {name!r} is already registered")
        _REGISTRY[name] = factory
        _DEFAULT_STATS[name] = (tuple(default_mean), tuple(default_std))
        return factory

    return deco


def list_pipelines() -> list[str]:
    """Names accepted by :func:`build_pipeline`, sorted."""
    return sorted(_REGISTRY)


def build_pipeline(
    name: str,
    size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Compose:
    """Build the named view pipeline for square outputs of ``size`` pixels.

    Input: uint8 (or float in [0, 1]) ``(N, C, H, W)``; output: float32 ``(N, C, size, size)``,
    normalised with ``mean``/``std`` (default: CIFAR-10 statistics for ``*_cifar`` presets,
    ImageNet statistics otherwise).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown pipeline {name!r}; available: {list_pipelines()}")
    d_mean, d_std = _DEFAULT_STATS[name]
    return _REGISTRY[name](
        int(size),
        tuple(mean) if mean is not None else d_mean,
        tuple(std) if std is not None else d_std,
    )


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel size ~10% of the image size (SimCLR), at least 3 (224 -> 23)."""
    k = int(0.1 * size)
    return max(3, k // 2 * 2 + 1)


def _simclr_ops(size: int) -> list[Transform]:
    return [
        ToFloat(),
        RandomResizedCrop(size, scale=(0.08, 1.0)),
        RandomHorizontalFlip(0.5),
        ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        RandomGrayscale(0.2),
    ]


@register_pipeline("simclr_cifar", CIFAR10_MEAN, CIFAR10_STD)
def _simclr_cifar(size: int, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """SimCLR CIFAR view: crop 0.08-1, flip, jitter 0.4/0.4/0.4/0.1 (p=.8), grey (p=.2)."""
    return Compose([*_simclr_ops(size), Normalize(mean, std)])


@register_pipeline("simclr_imagenet", IMAGENET_MEAN, IMAGENET_STD)
def _simclr_imagenet(size: int, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """SimCLR ImageNet view: the CIFAR view plus Gaussian blur (k~10% size, sigma .1-2, p=.5)."""
    return Compose(
        [
            *_simclr_ops(size),
            GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0), p=0.5),
            Normalize(mean, std),
        ]
    )


@register_pipeline("supervised_cifar", CIFAR10_MEAN, CIFAR10_STD)
def _supervised_cifar(size: int, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """Supervised CIFAR training view: RandomResizedCrop(scale=(0.35, 1)) + flip + normalise.

    Chosen over the classic pad-4-and-crop because it works for any output ``size`` and any
    input size; its crops cover a similar range of translations and mild zooms.
    """
    return crop_flip_pipeline(size, (0.35, 1.0), mean, std)


def crop_flip_pipeline(
    size: int,
    scale: tuple[float, float],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Compose:
    """The light view of pretexts that need no invariances: ToFloat, RandomResizedCrop with
    area ``scale`` to ``size``, horizontal flip, then normalise with ``mean``/``std`` (left in
    [0, 1] when they are None). (N, C, H, W) uint8 -> (N, C, size, size) float."""
    ops: list[Transform] = [
        ToFloat(),
        RandomResizedCrop(size, scale=scale),
        RandomHorizontalFlip(0.5),
    ]
    if mean is not None and std is not None:
        ops.append(Normalize(mean, std))
    return Compose(ops)


@register_pipeline("eval", IMAGENET_MEAN, IMAGENET_STD)
def _eval(size: int, mean: Sequence[float], std: Sequence[float]) -> Compose:
    """Evaluation view: ToFloat, Resize to ``(size, size)`` (no-op if already), normalise."""
    return Compose([ToFloat(), Resize(size), Normalize(mean, std)])


def recrop_pipeline(
    base: Compose,
    size: int,
    scale: tuple[float, float] | None = None,
    *,
    blur_p: float | None = None,
    solarize_p: float = 0.0,
) -> Compose:
    """``base`` with its random crop (or resize) replaced by one to ``size`` at ``scale`` (None
    keeps the crop's own area range), its blur kernel sized for ``size`` (probability ``blur_p``
    when given) and, when ``solarize_p > 0``, a :class:`RandomSolarize` inserted before the
    normalisation. Used for multi-crop views and for progressive resizing; the random draws
    do not depend on ``size``, so a resized pipeline crops the same boxes."""
    ops = []
    for t in base.transforms:
        if isinstance(t, RandomResizedCrop):
            t = RandomResizedCrop(
                size, scale=t.scale if scale is None else scale, ratio=t.ratio,
                antialias=t.antialias,
            )  # fmt: skip
        elif isinstance(t, Resize):
            t = Resize(size)
        elif isinstance(t, GaussianBlur):
            p = t.p if blur_p is None else blur_p
            t = GaussianBlur(blur_kernel_size(size), sigma=t.sigma, p=p)
        ops.append(t)
    if solarize_p > 0:
        where = next((i for i, t in enumerate(ops) if isinstance(t, Normalize)), len(ops))
        ops.insert(where, RandomSolarize(0.5, p=solarize_p))
    return Compose(ops)
