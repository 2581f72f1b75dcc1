"""Training and evaluation on a CUDA device: fp16 with GradScaler (and its resume), bf16 with
channels_last, features and kNN on the GPU. Skipped where CUDA is not available (CI)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.cli import main as cli_main
from selfsup.config import load_config
from selfsup.data import load_source
from selfsup.evaluate.features import extract_features
from selfsup.pretraining import pretrain
from selfsup.train import Trainer
from selfsup.utils.io import latest_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cuda_cfg(data_path, out_dir, *extra):
    return load_config(
        "simclr",
        None,
        [
            f"data.source={data_path}",
            f"eval_data.source={data_path}",
            f"out_dir={out_dir}",
            "backbone.name=resnet_tiny",
            "train.device=cuda",
            "train.batch_size=16",
            "train.epochs=2",
            "train.checkpoint_every_steps=2",
            "train.progress=false",
            "train.tensorboard=false",
            "train.log_every_steps=1",
            "train.schedule.warmup_epochs=0.5",
            "method_args.proj_hidden_dim=32",
            "method_args.proj_out_dim=16",
            *extra,
        ],
    )


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}


def start_event(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("event") == "start")


def test_fp16_gradscaler_run_and_resume(tiny_npz, tmp_path):
    straight = Trainer(cuda_cfg(tiny_npz, tmp_path / "a", "train.precision=fp16")).fit()
    assert straight.steps == 8 and math.isfinite(straight.final_loss)
    assert start_event(tmp_path / "a")["precision"] == "torch.float16"
    state = torch.load(
        latest_checkpoint(tmp_path / "a") / "train_state.pt", weights_only=True, map_location="cpu"
    )
    assert state["scaler"]["scale"] > 0  # the GradScaler was on and its state is saved

    Trainer(cuda_cfg(tiny_npz, tmp_path / "b", "train.precision=fp16"), stop_at_step=3).fit()
    resumed = Trainer(cuda_cfg(tiny_npz, tmp_path / "b", "train.precision=fp16"), resume=True).fit()
    assert resumed.steps == 8 and math.isfinite(resumed.final_loss)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(b) == sorted(a) == list(range(1, 9))
    # cuDNN kernels are not bitwise deterministic: the curves agree closely, not exactly
    np.testing.assert_allclose([b[s] for s in a], list(a.values()), rtol=0.05)


def test_bf16_channels_last_run_then_eval_on_cuda(tiny_npz, tmp_path):
    run = tmp_path / "run"
    cfg = cuda_cfg(
        tiny_npz,
        run,
        "train.precision=bf16",
        "train.channels_last=true",
        "train.max_steps=4",
        "train.knn_monitor.every_epochs=1",
        "train.pictures_every_epochs=1",
    )
    result = pretrain(cfg)
    assert result.steps == 4 and math.isfinite(result.final_loss)
    start = start_event(run)
    assert start["device"] == "cuda:0" and start["precision"] == "torch.bfloat16"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("online_knn@200" in r for r in rows)  # the online monitor ran on the GPU
    out = tmp_path / "eval.json"
    args = ["--data", str(tiny_npz), "--device", "cuda", "--epochs", "3", "--json", str(out)]
    assert cli_main(["eval", "all", str(run), *args]) == 0  # kNN and the linear probe
    row = json.loads(out.read_text())[0]
    assert 0.0 <= row["knn@200"] <= 1.0 and row["train_images"] == 64
    assert 0.0 <= row["linear_top1"] <= 1.0


def test_features_on_cuda_match_cpu(tiny_npz):
    torch.manual_seed(0)
    encoder = build_backbone("resnet_tiny", in_channels=3)
    source = load_source(str(tiny_npz))
    kw = dict(image_size=16, normalize="cifar10", in_channels=3, batch_size=24)
    cpu = extract_features(encoder, source, device="cpu", precision="fp32", **kw)
    for precision, floor in (("fp32", 0.999), ("bf16", 0.99), ("fp16", 0.99)):
        gpu = extract_features(encoder, source, device="cuda", precision=precision, **kw)
        assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(gpu, cpu, dim=1)
        assert cos.min() > floor, (precision, cos.min())
        encoder.cpu()
