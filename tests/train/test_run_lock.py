"""One writer per run directory: a second run on an out_dir in use is refused naming the
holder; a stale lock left by a dead process (pid + host) is taken over only on --resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from tiny_runs import tiny_run_config

from selfsup.errors import TrainingError
from selfsup.train import Callback, Trainer
from selfsup.train.metrics_log import read_metrics
from selfsup.utils.io import latest_checkpoint
from selfsup.utils.locks import RunDirLock


def cfg_for(data, out_dir, *extra):
    return tiny_run_config(data, out_dir, "train.max_steps=2", *extra)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale_lock(run, host: str, pid: int) -> None:
    run.mkdir(parents=True)
    (run / ".lock").write_text(json.dumps({"pid": pid, "host": host, "started": "yesterday"}))


def test_a_run_directory_in_use_is_refused_naming_the_holder(tiny_npz, tmp_path):
    run = tmp_path / "run"
    with RunDirLock(run) as held:  # another run, as far as the trainer can tell
        held.acquire(take_over_stale=False)
        for resume in (False, True):
            with pytest.raises(
                TrainingError,
                match=rf"in use by another run: pid {os.getpid()} "
                rf"on host {socket.gethostname()}",
            ):
                Trainer(cfg_for(tiny_npz, run), resume=resume).fit()
    assert not (run / "metrics.jsonl").exists()  # the refused run wrote nothing


def test_the_lock_is_held_while_training_and_released_after(tiny_npz, tmp_path):
    run = tmp_path / "run"
    seen = []

    class Peek(Callback):
        def on_step_end(self, run_, out) -> None:
            seen.append(json.loads((run / ".lock").read_text())["pid"])

    Trainer(cfg_for(tiny_npz, run), callbacks=[Peek()]).fit()
    assert seen == [os.getpid()] * 2 and not (run / ".lock").exists()
    Trainer(cfg_for(tiny_npz, run, "train.max_steps=3"), resume=True).fit()  # free again


class Die(Exception):
    """Stands in for kill -9 at step 2: the lock file stays, naming a process that is gone."""


class DieAt2(Callback):
    def on_step_end(self, run, out) -> None:
        if run.step == 2:
            raise Die


@pytest.mark.parametrize("where", ["this host, dead pid", "another host"])
def test_a_stale_lock_over_checkpoints_is_taken_over_on_resume_only(tiny_npz, tmp_path, capsys,
                                                                    where):  # fmt: skip
    run = tmp_path / "run"
    with pytest.raises(Die):
        Trainer(cfg_for(tiny_npz, run, "train.checkpoint_every_steps=1"),
                callbacks=[DieAt2()]).fit()  # fmt: skip
    host, pid = (socket.gethostname(), _dead_pid()) if where.startswith("this") else ("far", 1)
    (run / ".lock").write_text(json.dumps({"pid": pid, "host": host, "started": "yesterday"}))
    with pytest.raises(TrainingError, match=rf"stale lock from pid {pid} on host {host}.*--resume"):
        Trainer(cfg_for(tiny_npz, run, "train.max_steps=3")).fit()
    assert (run / ".lock").exists()  # left for the user to see
    Trainer(cfg_for(tiny_npz, run, "train.max_steps=3"), resume=True).fit()
    assert f"taking over {run / '.lock'} from pid {pid} on host {host}" in capsys.readouterr().out
    assert read_metrics(run)[-1]["event"] == "end" and not (run / ".lock").exists()


def test_a_stale_lock_without_checkpoints_is_taken_over_by_a_fresh_run(tiny_npz, tmp_path,
                                                                      capsys):  # fmt: skip
    """Nothing to continue or to mix up: the dead run never checkpointed (as when a sweep or
    the quickstart, which resume only where a checkpoint exists, is run again)."""
    run = tmp_path / "run"
    pid = _dead_pid()
    _stale_lock(run, socket.gethostname(), pid)
    (run / "metrics.jsonl").write_text('{"event": "start"}\n{"step": 1, "loss": 9.0}\n')
    Trainer(cfg_for(tiny_npz, run)).fit()
    assert f"from pid {pid} on host {socket.gethostname()}" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(run) if "loss" in r and "event" not in r] == [2]


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_ones_lock_taken_over(tiny_npz, tmp_path):
    """For real: `selfsup train` running, a second one refused; the first killed with -9,
    its lock stale: refused without --resume, taken over with it."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "selfsup", "train", "simclr", f"data.source={tiny_npz}",
            f"out_dir={run}", "backbone.name=resnet_tiny", "train.batch_size=16",
            "train.epochs=50", "train.max_steps=400", "train.precision=fp32",
            "train.progress=false", "train.tensorboard=false", "train.num_threads=1",
            "train.log_every_steps=1", "train.checkpoint_every_steps=1",
            "method_args.proj_hidden_dim=16", "method_args.proj_out_dim=8",
            "eval_data.source=null"]  # fmt: skip
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(run) is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    assert second.returncode == 1
    assert f"in use by another run: pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = subprocess.run(args, env=env, capture_output=True, text=True)
    assert again.returncode == 1 and f"stale lock from pid {first.pid}" in again.stderr
    resumed = subprocess.run([*args, "--resume", "train.max_steps=4"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"taking over {run / '.lock'} from pid {first.pid}" in resumed.stdout
