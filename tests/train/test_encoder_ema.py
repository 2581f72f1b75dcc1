"""train.encoder_ema: an exponential moving average of the encoder's weights becomes the run's
encoder (``encoder.safetensors``), the trained weights go beside it
(``encoder_online.safetensors``), training itself is untouched, and a resumed run ends with
the same average as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import Crash, CrashAt, tiny_run_config

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.train import Callback, Trainer
from selfsup.train.trainer import encoder_ema_decay

DECAY = 0.8


def cfg_for(data, out_dir, *extra):
    return tiny_run_config(data, out_dir, "train.schedule.warmup_fraction=0.1",
                           "train.checkpoint_every_steps=2", *extra)  # fmt: skip


class RecordEncoder(Callback):
    """The trained encoder's parameters and buffers after every step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, run, out) -> None:
        state = run.method.encoder.state_dict()
        self.states.append({k: v.detach().clone() for k, v in state.items()})


def test_the_decay_ramps_up_to_its_value():
    assert encoder_ema_decay(0.999, 0) == pytest.approx(0.1)
    assert encoder_ema_decay(0.999, 8) == pytest.approx(0.5)
    assert encoder_ema_decay(0.999, 10**6) == 0.999
    assert encoder_ema_decay(0.5, 20) == 0.5


def test_the_run_encoder_is_the_average_of_the_trained_weights(tiny_npz, tmp_path):
    recorder = RecordEncoder()
    start: dict[str, torch.Tensor] = {}  # the encoder's parameters (not buffers) at step 0

    class First(Callback):
        def on_fit_start(self, run) -> None:
            start.update({k: p.detach().clone() for k, p in run.method.encoder.named_parameters()})

    Trainer(cfg_for(tiny_npz, tmp_path / "ema", f"train.encoder_ema={DECAY}"),
            callbacks=[First(), recorder]).fit()  # fmt: skip
    assert len(recorder.states) == 8
    expected = {k: v.clone() for k, v in start.items()}
    for step, state in enumerate(recorder.states):  # by hand: theta <- d theta + (1 - d) w
        d = min(DECAY, (1 + step) / (10 + step))
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * state[k]
    averaged = load_file(str(tmp_path / "ema" / "encoder.safetensors"))
    online = load_file(str(tmp_path / "ema" / "encoder_online.safetensors"))
    final = recorder.states[-1]
    for k in expected:
        torch.testing.assert_close(averaged[k], expected[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(online[k], final[k])
    moved = [k for k in expected if not torch.allclose(averaged[k], final[k])]
    assert moved, "the average should differ from the last trained weights"
    for k in final:  # BatchNorm statistics: the trained network's latest
        if k not in expected:
            assert torch.equal(averaged[k], final[k]), k
    summary = json.loads((tmp_path / "ema" / "summary.json").read_text())
    assert summary["encoder_ema"] == DECAY


def test_training_itself_is_untouched(tiny_npz, tmp_path):
    Trainer(cfg_for(tiny_npz, tmp_path / "plain")).fit()
    Trainer(cfg_for(tiny_npz, tmp_path / "ema", f"train.encoder_ema={DECAY}")).fit()
    plain = load_file(str(tmp_path / "plain" / "encoder.safetensors"))
    online = load_file(str(tmp_path / "ema" / "encoder_online.safetensors"))
    assert all(torch.equal(plain[k], online[k]) for k in plain)
    assert not (tmp_path / "plain" / "encoder_online.safetensors").exists()


def test_a_resumed_run_ends_with_the_same_average(tiny_npz, tmp_path):
    extra = f"train.encoder_ema={DECAY}"
    Trainer(cfg_for(tiny_npz, tmp_path / "a", extra)).fit()
    run = tmp_path / "b"
    with pytest.raises(Crash):  # checkpoint at step 4, killed at 5
        Trainer(cfg_for(tiny_npz, run, extra), callbacks=[CrashAt(5)]).fit()
    Trainer(cfg_for(tiny_npz, run, extra), resume=True).fit()
    for name in ("encoder.safetensors", "encoder_online.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(run / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1"])
def test_a_decay_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ConfigError, match="encoder_ema"):
        load_config("simclr", None, [f"train.encoder_ema={bad}"])
