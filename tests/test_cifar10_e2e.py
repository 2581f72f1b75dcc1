"""End to end on real CIFAR-10 (when ../shared/datasets or $SELFSUP_DATA provides it)."""

import json
import os
from pathlib import Path

import pytest

from selfsup.cli import main

ROOT = os.environ.get("SELFSUP_DATA", str(Path(__file__).parents[2] / "shared" / "datasets"))
HAVE_CIFAR = (Path(ROOT) / "cifar10" / "train.npz").exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CIFAR, reason="CIFAR-10 npz not found under $SELFSUP_DATA")
def test_simclr_on_cifar10_subset_beats_random_encoder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SELFSUP_DATA", ROOT)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "simclr",
                "--config",
                "simclr_cifar10_cpu",
                f"out_dir={run}",
                "data.subset=4096",
                "backbone.name=resnet_tiny",
                "backbone.width=null",
                "train.epochs=4",
                "train.batch_size=256",
                "train.progress=false",
                "train.tensorboard=false",
                "method_args.proj_hidden_dim=256",
            ]
        )
        == 0
    )
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "knn",
                str(run),
                f"random:{run}",
                "--data",
                "cifar10",
                "--train-subset",
                "10000",
                "--test-subset",
                "2000",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    trained, random = json.loads(out.read_text())
    assert trained["knn@200"] > random["knn@200"] + 0.02, (trained, random)
