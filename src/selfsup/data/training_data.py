"""The training data of a run: cached in memory or streamed, and the loader that fits it.

``data.mode`` chooses how a source is read:

- ``cache``: decoded once to ``data.image_size`` into a memory-mapped uint8 array
  (:func:`~selfsup.data.load_source`), batches gathered by :class:`~selfsup.data.BatchLoader`;
- ``stream``: image files (a folder) or WebDataset shards read while training, each image
  decoded with a random resized crop to ``data.image_size`` in DataLoader workers
  (:mod:`selfsup.data.stream`, :mod:`selfsup.data.shards`);
- ``auto`` (default): shards stream; a folder streams when its decoded cache
  (``files x S x S x C`` bytes) would exceed ``data.cache_budget_gb``; everything else is
  cached.

Both kinds of source expose ``len``, ``image_size``, ``num_channels``, ``labels`` / classes,
``name``, ``skipped`` and ``as_tensor_chw``; both loaders yield the same uint8
:class:`~selfsup.data.Batch` es with ``iterate(epoch, start_step)``, so the trainer only picks
the loader.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.decode import DecodeSpec
from selfsup.data.loader import BatchLoader
from selfsup.data.shards import (
    DEFAULT_SHUFFLE_BUFFER,
    ShardLoader,
    ShardStream,
    is_shard_spec,
    open_shards,
)
from selfsup.data.sources import (
    DEFAULT_FOLDER_IMAGE_SIZE,
    ImageSource,
    _scan_folder,
    list_datasets,
    load_source,
)
from selfsup.data.stream import DEFAULT_WORKERS, FolderStream, FolderStreamLoader

logger = logging.getLogger("selfsup.data")

DEFAULT_CACHE_BUDGET_GB = 8.0
"""Largest decoded cache ``data.mode=auto`` builds before streaming a folder instead (GiB)."""

TrainingSource = ImageSource | FolderStream | ShardStream
TrainingLoader = BatchLoader | FolderStreamLoader | ShardLoader
MODES = ("auto", "cache", "stream")


def num_classes_of(source: TrainingSource) -> int | None:
    """Number of classes of a labeled source, None for an unlabeled one."""
    if isinstance(source, ImageSource):
        return None if source.labels is None else int(source.labels.max()) + 1
    return source.num_classes


def open_training_source(
    spec: str,
    *,
    mode: str = "auto",
    split: str = "train",
    root: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
    download: bool = False,
    grayscale: bool = False,
    cache_budget_gb: float = DEFAULT_CACHE_BUDGET_GB,
    crop_scale: tuple[float, float] = (0.25, 1.0),
    max_skipped_fraction: float | None = None,
    options: dict | None = None,
) -> TrainingSource:
    """The training images of ``spec`` read the ``mode`` way (module docstring).

    ``max_skipped_fraction``: a cached folder with more unreadable files than this fails
    (:func:`selfsup.data.load_source`); a streamed one finds bad files as it reads them and
    lists them in the run's ``skipped_files.json``.

    ``crop_scale`` is the area range of the decode-time random crop of streamed images.
    Raises ``ValueError`` for a mode the source cannot be read in (a named dataset or an
    ``.npz`` is already an array: it cannot stream; shards cannot be cached).
    """
    if mode not in MODES:
        raise ValueError(f"data.mode must be one of {MODES}, got {mode!r}")
    size = image_size or DEFAULT_FOLDER_IMAGE_SIZE
    decode = DecodeSpec(size, grayscale=grayscale, scale=tuple(crop_scale))  # type: ignore[arg-type]
    name = spec.strip().lower().replace("-", "_")
    if name not in list_datasets() and is_shard_spec(spec):
        if mode == "cache":
            raise ValueError(
                f"data.source={spec!r} names WebDataset shards, which are only streamed: "
                "use data.mode=stream (or auto)"
            )
        return open_shards(spec, decode)
    path = Path(spec).expanduser()
    folder = name not in list_datasets() and path.is_dir()
    if mode == "stream" and not folder:
        raise ValueError(
            f"data.mode=stream reads image folders and WebDataset shards; {spec!r} is "
            "neither (named datasets and .npz files are arrays: use data.mode=cache or auto)"
        )
    if folder and mode != "cache":
        files, labels, classes, ignored = _scan_folder(path)
        need = len(files) * size * size * decode.channels
        if mode == "stream" or need > cache_budget_gb * 2**30:
            if mode == "auto":
                logger.info(
                    "%s: %d files at %dpx need %.1f GiB decoded, over data.cache_budget_gb="
                    "%g: streaming", path, len(files), size, need / 2**30, cache_budget_gb,
                )  # fmt: skip
            if not files:
                raise ValueError(f"no image file in {path} ({len(ignored)} other file(s))")
            return FolderStream(
                root=path,
                files=files,
                labels=None if labels is None else np.asarray(labels, np.int64),
                classes=classes,
                name=path.resolve().name,
                decode=decode,
                skipped=[(str(path / rel), reason) for rel, reason in ignored],
            )
    return load_source(
        spec,
        split=split,
        root=root,
        image_size=image_size,
        cache_dir=cache_dir,
        download=download,
        grayscale=grayscale,
        max_skipped_fraction=max_skipped_fraction,
        options=options,
    )


def make_loader(
    source: TrainingSource,
    batch_size: int,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    workers: int = DEFAULT_WORKERS,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> TrainingLoader:
    """The training loader of ``source`` (``drop_last``): :class:`~selfsup.data.BatchLoader`
    for an in-memory source, a streaming loader with ``workers`` decoding processes for
    folders and shards (``shuffle_buffer`` is the in-lane shuffle window of shards)."""
    common: dict[str, Any] = dict(seed=seed, rank=rank, world_size=world_size, device=device)
    if isinstance(source, ImageSource):
        return BatchLoader(source, batch_size, drop_last=True, **common)
    if isinstance(source, ShardStream):
        return ShardLoader(source, batch_size, workers=workers, shuffle_buffer=shuffle_buffer,
                           **common)  # fmt: skip
    return FolderStreamLoader(source, batch_size, workers=workers, **common)
