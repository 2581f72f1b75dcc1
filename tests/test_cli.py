"""The command line, end to end, on small data made by the tests or shipped by scikit-learn."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from selfsup.cli import main


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args], capture_output=True, text=True, timeout=900
    )


def test_methods_lists_every_registered_method_in_aligned_columns(capsys):
    from selfsup.methods import list_methods

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {line.split()[0] for line in lines}
    assert names == {m.name for m in list_methods()}
    assert {
        "simclr",
        "mae",
        "rotation",
        "jigsaw",
        "relative_location",
        "colorization",
        "split_brain",
        "inpainting",
        "supervised",
    } <= names
    # the family column starts at the same place on every line
    family_at = {
        line.index(m.family, len(m.name))
        for m in list_methods()
        for line in lines
        if line.split()[0] == m.name
    }
    assert len(family_at) == 1


def test_bad_config_key_exits_2_and_names_the_key():
    proc = run_cli("train", "simclr", "train.batchsize=8")
    assert proc.returncode == 2
    assert "train.batchsize: unknown key; did you mean 'train.batch_size'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path))
    proc = run_cli("train", "simclr", f"out_dir={tmp_path / 'run'}", "data.source=cifar10")
    assert proc.returncode == 1
    assert "not found" in proc.stderr and "download" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_prints_resolved_config(capsys):
    assert main(["config", "simclr", "--config", "simclr_cifar10_cpu", "train.epochs=7"]) == 0
    assert "epochs: 7" in capsys.readouterr().out


def _train_digits(out_dir, *extra):
    return main(
        [
            "train",
            "simclr",
            "--config",
            "simclr_cifar10_cpu",
            f"out_dir={out_dir}",
            "data.source=digits",
            "data.subset=null",
            "eval_data.source=digits",
            "backbone.name=resnet_tiny",
            "train.batch_size=128",
            "train.epochs=4",
            "train.optimizer.base_lr=0.5",
            "train.progress=false",
            "train.tensorboard=false",
            "method_args.proj_hidden_dim=128",
            *extra,
        ]
    )


def _assert_beats_random_on_digits(run, out_json):
    """kNN of the run's encoder vs the same architecture at random init, through the CLI, on
    scikit-learn's digits: both kNN measures beat random by 0.05. Returns the trained row."""
    args = ["eval", "knn", str(run), f"random:{run}", "--data", "digits", "--json", str(out_json)]
    assert main(args) == 0
    trained, random = json.loads(out_json.read_text())
    assert random["method"] == "random"
    assert trained["knn@20"] > random["knn@20"] + 0.05, (trained, random)
    assert trained["knn@200"] > random["knn@200"] + 0.05, (trained, random)
    return trained


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [["train.cpu_replicas=2", "train.num_threads=2"], ["train.encoder_ema=0.99"]],
    ids=["two_cpu_replicas", "encoder_ema"],
)
def test_simclr_with_a_training_option_still_beats_a_random_encoder(tmp_path, extra):
    """Learning test for options that change how the weights are trained or which weights
    the run keeps: the run's encoder beats a random one of the same architecture on kNN."""
    run = tmp_path / "run"
    assert _train_digits(run, *extra) == 0
    _assert_beats_random_on_digits(run, tmp_path / "eval.json")


@pytest.mark.slow
def test_simclr_learns_beats_random_encoder_on_knn_and_exports(tmp_path, capsys):
    """Learning test: a tiny SimCLR run on scikit-learn's digits beats a random encoder of
    the same architecture on kNN, evaluated through the CLI."""
    run = tmp_path / "run"
    assert _train_digits(run) == 0
    assert (run / "encoder.safetensors").exists()
    trained = _assert_beats_random_on_digits(run, tmp_path / "eval.json")
    assert (run / "eval.jsonl").exists()

    # export: safetensors + meta that load back into the same encoder
    export = tmp_path / "export" / "encoder.safetensors"
    assert main(["export", str(run), "--out", str(export)]) == 0
    a, b = load_file(str(run / "encoder.safetensors")), load_file(str(export))
    assert a.keys() == b.keys()
    assert json.loads(export.with_suffix(".json").read_text())["backbone"]["name"] == "resnet_tiny"
    capsys.readouterr()  # only the exported encoder's evaluation below
    assert main(["eval", "knn", str(export), "--data", "digits", "--k", "20"]) == 0
    assert f"{trained['knn@20']:.4f}" in capsys.readouterr().out
    # torchvision format is refused for a native backbone, with the reason
    assert (
        main(
            [
                "export",
                str(run),
                "--out",
                str(tmp_path / "tv.safetensors"),
                "--format",
                "torchvision",
            ]
        )
        == 1
    )


@pytest.mark.slow
def test_supervised_baseline_trains_from_the_cli(tmp_path, capsys):
    run = tmp_path / "sup"
    assert (
        main(
            [
                "train",
                "supervised",
                f"out_dir={run}",
                "data.source=digits",
                "backbone.name=resnet_tiny",
                "train.batch_size=64",
                "train.epochs=6",
                "train.optimizer.base_lr=0.4",
                "train.progress=false",
                "train.tensorboard=false",
            ]
        )
        == 0
    )
    out_json = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "linear",
                str(run),
                f"random:{run}",
                "--data",
                "digits",
                "--epochs",
                "20",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    trained, random = json.loads(out_json.read_text())
    assert trained["linear_top1"] > random["linear_top1"] + 0.03, (trained, random)


@pytest.mark.slow
def test_quickstart_runs_offline_on_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "nothing-here"))
    assert main(["quickstart", "--out-dir", str(tmp_path / "qs"), "--minutes", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "using scikit-learn's bundled digits" in out
    rows = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert rows[0]["knn@20"] > rows[1]["knn@20"]


def test_pretext_metric_of_simclr_run(tiny_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "simclr",
                f"out_dir={run}",
                f"data.source={tiny_npz}",
                "backbone.name=resnet_tiny",
                "train.batch_size=16",
                "train.epochs=1",
                "train.progress=false",
                "train.tensorboard=false",
                "method_args.proj_hidden_dim=32",
            ]
        )
        == 0
    )
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "simclr" and row["images"] == 64
    # plumbing only (the metric's meaning is tested in tests/methods/test_methods.py)
    assert 0.0 <= row["positive_retrieval_top1"] <= 1.0
