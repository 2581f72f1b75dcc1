"""BYOL end to end: the EMA target through the trainer, the CLI, and an exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file
from two_process import assert_same_loss_curve, final_states, train_single_and_ddp

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.train import Trainer


def _cfg(data, out, *extra):
    return load_config(
        "byol",
        None,
        [
            f"data.source={data}",
            "eval_data.source=null",
            f"out_dir={out}",
            "backbone.name=resnet_tiny",
            "backbone.width=null",
            "train.batch_size=16",
            "train.epochs=2",
            "train.precision=fp32",
            "train.progress=false",
            "train.tensorboard=false",
            "train.log_every_steps=1",
            "train.num_threads=1",
            "train.checkpoint_every_steps=2",
            "train.knn_monitor.every_epochs=0",
            "train.optimizer.name=sgd",
            "train.optimizer.lr=0.05",
            "method_args.proj_hidden_dim=32",
            "method_args.proj_out_dim=16",
            "method_args.pred_hidden_dim=32",
            *extra,
        ],
    )


def test_stop_and_resume_gives_the_same_weights_and_target(tiny_npz, tmp_path):
    straight = Trainer(_cfg(tiny_npz, tmp_path / "a")).fit()
    assert straight.steps == 8
    assert Trainer(_cfg(tiny_npz, tmp_path / "b"), stop_at_step=3).fit().steps == 3
    assert Trainer(_cfg(tiny_npz, tmp_path / "b"), resume=True).fit().steps == 8
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000008" / "model.safetensors"))
    assert a.keys() == b.keys()
    target = [k for k in a if k.startswith("target.copies.encoder.")]
    assert target and "target.copies.projector.layers.0.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the target moved away from its initial copy, but is not the online network
    assert not torch.equal(
        a["target.copies.projector.layers.0.weight"], a["projector.layers.0.weight"]
    )
    rows = [
        json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if "loss" in r and "event" not in r]
    assert len(steps) == 8
    assert {"effective_rank", "embedding_spread", "target_momentum"} <= set(steps[-1])
    momenta = [r["target_momentum"] for r in steps]
    # metrics are logged before the step's update: 0.99 first, rising with the cosine schedule
    assert abs(momenta[0] - 0.99) < 1e-6 and momenta == sorted(momenta) and momenta[-1] < 1


def test_train_from_the_cli_then_knn(tiny_npz, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "byol", f"out_dir={run}", f"data.source={tiny_npz}", "eval_data.source=null",
        "backbone.name=resnet_tiny", "backbone.width=null", "train.batch_size=16",
        "train.epochs=1", "train.progress=false", "train.tensorboard=false",
        "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        "method_args.proj_hidden_dim=32", "method_args.proj_out_dim=16",
        "method_args.pred_hidden_dim=32",
    ]  # fmt: skip
    assert main(args) == 0
    knn = tmp_path / "knn.json"
    assert (
        main(["eval", "knn", str(run), "--data", str(tiny_npz), "--k", "5", "--json", str(knn)])
        == 0
    )
    assert 0 <= json.loads(knn.read_text())[0]["knn@5"] <= 1


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tiny_npz, tmp_path):
    """2 torchrun processes (global BatchNorm in the online and target heads) follow the loss
    curve of 1 process on the same global batch and end with the same target network."""
    train_single_and_ddp("byol", tiny_npz, tmp_path, [
        "method_args.proj_hidden_dim=32", "method_args.proj_out_dim=16",
        "method_args.pred_hidden_dim=32", "train.optimizer.name=sgd", "train.optimizer.lr=0.05",
    ])  # fmt: skip
    assert_same_loss_curve(tmp_path)
    a, b = final_states(tmp_path)
    target = [k for k in a if k.startswith("target.") and a[k].is_floating_point()]
    assert target
    for key in target:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5, msg=key)
