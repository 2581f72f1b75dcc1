"""Dimensional collapse is visible: after the warm-up, a warning when the effective rank falls
below 5% of the dimensions the batch could span (train.collapse_min_rank_fraction)."""

from __future__ import annotations

import json

import pytest
import torch

from selfsup.config import TrainConfig
from selfsup.methods import SimCLR
from selfsup.methods.monitor import collapse_metrics
from selfsup.train import Trainer
from selfsup.train.callbacks import CollapseWarning, collapse_reason


def test_collapse_metrics_report_the_largest_possible_rank():
    metrics = collapse_metrics(torch.randn(64, 256))
    assert metrics["effective_rank_max"] == 64
    assert 10 < float(metrics["effective_rank"]) <= 64


def test_rank_fraction_rule_only_after_warm_up():
    tcfg = TrainConfig()  # 5% by default
    low = {"embedding_spread": 0.9, "effective_rank": 20.0, "effective_rank_max": 512.0}
    assert collapse_reason(low, tcfg, warmed_up=False) is None
    reason = collapse_reason(low, tcfg, warmed_up=True)
    assert reason is not None and "5% of the 512 dimensions" in reason
    healthy = {**low, "effective_rank": 40.0}
    assert collapse_reason(healthy, tcfg, warmed_up=True) is None
    assert collapse_reason(low, TrainConfig(collapse_min_rank_fraction=0.0)) is None


def test_trainer_warns_about_dimensional_collapse_after_the_warm_up(tiny_npz, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    original = SimCLR.forward

    def forward(self, *args, **kwargs):
        loss, metrics = original(self, *args, **kwargs)
        return loss, {**metrics, "effective_rank": torch.tensor(3.0), "effective_rank_max": 128.0}

    monkeypatch.setattr(SimCLR, "forward", forward)
    from selfsup.config import load_config

    cfg = load_config("simclr", None, [
        f"data.source={tiny_npz}", f"out_dir={tmp_path / 'run'}", "backbone.name=resnet_tiny",
        "train.batch_size=16", "train.max_steps=8", "train.precision=fp32",
        "train.progress=false", "train.tensorboard=false", "train.log_every_steps=1",
        "train.schedule.warmup_epochs=1", "train.num_threads=1",
        "method_args.proj_hidden_dim=16", "method_args.proj_out_dim=8",
    ])  # fmt: skip
    with pytest.warns(CollapseWarning, match="dimensional collapse.*what to try"):
        Trainer(cfg).fit()
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    warned = [e["step"] for e in events if e.get("event") == "collapse_warning"]
    assert warned == [4]  # the first logged step after the 4-step warm-up (64 images / 16)
