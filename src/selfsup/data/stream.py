"""Stream full-resolution image folders: decode in DataLoader workers, crop at decode time.

:class:`FolderStream` is an image folder that is never decoded as a whole: it knows its files
(and their class labels) and how one file becomes a training row (a :class:`DecodeSpec`: a
random resized crop taken while decoding, see :mod:`selfsup.data.decode`).
:class:`FolderStreamLoader` yields the same :class:`~selfsup.data.Batch` objects as the
in-memory :class:`~selfsup.data.BatchLoader` — uint8 ``(n, C, S, S)`` batches that the method
augments on the device — with the same order contract:

- epoch ``e`` visits the samples in ``torch.randperm(N, generator=seed * 1_000_003 + e)``;
  global batch ``b`` is ``perm[b*G:(b+1)*G]`` and rank ``r`` takes its rows
  ``[r*B:(r+1)*B]`` (``G = B * world_size``, the last partial batch dropped);
- the crop of a sample depends on ``(seed, epoch, sample index)`` only,

so a run resumed at ``(epoch, step)`` continues exactly, whatever the number of workers. Each
DataLoader worker decodes whole batches (one task per batch).

Bad files are only found when read: a file that fails to decode is replaced in its batch by
another image of the same batch (with the failed sample's crop draw), listed in the source's
``skipped`` list with the reason, and warned about once; a batch in which no file decodes is an
error naming the files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from selfsup.data.decode import DecodeSpec, decode_crop, describe_failure
from selfsup.data.loader import Batch
from selfsup.data.sources import _as_index_array

logger = logging.getLogger("selfsup.data")

DEFAULT_WORKERS = 2
"""DataLoader worker processes of a streaming loader (``data.workers``)."""


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample's decode-time crop in one epoch."""
    return np.random.default_rng((seed, epoch, index))


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The visiting order of an epoch, int64 ``(N,)``: exactly
    :meth:`selfsup.data.BatchLoader.epoch_permutation`."""
    if not shuffle:
        return torch.arange(num_samples)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=gen)


# --------------------------------------------------------------------------------------
# Decoding a batch (runs in the DataLoader workers)
# --------------------------------------------------------------------------------------


@dataclass
class DecodedBatch:
    """What a worker hands back: the batch and the files that failed in it."""

    batch: Batch
    skipped: list[tuple[str, str]] = field(default_factory=list)


def decode_batch(
    items: Sequence[tuple[Any, str]],
    indices: np.ndarray,
    labels: np.ndarray | None,
    spec: DecodeSpec,
    rngs: Callable[[int], np.random.Generator],
) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None, list[tuple[str, str]]]:
    """Decode ``items`` (``(path or bytes, name for messages)``) into a uint8 ``(n, C, S, S)``
    tensor (in shared memory inside a DataLoader worker, so that handing it to the main
    process copies nothing). ``rngs(k)`` is the crop generator of row ``k``.

    A row whose file fails is re-decoded from another good row of the batch (with row ``k``'s
    crop draw); its index and label become that row's. Returns (images, indices, labels,
    skipped ``(name, reason)``). Raises ``ValueError`` when no file of the batch decodes.
    """
    n, size, channels = len(items), spec.size, spec.channels
    rows = np.empty((n, size, size, channels), dtype=np.uint8)
    failed: list[int] = []
    skipped: list[tuple[str, str]] = []
    for k, (data, name) in enumerate(items):
        try:
            rows[k] = decode_crop(data, spec, rngs(k))
        except Exception as e:  # any failure = unreadable file
            failed.append(k)
            skipped.append((name, describe_failure(e)))
    indices = np.array(indices, dtype=np.int64, copy=True)
    labels = None if labels is None else np.array(labels, dtype=np.int64, copy=True)
    if failed:
        good = [k for k in range(n) if k not in set(failed)]
        if not good:
            shown = "; ".join(f"{p} ({r})" for p, r in skipped[:5])
            raise ValueError(f"no file of a batch of {n} could be decoded: {shown}")
        for j, k in enumerate(failed):
            donor = good[j % len(good)]
            rows[k] = decode_crop(items[donor][0], spec, rngs(k))
            indices[k] = indices[donor]
            if labels is not None:
                labels[k] = labels[donor]
    images = torch.empty((n, channels, size, size), dtype=torch.uint8)
    if get_worker_info() is not None:
        images.share_memory_()
    images.numpy()[...] = rows.transpose(0, 3, 1, 2)
    return images, indices, labels, skipped


def _keep(item: Any) -> Any:
    """DataLoader collate function that leaves a worker's result as it is."""
    return item


# --------------------------------------------------------------------------------------
# The streamed folder
# --------------------------------------------------------------------------------------


@dataclass
class FolderStream:
    """An image folder read file by file while training (``data.mode=stream``).

    Attributes:
        root: the folder.
        files: image paths relative to ``root`` (sorted; class sub-folders first).
        labels: int64 ``(N,)`` class of each file (sub-folder index), or None (flat folder).
        classes: class names (sub-folder names), or None.
        name: human-readable name.
        decode: how a file becomes a row (output size, channels, decode-time crop).
        skipped: ``(path, reason)`` of files found unusable so far (non-images at scan time,
            undecodable files as training reads them).
    """

    root: Path
    files: list[str]
    labels: np.ndarray | None
    classes: list[str] | None
    name: str
    decode: DecodeSpec
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if len(self.labels) != len(self.files):
                raise ValueError(f"{len(self.labels)} labels for {len(self.files)} files")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_size(self) -> int:
        """Side length ``S`` of the decoded rows."""
        return self.decode.size

    @property
    def num_channels(self) -> int:
        return self.decode.channels

    @property
    def num_classes(self) -> int | None:
        """Number of classes (sub-folders), or None for an unlabeled folder."""
        if self.labels is None:
            return None
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def path(self, index: int) -> str:
        return str(self.root / self.files[index])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> FolderStream:
        """The files ``indices`` (in that order) as a new stream."""
        idx = _as_index_array(indices)
        return replace(
            self,
            files=[self.files[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            skipped=list(self.skipped),
        )

    def as_tensor_chw(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor | None = None
    ) -> torch.Tensor:
        """The centre crops of the files ``indices`` (all if None), uint8 ``(n, C, S, S)``
        (for pictures of a few images; unreadable files raise)."""
        idx = np.arange(len(self)) if indices is None else _as_index_array(indices)
        spec = self.decode
        out = np.stack([decode_crop(self.path(int(i)), spec) for i in idx]) if len(idx) else (
            np.empty((0, spec.size, spec.size, spec.channels), dtype=np.uint8)
        )  # fmt: skip
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


class StreamingLoader:
    """What the streaming loaders share: sizes, the DataLoader around a per-epoch dataset,
    the transfer to the device and the bookkeeping of bad files.

    Subclasses define ``num_samples`` and ``_epoch_dataset(epoch, start_step)``, a torch
    dataset whose items are :class:`DecodedBatch` es in step order.
    """

    def __init__(
        self,
        source: Any,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        workers: int = DEFAULT_WORKERS,
        prefetch: int = 2,
        pin_memory: bool | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if workers < 0 or prefetch < 1:
            raise ValueError(f"need workers >= 0 and prefetch >= 1, got {workers}, {prefetch}")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.workers = workers
        self.prefetch = prefetch
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.epoch = 0
        self._warned: set[str] = set()

    def _check_size(self) -> None:
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.source.name}: {self.num_samples} samples are fewer than the global batch "
                f"{self.global_batch_size} (batch_size={self.batch_size} x world_size="
                f"{self.world_size}): no batch per epoch"
            )

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    @property
    def global_batch_size(self) -> int:
        """``G = batch_size * world_size``."""
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """``N // G`` (the last partial global batch is dropped)."""
        return self.num_samples // self.global_batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _epoch_dataset(self, epoch: int, start_step: int) -> Dataset | IterableDataset:
        raise NotImplementedError

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` from global batch ``start_step`` on, decoded
        by ``workers`` DataLoader processes (0 = in this process)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} out of range [0, {self.steps_per_epoch}]")
        dataset = self._epoch_dataset(epoch, start_step)
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.workers,
            prefetch_factor=self.prefetch if self.workers else None,
            collate_fn=_keep,
        )
        return self._batches(loader, epoch, start_step)

    def _batches(self, loader: DataLoader, epoch: int, start_step: int) -> Iterator[Batch]:
        expected = start_step
        for decoded in loader:
            batch = decoded.batch
            if (batch.epoch, batch.step_in_epoch) != (epoch, expected):
                raise RuntimeError(
                    f"streaming loader out of order: got epoch {batch.epoch} step "
                    f"{batch.step_in_epoch}, expected epoch {epoch} step {expected}"
                )
            expected += 1
            self._note_skipped(decoded.skipped)
            yield self._to_device(batch)
        if expected != self.steps_per_epoch:
            raise RuntimeError(
                f"streaming loader ended epoch {epoch} after step {expected - 1}, expected "
                f"{self.steps_per_epoch} steps"
            )

    def _note_skipped(self, skipped: list[tuple[str, str]]) -> None:
        for name, reason in skipped:
            if name in self._warned:
                continue
            self._warned.add(name)
            self.source.skipped.append((name, reason))
            logger.warning("%s: skipped unreadable file %s (%s)", self.source.name, name, reason)

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        images, labels = batch.images, batch.labels
        if self.pin_memory:
            images = images.pin_memory()
            labels = None if labels is None else labels.pin_memory()
        batch.images = images.to(self.device, non_blocking=self.pin_memory)
        if labels is not None:
            batch.labels = labels.to(self.device, non_blocking=self.pin_memory)
        return batch

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by ``iter(loader)``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(self.epoch)


class _FolderEpoch(Dataset):
    """Item ``i``: the ``(start_step + i)``-th batch of one epoch, decoded (in a worker)."""

    def __init__(
        self, loader: FolderStreamLoader, epoch: int, start_step: int, perm: torch.Tensor
    ) -> None:
        self.source: FolderStream = loader.source
        self.seed, self.epoch, self.start_step = loader.seed, epoch, start_step
        self.steps = loader.steps_per_epoch - start_step
        g, b, r = loader.global_batch_size, loader.batch_size, loader.rank
        self.global_size, self.offset = g, r * b
        order = perm.numpy()
        self.rows = [
            order[s * g + r * b : s * g + (r + 1) * b]
            for s in range(start_step, loader.steps_per_epoch)
        ]

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> DecodedBatch:
        planned = self.rows[i]
        source = self.source
        items = [(source.path(int(k)), source.path(int(k))) for k in planned]
        labels = None if source.labels is None else source.labels[planned]
        images, idx, labels, skipped = decode_batch(
            items, planned, labels, source.decode,
            lambda k: sample_rng(self.seed, self.epoch, int(planned[k])),
        )  # fmt: skip
        batch = Batch(
            images=images,
            labels=None if labels is None else torch.from_numpy(labels),
            indices=torch.from_numpy(idx),
            epoch=self.epoch,
            step_in_epoch=self.start_step + i,
            global_size=self.global_size,
            offset=self.offset,
        )
        return DecodedBatch(batch, skipped)


class FolderStreamLoader(StreamingLoader):
    """Batches of a :class:`FolderStream`, decoded by DataLoader workers; the order contract of
    :class:`~selfsup.data.BatchLoader` (module docstring), ``drop_last`` always on.

    Args:
        source: the streamed folder.
        batch_size: per-process batch ``B``; the global batch is ``G = B * world_size``.
        seed: order and crop seed.
        rank, world_size: this process's place in the data-parallel group.
        device: where batches go.
        workers: DataLoader worker processes decoding batches (0 = in this process).
        prefetch: batches each worker prepares ahead.
    """

    def __init__(self, source: FolderStream, batch_size: int, **kwargs: Any) -> None:
        super().__init__(source, batch_size, **kwargs)
        self._check_size()

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        return epoch_order(self.num_samples, self.seed, epoch)

    def indices_for_step(self, epoch: int, step: int) -> np.ndarray:
        """Dataset indices this rank gets at ``(epoch, step)`` (before bad-file substitution)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} out of range [0, {self.steps_per_epoch})")
        g, b = self.global_batch_size, self.batch_size
        start = step * g + self.rank * b
        return self.epoch_permutation(epoch).numpy()[start : start + b]

    def _epoch_dataset(self, epoch: int, start_step: int) -> Dataset:
        return _FolderEpoch(self, epoch, start_step, self.epoch_permutation(epoch))
