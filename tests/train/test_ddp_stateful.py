"""Stateful methods under DDP: with 2 ranks (gloo, CPU) and the same global batch, SimCLR,
MoCo v2 (queue), MoCo v3, BYOL (EMA), DINO (centre, multi-crop), Barlow Twins, VICReg and
MAE match 1 rank: the loss of each of 10 steps and every tensor of the final state (encoder,
heads, EMA copies, queue, centre, BatchNorm statistics). A checkpoint written by 2 ranks
resumes on 1 rank and one written by 1 rank on 2, to the same result.

The runs train in float64 (``tests/train_many.py --float64``). In float32 the 2-rank run sums
the same numbers in another order, and 10 SGD steps amplify those last-bit differences: for
SimCLR the losses still agree to 3e-6 but one BatchNorm bias ends 2e-4 apart (while every
weight is within 2e-6 up to step 8), so a float32 comparison can neither hold 1e-5 on the
weights nor tell rounding from a bug. In float64 the same code paths agree to ~1e-15, so the
bound below (1e-9) is six orders of magnitude above rounding and far below any real
mismatch (a wrong statistic, gather, random draw or gradient average moves values by >1e-4).

Four process starts in all (tests/train_many.py runs every method's runs in one process):
1 rank: the 10-step reference and a run stopped at step 5; 2 ranks: the same two; then 2
ranks resume the 1-rank checkpoint and 1 rank the 2-rank one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic import make_pattern_images

from selfsup.train.metrics_log import read_metrics

pytestmark = pytest.mark.slow

STEPS, HALF = 10, 5
TOLERANCE = 1e-9
"""Absolute, or relative to the magnitude for values above 1, on float64 runs."""

COMMON = [
    "eval_data.source=null", "backbone.name=resnet_tiny", "backbone.width=null",
    "train.batch_size=16", f"train.max_steps={STEPS}", "train.epochs=3",
    "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
    "train.log_every_steps=1", "train.num_threads=1", "train.knn_monitor.every_epochs=0",
    "train.checkpoint_every_steps=100", "train.pictures_every_epochs=0",
    "train.optimizer.name=sgd", "train.optimizer.lr=0.05", "augment=simclr_cifar",
    "data.image_size=null", "backbone.stem=null", "normalize=cifar10",  # MoCo v2's is ImageNet's
]  # fmt: skip
PROJ = ["method_args.proj_hidden_dim=32", "method_args.proj_out_dim=16"]
METHODS = {
    "simclr": PROJ,
    "moco_v2": [*PROJ, "method_args.queue_size=32", "method_args.base_momentum=0.99"],
    "moco_v3": [*PROJ, "method_args.pred_hidden_dim=32"],
    "byol": [*PROJ, "method_args.pred_hidden_dim=32"],
    "dino": ["method_args.out_dim=64", "method_args.hidden_dim=32",
             "method_args.bottleneck_dim=16", "method_args.num_local_crops=2",
             "method_args.local_crop_size=8", "method_args.warmup_teacher_temp_epochs=1"],
    "barlow_twins": ["method_args.proj_hidden_dim=32", "method_args.proj_out_dim=32"],
    "vicreg": ["method_args.proj_hidden_dim=32", "method_args.proj_out_dim=32"],
    "mae": ["backbone.name=vit_micro", "backbone.patch_size=4", "augment=null",
            "train.optimizer.name=adamw", "train.optimizer.lr=1e-3"],
}  # fmt: skip


def _launch(runs: list[dict], tmp: Path, ranks: int, name: str) -> None:
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps(runs))
    driver = [str(Path(__file__).parents[1] / "train_many.py"), str(spec), "--float64"]
    command = [sys.executable, *driver]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(ranks), *driver]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every method's runs: ``<method>/{single,ddp}`` (10 steps), ``<method>/{1to2,2to1}``
    (stopped at step 5 by 1 / 2 ranks, resumed by the other)."""
    tmp = tmp_path_factory.mktemp("ddp")
    images, labels = make_pattern_images(64)
    data = tmp / "tiny.npz"
    np.savez(data, images=images, labels=labels)

    def run(method: str, out: str, **kw) -> dict:
        overrides = [f"data.source={data}", f"out_dir={tmp / method / out}", *COMMON]
        return {"method": method, "overrides": [*overrides, *METHODS[method]], **kw}

    for ranks, first, second in ((1, "single", "1to2"), (2, "ddp", "2to1")):
        _launch([r for m in METHODS for r in (run(m, first), run(m, second, stop_at_step=HALF))],
                tmp, ranks, f"first_{ranks}")  # fmt: skip
    _launch([run(m, "1to2", resume=True) for m in METHODS], tmp, 2, "resume_on_2")
    _launch([run(m, "2to1", resume=True) for m in METHODS], tmp, 1, "resume_on_1")
    return tmp


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r and "event" not in r}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a))


def _assert_same_state(reference: Path, other: Path) -> None:
    a = load_file(str(reference / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
    b = load_file(str(other / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert a[key].dtype == torch.float64, key  # the runs really trained in float64
            diff = (a[key] - b[key]).abs().max().item()
            scale = max(1.0, a[key].abs().max().item())
            assert diff <= TOLERANCE * scale, f"{other.name} {key}: {diff:.2e}"
        else:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_match_one_rank(runs, method):
    single, ddp = _losses(runs / method / "single"), _losses(runs / method / "ddp")
    assert sorted(single) == list(range(1, STEPS + 1))
    assert sorted(ddp) == sorted(single)
    for step in single:
        assert _close(single[step], ddp[step]), (step, single[step], ddp[step])
    _assert_same_state(runs / method / "single", runs / method / "ddp")


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("direction", ["1to2", "2to1"])
def test_a_checkpoint_resumes_on_the_other_world_size(runs, method, direction):
    single, resumed = _losses(runs / method / "single"), _losses(runs / method / direction)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # one row per step across the resume
    for step in resumed:
        assert _close(single[step], resumed[step]), (step, single[step], resumed[step])
    _assert_same_state(runs / method / "single", runs / method / direction)
    segments = json.loads((runs / method / direction / "summary.json").read_text())["segments"]
    assert [s["world_size"] for s in segments] == ([1, 2] if direction == "1to2" else [2, 1])
