"""Checkpoints survive faults: kill -9 at random points of checkpoint writes always leaves a
loadable last-good checkpoint; a torn file is noticed; a full disk gives a clear error, keeps
the previous checkpoint and exits non-zero; a file carrying a pickle payload is refused
without running it."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import signal
import time

import pytest
import torch
from checkpoint_writer import save as _save
from checkpoint_writer import write_forever
from torch import nn

import selfsup.utils.io as io_mod
from selfsup.cli import main
from selfsup.evaluate import load_encoder
from selfsup.utils.io import CheckpointWriteError, latest_checkpoint, load_checkpoint


def _check_loadable(run) -> int:
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    model = nn.Linear(256, 1024)
    state = load_checkpoint(ckpt, model, {"method": "m"})
    step = state["meta"]["step"]
    assert ckpt.name == f"step_{step:08d}" and int(state["train_state"]["step"]) == step
    assert all(bool((p == step).all()) for p in model.parameters())
    return step


def test_kill_9_during_checkpoint_writes_always_leaves_a_loadable_checkpoint(tmp_path):
    """25 times: a child process writes checkpoints back to back and is killed with SIGKILL
    after a random delay (children come from a fork server: quick to start, and safe where
    the test process's own threads would make a plain fork hang)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "selfsup.utils.io", "checkpoint_writer"])
    run = tmp_path / "run"
    _save(run, 0)
    rng = random.Random(0)
    torn = 0
    for _ in range(25):
        start = _check_loadable(run) + 1
        child = ctx.Process(target=write_forever, args=(run, start))
        child.start()
        deadline = time.time() + 60
        while latest_checkpoint(run).name == f"step_{start - 1:08d}" and time.time() < deadline:
            time.sleep(0.001)  # until the child is writing
        time.sleep(rng.uniform(0, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        torn += any((run / "checkpoints").glob(".step_*"))
        _check_loadable(run)
    assert torn >= 5  # many kills landed inside a write (a partial directory was left)
    _save(run, 1000)  # the next write cleans up after the killed ones
    assert not list((run / "checkpoints").glob(".step_*"))


def test_a_torn_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """What a power cut can leave (kill -9 cannot): the newest directory complete-looking but
    one file short. It is noticed from the sizes in meta.json."""
    run = tmp_path / "run"
    _save(run, 1)
    _save(run, 2)
    weights = run / "checkpoints" / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert latest_checkpoint(run).name == "step_00000001"
    assert _check_loadable(run) == 1


def _disk_fills_up(monkeypatch, after_calls: int) -> None:
    """The ``after_calls``-th safetensors write (and every later one) fails with ENOSPC,
    after writing part of its file."""
    real = io_mod.save_file
    calls = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] >= after_calls:
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(io_mod, "save_file", save_file)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _save(run, 1)
    _disk_fills_up(monkeypatch, after_calls=2)  # the encoder file of step 2
    with pytest.raises(CheckpointWriteError) as err:
        _save(run, 2)
    message = str(err.value)
    assert "step_00000002" in message and "disk is full" in message
    assert "step_00000001 is kept" in message and "--resume" in message
    assert not list((run / "checkpoints").glob(".step_*"))  # the partial write is removed
    assert _check_loadable(run) == 1


def _train(data, out, *extra):
    return ["train", "simclr", f"data.source={data}", f"out_dir={out}",
            "backbone.name=resnet_tiny", "train.batch_size=16", "train.max_steps=4",
            "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
            "train.num_threads=1", "train.checkpoint_every_steps=1", "train.log_every_steps=1",
            "method_args.proj_hidden_dim=16", "method_args.proj_out_dim=8",
            "eval_data.source=null", *extra]  # fmt: skip


def test_training_on_a_full_disk_exits_non_zero_and_resumes(tiny_npz, tmp_path, monkeypatch,
                                                            capsys):  # fmt: skip
    run = tmp_path / "run"
    _disk_fills_up(monkeypatch, after_calls=5)  # 2 files per checkpoint: step 3's first
    assert main(_train(tiny_npz, run)) == 1
    err = capsys.readouterr().err
    assert "could not write checkpoint step_00000003" in err and "disk is full" in err
    assert "step_00000002 is kept" in err and "Traceback" not in err
    monkeypatch.undo()  # space freed
    assert main([*_train(tiny_npz, run), "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


# ----------------------------------------------------------------------------- no code on load


class _Payload:
    """Unpickling this creates a marker file: proof that loading ran code."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_a_pickle_payload_is_refused(tmp_path):
    run = tmp_path / "run"
    _save(run, 1)
    marker = tmp_path / "pwned"
    ckpt = latest_checkpoint(run)
    torch.save({"step": torch.tensor(1), "optimizer": _Payload(marker)},
               ckpt / "train_state.pt")  # fmt: skip
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"]["train_state.pt"] = (ckpt / "train_state.pt").stat().st_size
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="refusing to load.*could run code"):
        load_checkpoint(ckpt, nn.Linear(256, 1024), {"method": "m"})
    assert not marker.exists()


@pytest.mark.parametrize("as_", ["torch.save", "pickle"])
def test_an_encoder_file_carrying_a_pickle_payload_is_refused(tmp_path, as_):
    import pickle

    marker = tmp_path / "pwned"
    weights = tmp_path / "encoder.safetensors"
    payload = {"conv.weight": _Payload(marker)}
    if as_ == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    meta = {"backbone": {"name": "resnet_tiny"}, "image_size": 16, "in_channels": 3,
            "normalize": "none", "method": "simclr"}  # fmt: skip
    (tmp_path / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="refusing to load.*not safetensors"):
        load_encoder(str(weights))
    assert main(["eval", "knn", str(weights), "--data", "digits"]) == 1
    assert not marker.exists()
