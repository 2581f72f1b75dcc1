"""Tests for selfsup.data.loader.BatchLoader: order, DDP sharding, resume, prefetch thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.data import Batch, BatchLoader, ImageSource


def _source(n: int = 23, size: int = 4, channels: int = 3) -> ImageSource:
    # Pixel value encodes the index so we can check what was gathered.
    images = np.zeros((n, size, size, channels), dtype=np.uint8)
    images[:] = (np.arange(n) % 256)[:, None, None, None]
    return ImageSource(images=images, labels=np.arange(n) % 5, name="toy")


def _epoch_indices(loader: BatchLoader, epoch: int, start_step: int = 0) -> list[list[int]]:
    return [b.indices.tolist() for b in loader.iterate(epoch, start_step)]


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("selfsup-prefetch")]


def test_batches_shapes_dtypes_and_content() -> None:
    src = _source()
    loader = BatchLoader(src, 4, seed=1)
    assert len(loader) == 23 // 4 == loader.steps_per_epoch
    batches = list(loader.iterate(0))
    assert len(batches) == 5
    for step, b in enumerate(batches):
        assert isinstance(b, Batch)
        assert b.images.shape == (4, 3, 4, 4) and b.images.dtype == torch.uint8
        assert b.images.is_contiguous()
        assert b.labels.dtype == torch.int64 and b.labels.shape == (4,)
        assert b.indices.dtype == torch.int64 and b.indices.device.type == "cpu"
        assert (b.epoch, b.step_in_epoch, b.global_size, b.offset) == (0, step, 4, 0)
        assert torch.equal(b.images[:, 0, 0, 0].long(), b.indices)
        assert torch.equal(b.labels, b.indices % 5)


def test_deterministic_per_seed_and_epoch() -> None:
    src = _source()
    a = BatchLoader(src, 4, seed=3)
    b = BatchLoader(src, 4, seed=3)
    assert _epoch_indices(a, 0) == _epoch_indices(b, 0)
    assert _epoch_indices(a, 0) != _epoch_indices(a, 1)
    assert _epoch_indices(a, 0) != _epoch_indices(BatchLoader(src, 4, seed=4), 0)
    gen = torch.Generator().manual_seed(3 * 1_000_003 + 2)
    expected = torch.randperm(23, generator=gen)[:20].view(5, 4).tolist()
    assert _epoch_indices(a, 2) == expected


def test_every_index_once_per_epoch() -> None:
    loader = BatchLoader(_source(24), 4, seed=0)
    flat = [i for batch in _epoch_indices(loader, 5) for i in batch]
    assert sorted(flat) == list(range(24))
    ordered = BatchLoader(_source(24), 4, shuffle=False)
    assert [i for b in _epoch_indices(ordered, 5) for i in b] == list(range(24))


def test_keep_last_partial_batch() -> None:
    loader = BatchLoader(_source(10), 4, drop_last=False, shuffle=False)
    assert len(loader) == 3
    assert _epoch_indices(loader, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    ranks = [
        BatchLoader(_source(11), 2, drop_last=False, shuffle=False, rank=r, world_size=2)
        for r in range(2)
    ]
    last = [list(r.iterate(0))[-1] for r in ranks]
    assert [b.indices.tolist() for b in last] == [[8, 9], [10]]
    assert [(b.global_size, b.offset) for b in last] == [(3, 0), (3, 2)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_reassemble_single_process_batches(world_size: int) -> None:
    src = _source(50)
    bs = 4
    single = BatchLoader(src, bs * world_size, seed=7)
    ranks = [BatchLoader(src, bs, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)
    for epoch in (0, 1):
        per_rank = [list(r.iterate(epoch)) for r in ranks]
        for step, whole in enumerate(single.iterate(epoch)):
            parts = [per_rank[r][step] for r in range(world_size)]
            assert torch.equal(torch.cat([p.indices for p in parts]), whole.indices)
            assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
            assert [p.offset for p in parts] == [r * bs for r in range(world_size)]
            assert all(p.global_size == bs * world_size for p in parts)


def test_resume_mid_epoch_yields_the_tail() -> None:
    loader = BatchLoader(_source(40), 4, seed=2)
    full = list(loader.iterate(3))
    tail = list(loader.iterate(3, start_step=6))
    assert [b.step_in_epoch for b in tail] == list(range(6, 10))
    for a, b in zip(full[6:], tail, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    assert list(loader.iterate(3, start_step=len(loader))) == []
    np.testing.assert_array_equal(loader.indices_for_step(3, 6), full[6].indices.numpy())


def test_no_prefetch_same_batches() -> None:
    src = _source(30)
    a = _epoch_indices(BatchLoader(src, 5, seed=1, prefetch=0), 1)
    b = _epoch_indices(BatchLoader(src, 5, seed=1, prefetch=3), 1)
    assert a == b


def test_plain_array_memmap_and_unlabeled(tmp_path: Path) -> None:
    arr = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(12, 5, 5, 1)
    )
    arr[:] = np.arange(12)[:, None, None, None]
    arr.flush()
    images = np.load(tmp_path / "x.npy", mmap_mode="r")
    loader = BatchLoader(images, 3, seed=0)
    for b in loader.iterate(0):
        assert b.labels is None and b.images.shape == (3, 1, 5, 5)
        assert torch.equal(b.images[:, 0, 0, 0].long(), b.indices)
    labelled = BatchLoader(images, 3, labels=np.arange(12) * 2)
    b = next(iter(labelled))
    assert torch.equal(b.labels, b.indices * 2)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="smaller than the global batch"):
        BatchLoader(_source(5), 4, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(_source(), 2, rank=2, world_size=2)
    with pytest.raises(ValueError):
        BatchLoader(_source(), 0)


def test_prefetch_thread_stops_when_closed_early() -> None:
    before = len(_prefetch_threads())
    loader = BatchLoader(_source(200), 2, prefetch=2)
    it = loader.iterate(0)
    next(it)
    assert len(_prefetch_threads()) == before + 1
    it.close()
    assert len(_prefetch_threads()) == before

    for _ in loader.iterate(1):  # abandoned by ``break``: collected, thread stops
        break
    deadline = time.monotonic() + 5
    while len(_prefetch_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_prefetch_threads()) == before

    list(loader.iterate(2))  # exhausted
    assert len(_prefetch_threads()) == before


class _Exploding(np.ndarray):
    """A 20-image array whose rows >= 4 cannot be read (like a bad disk region)."""

    def __getitem__(self, item):  # type: ignore[no-untyped-def]
        if len(self) == 20 and isinstance(item, np.ndarray) and item.max() >= 4:
            raise OSError("disk on fire")
        return super().__getitem__(item)


def test_producer_exception_surfaces_in_consumer() -> None:
    images = _source(20).images.view(_Exploding)
    before = len(_prefetch_threads())
    loader = BatchLoader(images, 2, shuffle=False, prefetch=2)
    got = []
    with pytest.raises(OSError, match="disk on fire"):
        for b in loader.iterate(0):
            got.append(b)
    assert [b.indices.tolist() for b in got] == [[0, 1], [2, 3]]
    assert len(_prefetch_threads()) == before
