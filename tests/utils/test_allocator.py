"""train.cpu_heap_cache: while training on the CPU, freed memory stays in the process, so a
large tensor allocated again reuses pages instead of faulting in fresh ones; outside training
(and with the option off) the C library's defaults hold."""

from __future__ import annotations

import resource

import pytest
import torch

from selfsup.config import load_config
from selfsup.train import Callback, Trainer
from selfsup.utils.allocator import glibc, heap_cache, heap_cache_active

needs_glibc = pytest.mark.skipif(glibc() is None, reason="the C library is not glibc")

MIB = 1 << 20


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_of_fresh_tensors(repeats: int = 3, mib: int = 48) -> int:
    """Minor page faults of allocating, filling and freeing a ``mib``-MiB tensor ``repeats``
    times, after one untimed round (so a cache, when on, holds the pages)."""
    torch.empty(mib * MIB, dtype=torch.uint8).fill_(1)
    before = _minor_faults()
    for _ in range(repeats):
        torch.empty(mib * MIB, dtype=torch.uint8).fill_(1)
    return _minor_faults() - before


@needs_glibc
def test_heap_cache_reuses_freed_pages_and_restores_the_defaults_on_exit():
    pages = 48 * MIB // resource.getpagesize()
    assert faults_of_fresh_tensors() >= pages  # the default: fresh pages every time
    with heap_cache() as on:
        assert on and heap_cache_active()
        with heap_cache() as nested:  # nested blocks share the outer one
            assert nested
        assert heap_cache_active()
        assert faults_of_fresh_tensors() < pages // 10
    assert not heap_cache_active()
    assert faults_of_fresh_tensors() >= pages  # defaults are back


def test_heap_cache_off_does_nothing():
    with heap_cache(enabled=False) as on:
        assert not on and not heap_cache_active()


def _cfg(data, out_dir, *extra):
    return load_config("simclr", None, [
        f"data.source={data}", f"out_dir={out_dir}", "backbone.name=resnet_tiny",
        "train.batch_size=16", "train.max_steps=2", "train.precision=fp32",
        "train.progress=false", "train.tensorboard=false", "train.num_threads=1",
        "train.knn_monitor.every_epochs=0", "method_args.proj_hidden_dim=16",
        "method_args.proj_out_dim=8", "train.device=cpu", *extra,
    ])  # fmt: skip


class SeeHeapCache(Callback):
    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_step_end(self, run, out) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(heap_cache_active())


@needs_glibc
@pytest.mark.parametrize("option", [True, False])
def test_the_trainer_caches_the_heap_while_training_on_the_cpu(tiny_npz, tmp_path, option):
    peek = SeeHeapCache()
    cfg = _cfg(tiny_npz, tmp_path / "run", f"train.cpu_heap_cache={str(option).lower()}")
    Trainer(cfg, callbacks=[peek]).fit()
    assert peek.seen == [option, option]
    assert not heap_cache_active()  # and off again after fit
