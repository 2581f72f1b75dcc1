"""Exact logs across resumes: after any number of interruptions, metrics.jsonl has exactly the
rows of an uninterrupted run (rows logged after the resumed checkpoint are dropped on resume),
and summary.json's totals span every session, listed in ``segments``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import Crash, CrashAt, tiny_run_config, without_timing

from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics, rewind_metrics


def cfg_for(data, out_dir, *extra):
    return tiny_run_config(data, out_dir, "train.checkpoint_every_steps=2",
                           "train.log_every_steps=1", *extra)  # fmt: skip


def rows_without_timing(run_dir):
    return without_timing(read_metrics(run_dir))


def test_rows_logged_after_the_checkpoint_are_dropped_on_resume(tiny_npz, tmp_path):
    straight = Trainer(cfg_for(tiny_npz, tmp_path / "a")).fit()
    assert straight.steps == 8
    run = tmp_path / "b"
    for crash_at in (5, 7):  # checkpoints every 2 steps: resumed from 4, then from 6
        with pytest.raises(Crash):
            Trainer(cfg_for(tiny_npz, run), resume=True, callbacks=[CrashAt(crash_at)]).fit()
        assert max(r["step"] for r in read_metrics(run) if "loss" in r) == crash_at
    Trainer(cfg_for(tiny_npz, run), resume=True).fit()

    steps = [r["step"] for r in read_metrics(run) if "loss" in r and "event" not in r]
    assert steps == list(range(1, 9))  # exactly one row per logged step
    assert rows_without_timing(run) == rows_without_timing(tmp_path / "a")
    a = load_file(str(tmp_path / "a" / "encoder.safetensors"))
    b = load_file(str(run / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_summary_totals_span_every_session(tiny_npz, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Crash):
        Trainer(cfg_for(tiny_npz, run), resume=True, callbacks=[CrashAt(3)]).fit()
    Trainer(cfg_for(tiny_npz, run), resume=True, stop_at_step=6).fit()
    result = Trainer(cfg_for(tiny_npz, run), resume=True).fit()
    summary = json.loads((run / "summary.json").read_text())
    segments = summary["segments"]
    # the crashed session counts up to its last checkpoint (step 2); steps 3 were redone
    assert [(s["start_step"], s["end_step"], s["steps"]) for s in segments] == [
        (0, 2, 2), (2, 6, 4), (6, 8, 2)]  # fmt: skip
    assert all(s["seconds"] > 0 and s["world_size"] == 1 and s["started"] for s in segments)
    assert summary["seconds"] == pytest.approx(sum(s["seconds"] for s in segments))
    assert summary["images_seen"] == 8 * 16
    assert summary["images_per_second"] == pytest.approx(8 * 16 / summary["seconds"])
    assert result.seconds == pytest.approx(summary["seconds"])
    # resuming a finished run adds no empty session
    Trainer(cfg_for(tiny_npz, run), resume=True).fit()
    assert json.loads((run / "summary.json").read_text())["segments"] == segments


def test_rewinding_a_log_without_a_recorded_size_keeps_rows_up_to_the_step(tmp_path):
    """Checkpoints of older versions carry no size: rows are filtered by step instead."""
    rows = [{"event": "start"}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9},
            {"step": 2, "event": "collapse_warning"}, {"step": 3, "loss": 0.8}]  # fmt: skip
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    rewind_metrics(tmp_path, 2, None)
    assert read_metrics(tmp_path) == rows[:4]
    rewind_metrics(tmp_path, 2, 10**9)  # a file shorter than the recorded size: the same
    assert read_metrics(tmp_path) == rows[:4]
    rewind_metrics(tmp_path, 0, None)  # a fresh start
    assert not path.exists()
