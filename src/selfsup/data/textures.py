"""Images the synthetic sources are built from: a named or given image set, or procedural
textures when none is available.

The synthetic video clips (:mod:`selfsup.data.video`) cut their backgrounds and sprites from an
image set, and the RGB-D renderer (:mod:`selfsup.data.synthetic_rgbd`) textures its surfaces with
it. :func:`base_images` loads that set: an explicit spec (dataset name, ``.npz`` or image folder,
as :func:`~selfsup.data.sources.load_source` takes), else CIFAR-10 from the data root, else — so
that ``selfsup train video_colorization`` works on a machine with no data at all — colourful
procedural textures (:func:`procedural_textures`), with a warning.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.nn import functional as F

logger = logging.getLogger("selfsup.data")

__all__ = ["base_images", "procedural_textures"]


def procedural_textures(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` colourful textures (n, size, size, 3) uint8, deterministic by ``seed``.

    Each is a smooth random colour field (bicubic-upsampled 4x4 noise) plus one oriented
    grating of a random colour, frequency and phase, and a little pixel noise: varied enough in
    lightness and colour to tell regions apart, as natural images are.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    field = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    angle = torch.rand(n, generator=g) * math.pi
    freq = 0.2 + 0.8 * torch.rand(n, generator=g)
    phase = torch.rand(n, generator=g) * 2 * math.pi
    proj = xx[None] * torch.cos(angle)[:, None, None] + yy[None] * torch.sin(angle)[:, None, None]
    wave = torch.sin(proj * freq[:, None, None] + phase[:, None, None])  # (n, S, S)
    colour = torch.rand(n, 3, generator=g) - 0.5
    noise = 0.04 * torch.randn(n, 3, size, size, generator=g)
    img = field + 0.35 * wave[:, None] * colour[:, :, None, None] + noise
    out = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def base_images(
    spec: str | None,
    *,
    split: str = "train",
    root: str | None = None,
    cache_dir: str | None = None,
    count: int = 4096,
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """RGB images ``(M, h, w, 3)`` uint8 to build synthetic data from, and their name.

    Args:
        spec: an image source (dataset name, ``.npz`` file or image folder); None means CIFAR-10
            under the data root when it is there, else :func:`procedural_textures`.
        split: split of a named dataset (the held-out synthetic sets use ``test``).
        root, cache_dir: as for :func:`~selfsup.data.sources.load_source`.
        count: number of procedural textures when falling back to them.
        seed: seed of the procedural textures.

    Raises:
        FileNotFoundError / ValueError: an explicit ``spec`` that cannot be loaded.
    """
    from selfsup.data.sources import load_source

    if spec is None:
        try:
            source = load_source("cifar10", split=split, root=root, cache_dir=cache_dir)
        except FileNotFoundError:
            logger.warning(
                "no CIFAR-10 under the data root (set SELFSUP_DATA or data.root, or name an "
                "image set, e.g. data.source=synthetic_video:PATH): using procedural textures"
            )
            return procedural_textures(count, 32, seed + (0 if split == "train" else 7919)), (
                "procedural"
            )
        spec = "cifar10"
    else:
        source = load_source(spec, split=split, root=root, cache_dir=cache_dir)
    if source.layout != "image":
        raise ValueError(f"{spec}: a {source.layout} source cannot give base images")
    images = np.asarray(source.to_rgb().images)
    if len(images) < 2:
        raise ValueError(
            f"{spec}: need at least 2 images to build synthetic data, got {len(images)}"
        )
    return images, spec
