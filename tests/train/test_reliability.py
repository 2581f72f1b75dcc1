"""Reliability: kills, signals, half-written checkpoints, non-finite steps, collapse warnings."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import without_timing

from selfsup.config import load_config
from selfsup.errors import TrainingError
from selfsup.methods import SimCLR
from selfsup.methods.base import embedding_spread
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics
from selfsup.train.trainer import CollapseWarning
from selfsup.utils.io import latest_checkpoint

COMMON = [
    "backbone.name=resnet_tiny",
    "train.batch_size=16",
    "train.epochs=3",
    "train.precision=fp32",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every_steps=1",
    "train.num_threads=1",
    "train.checkpoint_every_steps=1",
    "train.keep_last=2",
    "method_args.proj_hidden_dim=32",
    "method_args.proj_out_dim=16",
]


def cfg_for(data, out_dir, *extra):
    return load_config(
        "simclr", None, [f"data.source={data}", f"out_dir={out_dir}", *COMMON, *extra]
    )


def cli(data, out_dir, *extra):
    return [
        sys.executable,
        "-m",
        "selfsup",
        "train",
        "simclr",
        f"data.source={data}",
        f"out_dir={out_dir}",
        *COMMON,
        *extra,
    ]


def last_step(run_dir):
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows if "loss" in r]
    return steps[-1] if steps else 0


def wait_for_step(proc, run_dir, target, timeout=120):
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if last_step(run_dir) >= target:
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_identical_weights(tiny_npz, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(cli(tiny_npz, straight), check=True, env=env, capture_output=True)
    total = 12  # 64 images / 16 * 3 epochs

    run = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(4):
        target = min(total - 1, last_step(run) + rng.randint(1, 4))
        proc = subprocess.Popen(
            cli(
                tiny_npz,
                run,
            )
            + ["--resume"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_step(proc, run, target)
        time.sleep(rng.uniform(0, 0.15))  # land anywhere: mid-step or mid-checkpoint-write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    finished = subprocess.run(
        cli(tiny_npz, run) + ["--resume"], env=env, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    a = load_file(str(straight / "encoder.safetensors"))
    b = load_file(str(run / "encoder.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # one row per step: nothing repeated after the kills
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(straight))
    segments = json.loads((run / "summary.json").read_text())["segments"]
    assert sum(s["steps"] for s in segments) == total and len(segments) >= 2


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_with_a_message(tiny_npz, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli(tiny_npz, run, "train.checkpoint_every_steps=100"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(proc, run, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted by SIGTERM after step" in err and "--resume" in err
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and int(ckpt.name.split("_")[1]) >= 3
    assert (
        subprocess.run(cli(tiny_npz, run) + ["--resume"], env=env, capture_output=True).returncode
        == 0
    )
    assert json.loads((run / "summary.json").read_text())["steps"] == 12


def test_partial_checkpoints_are_ignored(tiny_npz, tmp_path):
    run = tmp_path / "run"
    Trainer(cfg_for(tiny_npz, run), stop_at_step=2).fit()
    root = run / "checkpoints"
    # a write killed before the rename: a partial directory with a truncated file
    (root / ".step_00000003.partial").mkdir()
    (root / ".step_00000003.partial" / "model.safetensors").write_bytes(b"\x00" * 10)
    # a complete-looking directory without meta.json, and a pointer to it
    (root / "step_00000004").mkdir()
    (root / "latest").write_text("step_00000004")
    assert latest_checkpoint(run).name == "step_00000002"
    result = Trainer(cfg_for(tiny_npz, run), resume=True).fit()
    assert result.steps == 12


def test_resume_with_another_architecture_names_the_difference(tiny_npz, tmp_path):
    run = tmp_path / "run"
    Trainer(cfg_for(tiny_npz, run), stop_at_step=1).fit()
    with pytest.raises(
        ValueError, match="checkpoint backbone is 'resnet_tiny' but this run has 'resnet18'"
    ):
        Trainer(cfg_for(tiny_npz, run, "backbone.name=resnet18"), resume=True).fit()


def _poison(monkeypatch, at_call, kind):
    """Poison the forward of the ``at_call``-th training step (1-based; or of each in a set),
    not counting the forwards with which ``train.compile=auto`` times an eager step at set-up."""
    poisoned = at_call if isinstance(at_call, set) else {at_call}
    original, timing = SimCLR.forward, Trainer._time_eager_step
    calls = {"n": 0, "timing": False}

    def time_eager_step(self, *args, **kwargs):
        calls["timing"] = True
        try:
            return timing(self, *args, **kwargs)
        finally:
            calls["timing"] = False

    def forward(self, *args, **kwargs):
        loss, metrics = original(self, *args, **kwargs)
        if calls["timing"]:
            return loss, metrics
        calls["n"] += 1
        if calls["n"] in poisoned:
            if kind == "loss":
                loss = loss * float("nan")
            else:  # finite loss, NaN gradient
                p = next(self.parameters())
                loss = loss + 0.0 * torch.sqrt(p.sum() - p.sum().detach())
        return loss, metrics

    monkeypatch.setattr(Trainer, "_time_eager_step", time_eager_step)
    monkeypatch.setattr(SimCLR, "forward", forward)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_step_stops_naming_the_step(tiny_npz, tmp_path, monkeypatch, kind):
    run = tmp_path / "run"
    _poison(monkeypatch, 4, kind)
    with pytest.raises(TrainingError, match="non-finite training signal at step 3"):
        Trainer(cfg_for(tiny_npz, run)).fit()
    assert latest_checkpoint(run).name == "step_00000003"
    weights = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_non_finite_step_can_be_skipped_and_counted(tiny_npz, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _poison(monkeypatch, 4, "loss")
    result = Trainer(cfg_for(tiny_npz, run, "train.on_nonfinite=skip")).fit()
    assert result.steps == 12
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_steps"] == 1
    # peak memory of the process (a CPU run: resident set only) is recorded with the cost
    assert summary["peak_rss_mib"] > 50 and "peak_gpu_mib" not in summary
    events = [r for r in read_metrics(run) if r.get("event") == "skipped_step"]
    assert [e["step"] for e in events] == [3]
    weights = load_file(str(run / "encoder.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_collapse_warning(tiny_npz, tmp_path, monkeypatch):
    assert embedding_spread(torch.ones(64, 16) + 1e-6 * torch.randn(64, 16)) < 0.01
    assert 0.8 < embedding_spread(torch.randn(512, 16)) < 1.2
    original = SimCLR.forward

    def forward(self, *args, **kwargs):
        loss, metrics = original(self, *args, **kwargs)
        return loss, {**metrics, "embedding_spread": torch.tensor(0.001)}

    monkeypatch.setattr(SimCLR, "forward", forward)
    with pytest.warns(CollapseWarning, match="collapsing"):
        Trainer(cfg_for(tiny_npz, tmp_path / "run", "train.max_steps=2")).fit()


def test_collapse_reason_checks_spread_and_effective_rank_when_reported():
    from selfsup.config import TrainConfig
    from selfsup.train.trainer import collapse_reason

    tcfg = TrainConfig(collapse_threshold=0.05, collapse_min_effective_rank=1.5)
    assert collapse_reason({}, tcfg) is None
    assert collapse_reason({"embedding_spread": 0.9, "effective_rank": 30.0}, tcfg) is None
    assert "spread" in collapse_reason({"embedding_spread": torch.tensor(0.01)}, tcfg)
    assert "effective rank 1.100" in collapse_reason({"effective_rank": 1.1}, tcfg)


def test_dimensional_collapse_warns_from_effective_rank(tiny_npz, tmp_path, monkeypatch):
    original = SimCLR.forward

    def forward(self, *args, **kwargs):
        loss, metrics = original(self, *args, **kwargs)
        return loss, {**metrics, "embedding_spread": 0.9, "effective_rank": torch.tensor(1.01)}

    monkeypatch.setattr(SimCLR, "forward", forward)
    with pytest.warns(CollapseWarning, match="effective rank"):
        Trainer(cfg_for(tiny_npz, tmp_path / "run", "train.max_steps=2")).fit()
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any(e.get("event") == "collapse_warning" for e in events)


def test_same_seed_same_weights_and_environment_recorded(tiny_npz, tmp_path):
    for name in ("a", "b"):
        Trainer(cfg_for(tiny_npz, tmp_path / name, "train.max_steps=3")).fit()
    a = load_file(str(tmp_path / "a" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "b" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    env = json.loads((tmp_path / "a" / "environment.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and "selfsup" in env


def test_folder_with_odd_and_huge_images_trains(tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "imgs" / "x"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    Image.fromarray(rgb).convert("L").save(root / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(root / "rgba.png")
    Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16)).save(root / "deep.png")
    Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(root / "big.png")
    good = (root / "grey.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    cfg = load_config(
        "simclr",
        None,
        [
            f"data.source={tmp_path / 'imgs'}",
            "data.image_size=16",
            "data.max_skipped_fraction=0.2",  # 1 bad file of 7
            f"out_dir={tmp_path / 'run'}",
            *COMMON,
            "train.batch_size=4",
            "train.max_steps=1",
        ],
    )
    Trainer(cfg).fit()
    skipped = json.loads((tmp_path / "run" / "skipped_files.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p, _ in skipped] == ["truncated.png"]
    start = read_metrics(tmp_path / "run")[0]
    assert start["images"] == 6


KILL_MID_WRITE = """
import sys, time
import selfsup.utils.io as ck
from selfsup.cli import main

original = ck._fsync

def slow_fsync(path):
    # stall inside the write of step 3's checkpoint, after some of its files exist
    if ".step_00000003.partial" in str(path) and path.name == "train_state.pt":
        print("WRITING", flush=True)
        time.sleep(60)
    original(path)

ck._fsync = slow_fsync
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tiny_npz, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    args = cli(tiny_npz, run)[3:]  # drop "python -m selfsup"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_MID_WRITE, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout.readline().strip() == "WRITING"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / ".step_00000003.partial" / "model.safetensors").exists()
    assert latest_checkpoint(run).name == "step_00000002"
    finished = subprocess.run(
        cli(tiny_npz, run) + ["--resume"], env=env, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resuming" in finished.stdout and "from step 2" in finished.stdout
    assert not (run / "checkpoints" / ".step_00000003.partial").exists()


def _poison_calls(monkeypatch, calls_to_poison):
    """A NaN loss at each of these training steps' forwards (1-based)."""
    _poison(monkeypatch, calls_to_poison, "loss")


def test_skip_tolerates_scattered_non_finite_steps(tiny_npz, tmp_path, monkeypatch):
    """train.max_skipped_steps counts non-finite steps in a row: three scattered ones pass
    with a limit of 1, and every one is counted."""
    run = tmp_path / "run"
    _poison_calls(monkeypatch, {3, 6, 9})
    Trainer(cfg_for(tiny_npz, run, "train.on_nonfinite=skip", "train.max_skipped_steps=1")).fit()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["skipped_steps"] == 3


def test_skip_stops_after_too_many_non_finite_steps_in_a_row(tiny_npz, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _poison_calls(monkeypatch, {5, 6, 7})  # steps 4, 5, 6 (0-based) in a row
    with pytest.raises(
        TrainingError,
        match=r"at step 6 .* 3 in a row, more than "
        r"train.max_skipped_steps=2",
    ):
        Trainer(cfg_for(tiny_npz, run, "train.on_nonfinite=skip",
                        "train.max_skipped_steps=2")).fit()  # fmt: skip
    assert latest_checkpoint(run).name == "step_00000006"  # steps 5 and 6 were skipped ones
    weights = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    events = [r["step"] for r in read_metrics(run) if r.get("event") == "skipped_step"]
    assert events == [4, 5]  # the third stopped the run
