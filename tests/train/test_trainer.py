import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from selfsup.config import load_config
from selfsup.errors import TrainingError
from selfsup.pretraining import pretrain
from selfsup.train import Callback, Trainer
from selfsup.utils.io import latest_checkpoint


def tiny_cfg(data_path, out_dir, *extra):
    return load_config(
        "simclr",
        None,
        [
            f"data.source={data_path}",
            f"out_dir={out_dir}",
            "backbone.name=resnet_tiny",
            "train.batch_size=16",
            "train.epochs=2",
            "train.precision=fp32",
            "train.checkpoint_every_steps=2",
            "train.progress=false",
            "train.tensorboard=false",
            "train.log_every_steps=1",
            "train.schedule.warmup_epochs=0.5",
            "method_args.proj_hidden_dim=32",
            "method_args.proj_out_dim=16",
            "train.num_threads=1",
            "train.knn_monitor.every_epochs=0",
            *extra,
        ],
    )


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "step_00000008" / "model.safetensors"))


def test_resume_mid_epoch_reaches_identical_weights(tiny_npz, tmp_path):
    straight = Trainer(tiny_cfg(tiny_npz, tmp_path / "a")).fit()
    assert straight.steps == 8  # 64 images / 16 per batch * 2 epochs

    first = Trainer(tiny_cfg(tiny_npz, tmp_path / "b"), stop_at_step=3).fit()
    assert first.steps == 3
    assert latest_checkpoint(tmp_path / "b").name == "step_00000003"
    resumed = Trainer(tiny_cfg(tiny_npz, tmp_path / "b"), resume=True).fit()
    assert resumed.steps == 8

    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_loss_curve_matches(tiny_npz, tmp_path):
    Trainer(tiny_cfg(tiny_npz, tmp_path / "a")).fit()
    Trainer(tiny_cfg(tiny_npz, tmp_path / "b"), stop_at_step=5).fit()
    Trainer(tiny_cfg(tiny_npz, tmp_path / "b"), resume=True).fit()

    def curve(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}

    assert curve(tmp_path / "a") == curve(tmp_path / "b")


def test_refuses_to_overwrite_a_run_without_resume(tiny_npz, tmp_path):
    Trainer(tiny_cfg(tiny_npz, tmp_path / "a", "train.max_steps=2")).fit()
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(tiny_cfg(tiny_npz, tmp_path / "a", "train.max_steps=2")).fit()


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoint(tiny_npz, tmp_path):
    cfg = tiny_cfg(tiny_npz, tmp_path / "a")
    Trainer(cfg, stop_at_step=2).fit()
    before = _ckpt_bytes(tmp_path / "a")
    bad = tiny_cfg(tiny_npz, tmp_path / "a", "train.optimizer.lr=1e30")
    with pytest.raises(TrainingError, match=r"non-finite training signal at step \d+"):
        Trainer(bad, resume=True).fit()
    assert latest_checkpoint(tmp_path / "a").name == "step_00000002"
    assert _ckpt_bytes(tmp_path / "a") == before


def _ckpt_bytes(run):
    return (latest_checkpoint(run) / "model.safetensors").read_bytes()


def test_batch_larger_than_dataset_is_rejected(tiny_npz, tmp_path):
    with pytest.raises(TrainingError, match="larger than the data set"):
        Trainer(tiny_cfg(tiny_npz, tmp_path / "a", "train.batch_size=128")).fit()


def test_two_process_gloo_run_matches_one_process(tiny_npz, tmp_path):
    """torchrun with 2 CPU processes trains the same model as 1 process on the same global batch
    (sharded data, augmentation drawn for the global batch, gathered negatives, global BN),
    and keeps the same average of the encoder's weights (``train.encoder_ema``)."""
    common = [
        f"data.source={tiny_npz}",
        "backbone.name=resnet_tiny",
        "train.batch_size=16",
        "train.max_steps=4",
        "train.epochs=2",
        "train.precision=fp32",
        "train.progress=false",
        "train.tensorboard=false",
        "train.log_every_steps=1",
        "train.num_threads=1",
        "method_args.proj_hidden_dim=32",
        "method_args.proj_out_dim=16",
        "train.encoder_ema=0.5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "selfsup", "train", "simclr", f"out_dir={single}", *common],
        check=True,
        env=env,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "selfsup",
            "train",
            "simclr",
            f"out_dir={ddp}",
            *common,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    def curve(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r and "event" not in r]

    np.testing.assert_allclose(curve(ddp), curve(single), rtol=1e-4, atol=1e-5)
    for name in ("encoder_online.safetensors", "encoder.safetensors"):  # trained, averaged
        a = load_file(str(single / name))
        b = load_file(str(ddp / name))
        for key in a:
            np.testing.assert_allclose(
                b[key].numpy(), a[key].numpy(), rtol=1e-3, atol=1e-5, err_msg=f"{name}: {key}"
            )


def test_image_folder_run_skips_and_lists_unreadable_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "cat" / "empty.jpg").write_bytes(b"")
    (tmp_path / "imgs" / "dog" / "notes.jpg").write_text("not an image")
    cfg = tiny_cfg(
        tmp_path / "imgs",
        tmp_path / "run",
        "data.image_size=16",
        "train.max_steps=1",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    result = Trainer(cfg).fit()
    assert result.steps == 1
    skipped = json.loads((tmp_path / "run" / "skipped_files.json").read_text())
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in skipped) == ["empty.jpg", "notes.jpg"]
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["skipped_files"] == 2 and start["images"] == 20


def test_torchvision_backbone_trains_and_exports_torchvision_state_dict(tiny_npz, tmp_path):
    import torchvision

    from selfsup.cli import main

    cfg = tiny_cfg(
        tiny_npz, tmp_path / "run", "backbone.name=torchvision:resnet18", "train.max_steps=1"
    )
    Trainer(cfg).fit()
    out = tmp_path / "tv.safetensors"
    assert (
        main(["export", str(tmp_path / "run"), "--out", str(out), "--format", "torchvision"]) == 0
    )
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_file(str(out)), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_knn_monitor_and_grad_clip_are_logged(tiny_npz, tmp_path):
    cfg = tiny_cfg(
        tiny_npz,
        tmp_path / "run",
        f"eval_data.source={tiny_npz}",
        "train.knn_monitor.every_epochs=1",
        "train.knn_monitor.k=5",
        "train.grad_clip=0.5",
    )
    pretrain(cfg)  # the trainer with the OnlineKnn callback
    rows = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if line
    ]
    monitor = [r for r in rows if "online_knn@5" in r]
    assert [r["step"] for r in monitor] == [4, 8]
    assert all(0.0 <= r["online_knn@5"] <= 1.0 for r in monitor)


def test_a_bare_trainer_warns_that_nothing_runs_the_knn_monitor(tiny_npz, tmp_path):
    cfg = tiny_cfg(tiny_npz, tmp_path / "run", "train.knn_monitor.every_epochs=1")
    with pytest.warns(UserWarning, match="no callback runs the kNN monitor"):
        Trainer(cfg)


@pytest.mark.slow
def test_two_process_run_resumes_to_the_single_process_result(tiny_npz, tmp_path):
    """Only rank 0 writes checkpoints; both ranks resume from it and finish as one process."""
    common = [
        f"data.source={tiny_npz}",
        "backbone.name=resnet_tiny",
        "train.batch_size=16",
        "train.epochs=1",
        "train.precision=fp32",
        "train.progress=false",
        "train.tensorboard=false",
        "train.num_threads=1",
        "method_args.proj_hidden_dim=32",
        "method_args.proj_out_dim=16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "selfsup", "train", "simclr", f"out_dir={single}", *common],
        check=True,
        env=env,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "selfsup",
        "train",
        "simclr",
        f"out_dir={ddp}",
        *common,
    ]
    first = subprocess.run(
        [*torchrun, "--stop-at-step", "2"], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert latest_checkpoint(ddp).name == "step_00000002"
    second = subprocess.run([*torchrun, "--resume"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    a = load_file(str(single / "encoder.safetensors"))
    b = load_file(str(ddp / "encoder.safetensors"))
    for key in a:
        np.testing.assert_allclose(
            b[key].numpy(), a[key].numpy(), rtol=1e-3, atol=1e-5, err_msg=key
        )


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_fit_start(self, run) -> None:
        self.events.append(("start", run.step))

    def on_step_end(self, run, out) -> None:
        assert out.applied and out.images == 16 and math.isfinite(float(out.loss))
        assert run.model.training  # the trainer's own callbacks put the model back in train mode
        self.events.append(("step", run.step))

    def on_fit_end(self, run) -> None:
        self.events.append(("end", run.step))


def test_callbacks_see_every_step_once_in_order_across_a_resume(tiny_npz, tmp_path):
    first, second = Recorder(), Recorder()
    cfg = tiny_cfg(tiny_npz, tmp_path / "run", "train.pictures_every_epochs=1")
    Trainer(cfg, stop_at_step=3, callbacks=[first]).fit()
    Trainer(cfg, resume=True, callbacks=[second]).fit()  # 64 images / 16 = 4 steps x 2 epochs
    assert first.events == [("start", 0), ("step", 1), ("step", 2), ("step", 3), ("end", 3)]
    assert second.events == [("start", 3), *[("step", s) for s in range(4, 9)], ("end", 8)]
