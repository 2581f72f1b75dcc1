"""benchmarks/bench_method_steps.py's FLOP bound: the bare step's FLOPs over the method step's.
SimCLR's step is its encoder on the 2B views plus a small head (bound ~1); BYOL adds the EMA
target's no-grad pass over the same views (one forward of three passes' worth: bound ~3/4)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
bench = pytest.importorskip("bench_method_steps")


def _bench(name: str):  # type: ignore[no-untyped-def]
    args = argparse.Namespace(batch_size=4, width=0.125, precision=None)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (4,), generator=g)
    return bench.build_bench(name, f"{name}_cifar10_cpu", args, torch.device("cpu"), images, labels)


def test_flop_bound_counts_the_teacher_pass_as_method_work():
    simclr, byol = _bench("simclr"), _bench("byol")
    assert simclr.bare_flops > 0 and byol.bare_flops > 0
    simclr_bound = simclr.bare_flops / simclr.method_flops
    byol_bound = byol.bare_flops / byol.method_flops
    assert 0.95 < simclr_bound <= 1.0
    # backward ~ 2 forwards: encoder fwd+bwd = 3 units, target forward = 1 more (+ heads)
    assert 0.65 < byol_bound < 0.78
    # the gradients of the counting step are cleared (the timed steps start clean)
    assert all(p.grad is None for p in byol.method.parameters())
