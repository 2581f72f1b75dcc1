"""Run one training config as 1 process and as 2 torchrun (gloo) processes on the same global
batch, for tests that check a method's distributed pieces against the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COMMON = [
    "eval_data.source=null", "backbone.name=resnet_tiny", "backbone.width=null",
    "train.batch_size=16", "train.max_steps=4", "train.epochs=2", "train.precision=fp32",
    "train.progress=false", "train.tensorboard=false", "train.log_every_steps=1",
    "train.num_threads=1", "train.knn_monitor.every_epochs=0", "train.checkpoint_every_steps=4",
]  # fmt: skip
"""Overrides every such run shares: 4 steps of a global batch of 16 on a tiny backbone."""


def train_single_and_ddp(method: str, data: Path, tmp_path: Path, overrides: list[str]) -> None:
    """Train ``method`` into ``tmp_path/single`` (1 process) and ``tmp_path/ddp`` (2 gloo
    processes) with :data:`COMMON` + ``overrides``; fails the test with the stderr tail."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "selfsup", "train", method]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                "2", "-m", "selfsup", "train", method]  # fmt: skip
    for command, run in ((train, "single"), (torchrun, "ddp")):
        proc = subprocess.run(
            [*command, f"out_dir={tmp_path / run}", f"data.source={data}", *COMMON, *overrides],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]


def logged_steps(run_dir: Path) -> list[dict]:
    """The per-step rows of a run's metrics.jsonl (loss and method metrics)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r and "event" not in r]


def loss_curve(run_dir: Path) -> list[float]:
    return [r["loss"] for r in logged_steps(run_dir)]


def assert_same_loss_curve(tmp_path: Path, steps: int = 4) -> None:
    """The 2-process run's per-step losses equal the 1-process run's (to float reordering)."""
    import pytest

    single, ddp = loss_curve(tmp_path / "single"), loss_curve(tmp_path / "ddp")
    assert len(single) == steps
    assert ddp == pytest.approx(single, rel=1e-4, abs=1e-5)


def final_states(tmp_path: Path, step: int = 4) -> tuple[dict, dict]:
    """(single, ddp) model state dicts of the step-``step`` checkpoints."""
    from safetensors.torch import load_file

    ckpt = f"checkpoints/step_{step:08d}/model.safetensors"
    return load_file(str(tmp_path / "single" / ckpt)), load_file(str(tmp_path / "ddp" / ckpt))
