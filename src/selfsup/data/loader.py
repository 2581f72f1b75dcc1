"""Deterministic, DDP-aware batch loader over a uint8 image array.

The loader yields raw uint8 images (augmentation happens later, on the device). The order
of an epoch depends only on ``(seed, epoch)``, and the global batch ``b`` of an epoch is
always ``perm[b*G:(b+1)*G]`` with ``G = batch_size * world_size``; rank ``r`` takes rows
``[r*batch_size:(r+1)*batch_size]`` of it. So ``world_size`` processes together see exactly
the batches a single process with batch size ``G`` sees, and a run resumed at
``(epoch, step)`` continues exactly where it stopped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from selfsup.data.sources import ImageSource, _gather_nchw

_END = object()


@dataclass
class Batch:
    """One per-process batch.

    Attributes:
        images: uint8 ``(n, C, H, W)`` on the loader's device.
        labels: int64 ``(n,)`` on the loader's device, or ``None`` for unlabeled sources.
        indices: int64 ``(n,)`` dataset indices, on CPU.
        epoch: epoch number.
        step_in_epoch: index of this (global) batch within the epoch.
        global_size: number of samples in the global batch (``G``, smaller for a kept
            partial last batch).
        offset: position of this rank's rows inside the global batch
            (``rank * batch_size`` for full batches).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    indices: torch.Tensor
    epoch: int
    step_in_epoch: int
    global_size: int
    offset: int

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class BatchLoader:
    """Iterate per-process batches of a uint8 ``(N, H, W, C)`` image array.

    Args:
        source: an :class:`ImageSource`, or a uint8 array ``(N, H, W, C)`` / ``(N, H, W)``.
        batch_size: per-process batch size; the global batch is
            ``G = batch_size * world_size``.
        labels: int labels ``(N,)`` when ``source`` is a plain array (ignored otherwise).
        seed: base seed; epoch ``e`` uses
            ``torch.randperm(N, generator=torch.Generator().manual_seed(seed*1_000_003 + e))``.
        shuffle: if false, every epoch visits ``0..N-1`` in order.
        drop_last: if true, ``steps_per_epoch = N // G`` and the remainder is dropped. If
            false, the last partial global batch (``m < G`` samples) is kept and split as
            evenly as possible across ranks (``np.array_split``: the first ``m % world_size``
            ranks get one extra sample; a rank may get an empty batch if ``m < world_size``,
            so that all ranks run the same number of steps).
        rank, world_size: this process's position in a data-parallel group.
        device: where ``Batch.images`` / ``Batch.labels`` are put.
        prefetch: batches prepared ahead in a background thread (0 = no thread).
        pin_memory: pin host batches before the device copy; default: only when ``device``
            is CUDA and CUDA is available.
    """

    def __init__(
        self,
        source: ImageSource | np.ndarray,
        batch_size: int,
        *,
        labels: np.ndarray | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        prefetch: int = 2,
        pin_memory: bool | None = None,
    ) -> None:
        if isinstance(source, ImageSource):
            images, labels = source.images, source.labels
        else:
            images = np.asarray(source) if not isinstance(source, np.ndarray) else source
            if images.ndim == 3:
                images = images[..., None]
            ImageSource(images=images, labels=labels)  # validates shape / dtype / labels
            if labels is not None:
                labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.prefetch = prefetch
        if pin_memory is None:
            pin_memory = self.device.type == "cuda" and torch.cuda.is_available()
        # Pinning needs a CUDA runtime; silently skip it on CPU-only machines.
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.epoch = 0
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"dataset of {self.num_samples} samples is smaller than the global batch "
                f"{self.global_batch_size} (batch_size={batch_size} x world_size="
                f"{world_size}) with drop_last=True: no batch per epoch"
            )

    # ---------------------------------------------------------------- sizes and order

    @property
    def num_samples(self) -> int:
        """``N``, the number of images in the source."""
        return int(self.images.shape[0])

    @property
    def global_batch_size(self) -> int:
        """``G = batch_size * world_size``."""
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """``N // G`` with ``drop_last``, else ``ceil(N / G)``."""
        n, g = self.num_samples, self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's visiting order: int64 ``(N,)`` on CPU."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=gen)

    def _rank_slice(self, perm: torch.Tensor, step: int) -> tuple[np.ndarray, int, int]:
        """(this rank's dataset indices, global batch size, offset) for global batch ``step``."""
        g = self.global_batch_size
        chunk = perm[step * g : (step + 1) * g].numpy()
        if len(chunk) == g:
            offset = self.rank * self.batch_size
            return chunk[offset : offset + self.batch_size], g, offset
        parts = np.array_split(chunk, self.world_size)  # partial last batch
        offset = sum(len(p) for p in parts[: self.rank])
        return parts[self.rank], len(chunk), offset

    def indices_for_step(self, epoch: int, step: int) -> np.ndarray:
        """Dataset indices (int64 ``(n,)``) this rank gets at ``(epoch, step)``."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} out of range [0, {self.steps_per_epoch})")
        return self._rank_slice(self.epoch_permutation(epoch), step)[0]

    # ---------------------------------------------------------------- batches

    def _host_batch(self, perm: torch.Tensor, epoch: int, step: int) -> Batch:
        """Gather one batch on CPU (pinned if requested)."""
        idx, global_size, offset = self._rank_slice(perm, step)
        images = torch.from_numpy(_gather_nchw(self.images, idx))  # (n, C, H, W), idx order
        if self.pin_memory:
            images = images.pin_memory()
        labels = None
        if self.labels is not None:
            labels = torch.from_numpy(np.ascontiguousarray(self.labels[idx]))
            if self.pin_memory:
                labels = labels.pin_memory()
        return Batch(
            images=images,
            labels=labels,
            indices=torch.from_numpy(idx.copy()),
            epoch=epoch,
            step_in_epoch=step,
            global_size=global_size,
            offset=offset,
        )

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        batch.images = batch.images.to(self.device, non_blocking=self.pin_memory)
        if batch.labels is not None:
            batch.labels = batch.labels.to(self.device, non_blocking=self.pin_memory)
        return batch

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch``, starting at global batch ``start_step``.

        Returns a generator; batches are prepared ``prefetch`` ahead in a daemon thread
        that stops when the generator is exhausted, closed (``.close()``) or garbage
        collected. Errors raised while preparing a batch are re-raised here.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} out of range [0, {self.steps_per_epoch}]")
        perm = self.epoch_permutation(epoch)
        steps = range(start_step, self.steps_per_epoch)
        if self.prefetch == 0:
            return (self._to_device(self._host_batch(perm, epoch, s)) for s in steps)
        return self._prefetching(perm, epoch, steps)

    def _prefetching(self, perm: torch.Tensor, epoch: int, steps: range) -> Iterator[Batch]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for step in steps:
                    if stop.is_set() or not put(self._host_batch(perm, epoch, step)):
                        return
                put(_END)
            except BaseException as e:  # hand every failure to the consumer
                put(_Failure(e))

        thread = threading.Thread(target=produce, name=f"selfsup-prefetch-e{epoch}", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield self._to_device(item)
        finally:
            stop.set()
            while thread.is_alive():  # drain so a blocked put() returns promptly
                try:
                    q.get_nowait()
                except queue.Empty:
                    pass
                thread.join(timeout=0.05)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by ``iter(loader)``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(self.epoch)
