"""``selfsup speedrun``: a time-budgeted run that ends in a valid run directory and a
``speedrun.json``; the accuracy targets live in benchmarks/speedrun.py, not here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main
from selfsup.speedrun import SPEEDRUN_BUDGETS, speedrun_recipe

SMALL = ["backbone.name=resnet_tiny", "train.batch_size=16", "train.progress=false",
         "train.tensorboard=false", "method_args.proj_hidden_dim=32",
         "method_args.proj_out_dim=16", "train.num_threads=1"]  # fmt: skip
KEYS = {"knn_top1", "knn20_top1", "train_seconds", "eval_seconds", "images_seen", "method",
        "backbone", "recipe", "seed", "precision", "compile", "threads", "cpu_replicas", "cpu",
        "torch"}  # fmt: skip


@pytest.mark.parametrize(
    "minutes, recipe",
    [(1, "speedrun_5min"), (5, "speedrun_5min"), (14.9, "speedrun_5min"),
     (15, "speedrun_15min"), (29, "speedrun_15min"), (30, "speedrun_30min"),
     (240, "speedrun_30min")],
)  # fmt: skip
def test_the_recipe_tuned_for_the_budget_is_picked(minutes, recipe):
    assert speedrun_recipe(minutes) == recipe
    assert SPEEDRUN_BUDGETS == (5, 15, 30)


def test_a_short_speedrun_writes_a_valid_run_directory(tiny_npz, tmp_path, capsys):
    out = tmp_path / "sr"
    assert main(["speedrun", "--minutes", "0.15", "--out", str(out), "--data", str(tiny_npz),
                 "--linear", *SMALL]) == 0  # fmt: skip
    record = json.loads((out / "speedrun.json").read_text())
    assert KEYS | {"linear_top1"} <= set(record)
    assert 0 <= record["knn_top1"] <= 1 and 0 <= record["linear_top1"] <= 1
    assert record["recipe"] == "speedrun_5min" and record["method"] == "simclr"
    # trained for the budget (set-up included), then stopped
    assert 9 <= record["train_seconds"] <= 60 and record["images_seen"] > 0
    assert record["cpu"]["model"] and isinstance(record["cpu"]["native_bf16"], bool)
    assert record["compile"].startswith("auto: off")  # 9 s would not repay compiling
    assert "held out of the bank" in record["evaluation"]  # a file: no test split to query
    for name in ("encoder.safetensors", "encoder.json", "metrics.jsonl", "summary.json",
                 "config.yaml"):  # fmt: skip
        assert (out / name).exists(), name
    assert "speedrun (speedrun_5min" in capsys.readouterr().out
    # a normal run directory: the evaluation commands take it
    assert main(["eval", "knn", str(out), "--data", str(tiny_npz), "--test-data",
                 str(tiny_npz)]) == 0  # fmt: skip


def test_with_an_encoder_average_the_trained_weights_are_judged_too(tiny_npz, tmp_path):
    out = tmp_path / "sr"
    assert main(["speedrun", "--minutes", "0.05", "--out", str(out), "--data", str(tiny_npz),
                 *SMALL, "train.encoder_ema=0.9"]) == 0  # fmt: skip
    record = json.loads((out / "speedrun.json").read_text())
    for key in ("knn_top1", "knn20_top1", "online_knn_top1", "online_knn20_top1"):
        assert 0 <= record[key] <= 1, key
    assert "online_linear_top1" not in record  # no --linear
    assert (out / "encoder_online.safetensors").exists()
    # the trained weights are an encoder the evaluation commands take
    assert main(["eval", "knn", str(out / "encoder_online.safetensors"), "--data",
                 str(tiny_npz), "--test-data", str(tiny_npz)]) == 0  # fmt: skip


def test_unlabeled_folder_reports_effective_rank_and_pretext_metrics(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "sr"
    assert main(["speedrun", "--minutes", "0.1", "--out", str(out), "--data", str(folder),
                 *SMALL, "data.image_size=16"]) == 0  # fmt: skip
    record = json.loads((out / "speedrun.json").read_text())
    assert "knn_top1" not in record
    assert 1 <= record["effective_rank"] <= record["feature_dim"]
    assert "positive_retrieval_top1" in record["pretext"]


@pytest.mark.parametrize("minutes", ["0", "-3", "nan"])
def test_a_bad_budget_is_a_clear_error(tmp_path, capsys, minutes):
    assert main(["speedrun", "--minutes", minutes, "--out", str(tmp_path / "x")]) == 2
    assert "--minutes must be a positive number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_data_is_a_clear_error(tmp_path, capsys):
    code = main(["speedrun", "--minutes", "1", "--out", str(tmp_path / "x"), "--data",
                 str(tmp_path / "nowhere")])  # fmt: skip
    assert code == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
