"""``selfsup eval all``: every axis for a tiny checkpoint, one JSON per encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.evaluate.protocols import load_eval_data
from selfsup.evaluate.suite import AXES, evaluate_all


def test_unknown_axis_is_a_clear_error(tiny_npz):
    with pytest.raises(ValueError, match="unknown evaluation axes"):
        evaluate_all("random:resnet_tiny", load_eval_data(str(tiny_npz)), axes=("knn", "vibes"))


@pytest.mark.slow
def test_eval_all_every_axis_on_a_tiny_run_plus_random_baseline(simclr_run, tiny_npz, tmp_path,
                                                                capsys):  # fmt: skip
    out = tmp_path / "eval"
    argv = [
        "eval", "all", str(simclr_run), "--data", str(tiny_npz), "--axes", "every",
        "--baselines", "random", "--out", str(out), "--k", "5", "--epochs", "3",
        "--ft-epochs", "1", "--ft-batch-size", "16", "--label-fractions", "0.25",
        "--label-seeds", "0", "--ood-data", str(tiny_npz),
    ]  # fmt: skip
    assert main(argv) == 0
    files = sorted(p.name for p in out.glob("*.json"))
    assert files == ["random_simclr.json", "simclr.json"]
    assert (out / "pictures" / "simclr" / "tsne.png").exists()
    row = json.loads((out / "simclr.json").read_text())
    assert set(row["axes"]) == set(AXES) and set(row["seconds"]) == set(AXES)
    assert 0 <= row["knn@5"] <= 1 and 0 <= row["linear_top1"] <= 1
    assert {"nmi", "ari", "cluster_accuracy"} <= set(row["clustering"])
    assert {"uniform_noise", "blobs", "constant", "corrupted", str(tiny_npz)} <= set(row["ood"])
    # the in-distribution data named as OOD is indistinguishable: AUROC near 0.5
    assert 0.3 < row["ood"][str(tiny_npz)]["auroc"] < 0.7
    assert 0 <= row["pretext"]["positive_retrieval_top1"] <= 1
    assert row["cost"]["parameters"] > 0 and row["cost"]["forward_flops_per_image"] > 0
    assert row["cost"]["train_images_per_second"] > 0 and row["cost"]["train_peak_rss_mib"] > 0
    assert len(row["finetune"]["curve"]) == 1 and row["partial"]["freeze_stages"] > 0
    assert row["low_label"]["fractions"]["0.25"]["images"] == 16
    assert {"linear", "finetuned"} <= set(row["robustness"])
    assert {"tsne", "retrieval", "confusion"} <= set(row["pictures"])
    assert all(Path(p).stat().st_size > 1000 for p in row["pictures"].values())
    baseline = json.loads((out / "random_simclr.json").read_text())
    assert baseline["method"] == "random" and "pretext" not in baseline
    printed = capsys.readouterr().out
    assert "NMI" in printed and "mCA" in printed


def test_pictures_axis_needs_an_output_directory(tiny_npz, capsys):
    argv = ["eval", "all", "random:resnet_tiny", "--data", str(tiny_npz), "--axes", "pictures"]
    assert main(argv) != 0
    assert "--out" in capsys.readouterr().err
