"""A step-counted run that ends inside its learning-rate warm-up says so (issue 18, bad input:
"a budget too small to finish warm-up"), instead of silently returning a barely trained
encoder."""

from __future__ import annotations

import warnings

import pytest

from selfsup.config import load_config
from selfsup.train import Trainer
from selfsup.train.trainer import ShortRunWarning


def _cfg(tiny_npz, out, max_steps):
    return load_config("simclr", None, [
        f"data.source={tiny_npz}", f"out_dir={out}", "backbone.name=resnet_tiny",
        "train.batch_size=16", f"train.max_steps={max_steps}", "train.precision=fp32",
        "train.progress=false", "train.tensorboard=false", "train.num_threads=1",
        "train.schedule.warmup_epochs=1",  # 4 steps: 64 images / 16
        "method_args.proj_hidden_dim=16", "method_args.proj_out_dim=8",
    ])  # fmt: skip


def test_a_run_shorter_than_its_warm_up_warns_with_the_cause(tiny_npz, tmp_path):
    with pytest.warns(ShortRunWarning, match=r"ends at step 2, before its learning-rate warm-up"
                      r".*4 steps: train.schedule.warmup_epochs=1"):  # fmt: skip
        Trainer(_cfg(tiny_npz, tmp_path / "short", 2)).fit()


def test_a_run_past_its_warm_up_does_not(tiny_npz, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortRunWarning)
        Trainer(_cfg(tiny_npz, tmp_path / "long", 5)).fit()
