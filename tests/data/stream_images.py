"""Small generated JPEG folders for the streaming and shard tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(seed: int, size: tuple[int, int] = (60, 45)) -> Image.Image:
    """A smooth RGB picture (width, height = ``size``): a colour field plus a bright square,
    compressible like a photo (noise would not be)."""
    rng = np.random.default_rng(seed)
    w, h = size
    field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
    arr = np.asarray(field.resize((w, h), Image.Resampling.BICUBIC)).copy()
    x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    arr[y : y + h // 3, x : x + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(arr)


def jpeg_folder(
    root: Path, per_class: int, classes: tuple[str, ...] = ("cat", "dog"),
    size: tuple[int, int] = (60, 45),
) -> Path:  # fmt: skip
    """``root/<class>/<i>.jpg``: ``per_class`` JPEGs per class (a flat folder when
    ``classes`` is empty); returns ``root``."""
    seed = 0
    for name in classes or ("",):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            smooth_image(seed, size).save(folder / f"{i:03d}.jpg", quality=92)
            seed += 1
    return root
