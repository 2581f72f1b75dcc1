"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest

from selfsup.config import load_config
from selfsup.train import Trainer


@pytest.fixture
def simclr_run(tiny_npz, tmp_path):
    """A SimCLR run (1 epoch of a tiny ResNet on ``tiny_npz``, a small projector); its dir."""
    run = tmp_path / "simclr"
    cfg = load_config("simclr", None, [
        f"data.source={tiny_npz}", "eval_data.source=null", f"out_dir={run}",
        "backbone.name=resnet_tiny", "backbone.width=null", "train.batch_size=16",
        "train.epochs=1", "train.precision=fp32", "train.progress=false",
        "train.tensorboard=false", "train.num_threads=1", "train.knn_monitor.every_epochs=0",
        "method_args.proj_hidden_dim=24", "method_args.proj_out_dim=12",
    ])  # fmt: skip
    Trainer(cfg).fit()
    return run
