"""train.time_budget_minutes: a schedule that is a function of elapsed / budget time.

A fake clock advances one second per optimizer step (and not at all otherwise), so that the
wall-clock behaviour is exact and fast to test: the run ends when the time is up, the learning
rate warms up and decays over the budget's seconds, a momentum schedule reaches its final value
at the end, the view size follows its schedule, and a resumed run continues the same clock.
"""

from __future__ import annotations

import json
import math

import pytest

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods.momentum import cosine_momentum
from selfsup.train import Trainer
from selfsup.train import trainer as trainer_module
from selfsup.train.trainer import TrainStep


@pytest.fixture
def fake_clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: now[0])
    original = TrainStep.__call__

    def one_second_step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        now[0] += 1.0
        return out

    monkeypatch.setattr(TrainStep, "__call__", one_second_step)
    return now


def _cfg(data, out, *extra):
    return load_config("byol", None, [
        f"data.source={data}", f"out_dir={out}", "backbone.name=resnet_tiny",
        "train.batch_size=16", "train.precision=fp32", "train.progress=false",
        "train.tensorboard=false", "train.log_every_steps=1", "train.num_threads=1",
        "train.knn_monitor.every_epochs=0",
        "train.time_budget_minutes=0.2",  # 12 s = 12 steps of the fake clock
        "train.epochs=1",  # 4 steps per epoch: the budget, not the epochs, ends the run
        "train.schedule.warmup_fraction=0.25", "train.optimizer.base_lr=0.4",
        "train.checkpoint_every_steps=5", "method_args.proj_hidden_dim=16",
        "method_args.proj_out_dim=8", "method_args.pred_hidden_dim=16",
        "method_args.base_momentum=0.9", *extra,
    ])  # fmt: skip


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_the_run_ends_when_the_time_is_up_with_its_schedule_complete(tiny_npz, tmp_path,
                                                                       fake_clock):  # fmt: skip
    result = Trainer(_cfg(tiny_npz, tmp_path / "run")).fit()
    assert result.steps == 12  # 12 one-second steps in a 12-second budget, across 3 epochs
    records = _records(tmp_path / "run")
    lrs = [r["lr"] for r in records]
    peak = 0.4 * 16 / 256
    # warm-up over the first quarter of the time (3 s), then a cosine to zero at 12 s; the lr
    # logged with step k is the one step k ran with, at k - 1 seconds
    assert lrs[2] == pytest.approx(peak)
    for k in range(4, 13):
        t = (k - 1 - 3) / 9
        assert lrs[k - 1] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * t)), abs=1e-9)
    assert lrs[0] < lrs[1] < lrs[2]
    # BYOL's target momentum follows its cosine from 0.9 towards 1 over the 12 steps the budget
    # held, as in a 12-step run: the record of step k shows the update after step k - 1
    for k in (6, 12):
        expected = cosine_momentum(k - 2, 12, 0.9)
        assert records[k - 1]["target_momentum"] == pytest.approx(expected, abs=1e-6)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["elapsed_seconds"] == pytest.approx(12.0)
    assert summary["time_budget_minutes"] == 0.2


def test_a_resumed_run_continues_the_clock_and_the_schedule(tiny_npz, tmp_path, fake_clock):
    straight = Trainer(_cfg(tiny_npz, tmp_path / "a")).fit()
    first = Trainer(_cfg(tiny_npz, tmp_path / "b"), stop_at_step=5).fit()
    assert first.steps == 5
    fake_clock[0] += 500.0  # time passes between the sessions; it does not count
    resumed = Trainer(_cfg(tiny_npz, tmp_path / "b"), resume=True).fit()
    assert resumed.steps == straight.steps == 12
    lrs_a = [r["lr"] for r in _records(tmp_path / "a")]
    lrs_b = [r["lr"] for r in _records(tmp_path / "b")]
    assert lrs_b[-7:] == pytest.approx(lrs_a[-7:])


def test_view_size_follows_its_schedule(tiny_npz, tmp_path, fake_clock):
    run = tmp_path / "v"
    Trainer(_cfg(tiny_npz, run, "train.view_size_schedule=[[0,8],[0.5,16]]")).fit()
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    sizes = [(e["step"], e["view_size"]) for e in events if e.get("event") == "view_size"]
    assert sizes == [(0, 8), (6, 16)]  # half of the 12 s


def test_bad_budgets_are_config_errors():
    for bad in ("0", "-1", "abc"):
        with pytest.raises(ConfigError, match="time_budget_minutes"):
            load_config("simclr", None, [f"train.time_budget_minutes={bad}"])
    with pytest.raises(ConfigError, match="view_size_schedule"):
        load_config("simclr", None, ["train.view_size_schedule=[[0.5,16],[0,8]]"])
