"""Batched, per-sample-random image augmentation on any device.

Images enter as uint8 ``(N, C, H, W)`` tensors (C = 3 or 1) on the training device; every
transform augments the whole batch with per-sample parameters drawn from an explicit
``torch.Generator`` (never the global RNG), using tensor ops only.

Example (a plain PyTorch loop):
    >>> import torch
    >>> from selfsup.augment import build_pipeline
    >>> pipe = build_pipeline("simclr_cifar", size=32)
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    >>> view1, view2 = pipe(images, g), pipe(images, g)
    >>> view1.dtype, tuple(view1.shape)
    (torch.float32, (8, 3, 32, 32))

Submodules: :mod:`~selfsup.augment.functional` (pure batched ops),
:mod:`~selfsup.augment.transforms` (random transforms, ``Compose``),
:mod:`~selfsup.augment.presets` (named pipelines).
"""

from selfsup.augment import functional
from selfsup.augment.presets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    blur_kernel_size,
    build_pipeline,
    crop_flip_pipeline,
    list_pipelines,
    recrop_pipeline,
    register_pipeline,
)
from selfsup.augment.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    MultiView,
    Normalize,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomSolarize,
    Resize,
    ToFloat,
    Transform,
    slice_params,
)

__all__ = [
    "functional",
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
    "build_pipeline",
    "crop_flip_pipeline",
    "recrop_pipeline",
    "list_pipelines",
    "register_pipeline",
    "blur_kernel_size",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]
