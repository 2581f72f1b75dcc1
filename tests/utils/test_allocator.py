"""train.cpu_heap_cache: while training on the CPU, freed memory stays in the process, so a
large tensor allocated again reuses pages instead of faulting in fresh ones; outside training
(and with the option off) the C library's defaults hold."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from selfsup.config import load_config
from selfsup.train import Callback, Trainer
from selfsup.utils import allocator
from selfsup.utils.allocator import glibc, heap_cache, heap_cache_active

needs_glibc = pytest.mark.skipif(glibc() is None, reason="the C library is not glibc")


class FakeLibc:
    """Records the allocator calls :func:`heap_cache` makes."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_heap_cache_sets_the_thresholds_once_and_restores_them_when_the_last_block_ends(
    monkeypatch,
):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "glibc", lambda: fake)
    with heap_cache() as on:
        assert on and heap_cache_active()
        assert fake.calls == [
            ("mallopt", allocator.M_MMAP_THRESHOLD, 32 << 20),  # heap blocks up to 32 MiB
            ("mallopt", allocator.M_TRIM_THRESHOLD, -1),  # never trim
        ]
        with heap_cache() as nested:  # nested blocks share the outer one
            assert nested
        assert len(fake.calls) == 2 and heap_cache_active()
    assert not heap_cache_active()
    assert fake.calls[2:] == [
        ("mallopt", allocator.M_MMAP_THRESHOLD, 32 << 20),
        ("mallopt", allocator.M_TRIM_THRESHOLD, 64 << 20),
        ("malloc_trim", 0),  # the free memory goes back to the system
    ]


@needs_glibc
def test_heap_cache_keeps_a_training_steps_memory_in_the_process():
    """A fresh process trains a small conv net for a few steps: with the cache, the steady
    state reuses the heap (few page faults in the median step, where every step without it
    faults its tensors in afresh); the real glibc accepts the settings."""
    out = subprocess.run([sys.executable, "-c", TRAIN_STEPS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["on"] and not r["active_after"]
    assert r["cache"] < r["default"] / 4, r


TRAIN_STEPS = """
import json, resource, torch
from torch import nn
from selfsup.utils.allocator import heap_cache, heap_cache_active

torch.manual_seed(0)
torch.set_num_threads(1)
net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                    nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x = torch.randn(32, 3, 48, 48)

def faults_per_step(steps=6, warmup=2):
    # the median step: one step that still grows the heap (it happens, rarely) is not the
    # steady state this measures
    for _ in range(warmup):
        step()
    counts = []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(counts)[steps // 2]

def step():
    opt.zero_grad()
    net(x).square().mean().backward()
    opt.step()

result = {"default": faults_per_step()}
with heap_cache() as on:
    result["on"] = on
    result["cache"] = faults_per_step()
result["active_after"] = heap_cache_active()
print(json.dumps(result))
"""


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
