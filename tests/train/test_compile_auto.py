"""``train.compile``: ``auto`` compiles the method exactly where
:func:`~selfsup.utils.precision.use_compile` says it pays (fp32 on the CPU, a long enough run),
the decision and its reason are recorded in the run, and a compiled run trains the same network
as an eager one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import Crash, CrashAt, tiny_run_config

from selfsup.train import Trainer
from selfsup.utils import precision

EIGHT_STEPS = ["train.max_steps=8", "train.schedule.warmup_fraction=0.1"]


def _eager_backend_compile(monkeypatch) -> list[object]:
    """Make ``torch.compile`` trace with Dynamo's eager backend (no code generation, so the
    test is fast) and record what it was given."""
    compiled: list[object] = []
    real = torch.compile

    def compile_(model, **kwargs):
        compiled.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: True)  # the eager backend
    return compiled


def _start_record(run_dir) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, lines) if r.get("event") == "start")


def test_auto_compiles_a_long_enough_fp32_cpu_run_and_says_so(tiny_npz, tmp_path, monkeypatch):
    compiled = _eager_backend_compile(monkeypatch)
    monkeypatch.setattr(precision, "COMPILE_AUTO_MIN_STEPS", 8)  # "long enough" = this run
    out = tmp_path / "run"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS))
    result = trainer.fit()
    assert result.steps == 8 and compiled  # the method went through torch.compile
    assert trainer.train_step.forward is not trainer.train_step.method
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == "auto: on, fp32 on the CPU for 8 steps"
    assert _start_record(out)["compile"] == summary["compile"]


@pytest.mark.parametrize(
    ("extra", "min_steps", "reason"),
    [
        ([], 1000, "auto: off, 8 steps is shorter than the 1000 steps that repay compiling"),
        # each view size compiles anew, so two sizes need twice the steps
        (
            ["train.view_size_schedule=[[0,8],[0.5,16]]"],
            5,
            "auto: off, 8 steps is shorter than the 10 steps (2 compilations, one per view size) "
            "that repay compiling",
        ),
        (["train.precision=bf16"], 8, "auto: off with bfloat16 autocast on the CPU"),
        (["train.compile=false"], 8, "train.compile=false"),
    ],
)
def test_runs_that_would_not_repay_it_stay_eager(
    tiny_npz, tmp_path, monkeypatch, extra, min_steps, reason
):
    compiled = _eager_backend_compile(monkeypatch)
    monkeypatch.setattr(precision, "COMPILE_AUTO_MIN_STEPS", min_steps)
    out = tmp_path / "run"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS, *extra))
    assert trainer.fit().steps == 8
    assert not compiled and trainer.train_step.forward is trainer.train_step.method
    assert json.loads((out / "summary.json").read_text())["compile"] == reason


@pytest.mark.slow
@pytest.mark.skipif(not precision.cpu_compiler_found(), reason="inductor needs a C++ compiler")
def test_a_compiled_fp32_run_trains_the_same_network_as_an_eager_one(tiny_npz, tmp_path):
    """Inductor's generated code, not a stand-in: 6 steps of the tiny SimCLR run compiled and
    eager from the same seed end at the same weights up to float rounding."""
    runs = {}
    for setting in ("true", "false"):
        out = tmp_path / setting
        extra = [*EIGHT_STEPS, "train.max_steps=6", f"train.compile={setting}"]
        trainer = Trainer(tiny_run_config(tiny_npz, out, *extra))
        trainer.fit()
        runs[setting] = load_file(str(out / "encoder.safetensors"))
        assert json.loads((out / "summary.json").read_text())["compile"] == (
            f"train.compile={setting}"
        )
        # the compiled run really ran its forward through torch.compile
        step = trainer.train_step
        assert (step.forward is not step.method) is (setting == "true")
    # an eager and a compiled forward that gave no gradients would both stay at the start;
    # the eager run moves its weights (the trainer's tests), so equality means both trained
    for name, eager in runs["false"].items():
        torch.testing.assert_close(runs["true"][name], eager, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(not precision.cpu_compiler_found(), reason="inductor needs a C++ compiler")
def test_a_compiled_run_resumes_exactly(tiny_npz, tmp_path, monkeypatch):
    """Killed after its step-4 checkpoint and resumed, a run that ``auto`` compiles ends at
    bit-equal weights to one that was never stopped: the resumed session, with 4 of its 8
    steps left, still compiles (it decides on the whole run; an eager resume of a compiled run
    differs in float rounding) and compiles to the same arithmetic."""
    monkeypatch.setattr(precision, "COMPILE_AUTO_MIN_STEPS", 8)
    extra = [*EIGHT_STEPS, "train.checkpoint_every_steps=2"]
    Trainer(tiny_run_config(tiny_npz, tmp_path / "whole", *extra)).fit()
    run = tmp_path / "resumed"
    with pytest.raises(Crash):
        Trainer(tiny_run_config(tiny_npz, run, *extra), callbacks=[CrashAt(5)]).fit()
    Trainer(tiny_run_config(tiny_npz, run, *extra), resume=True).fit()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compile"] == "auto: on, fp32 on the CPU for 8 steps"
    a = load_file(str(tmp_path / "whole" / "encoder.safetensors"))
    b = load_file(str(run / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


class _CompileFailure(RuntimeError):
    """Stands in for inductor failing to build its kernels (e.g. no Python headers)."""


def _failing_compile(monkeypatch, where: str) -> list[object]:
    """Make ``torch.compile`` return a forward that raises :class:`_CompileFailure` in the
    forward (``where="forward"``) or, as a lazily compiled backward would, in the backward of a
    loss that touches no weights (``"backward"``); records what it was given."""
    compiled: list[object] = []

    class RaiseInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise _CompileFailure("C++ compile error: Python.h: No such file or directory")

    def compile_(model, **kwargs):
        compiled.append(model)

        def forward(*args, **kw):
            if where == "forward":
                raise _CompileFailure("C++ compile error: Python.h: No such file or directory")
            return RaiseInBackward.apply(torch.zeros((), requires_grad=True)), {}

        return forward

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: True)
    return compiled


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_auto_falls_back_to_eager_when_compiling_fails(tiny_npz, tmp_path, monkeypatch, where):
    """A compiled step that raises (in its forward, or in a backward compiled at its first
    call) does not end an ``auto`` run: the step is redone eager and the run goes on eager,
    training exactly the network an eager run trains, and says so in its summary."""
    eager_out = tmp_path / "eager"
    Trainer(tiny_run_config(tiny_npz, eager_out, *EIGHT_STEPS, "train.compile=false")).fit()
    compiled = _failing_compile(monkeypatch, where)
    monkeypatch.setattr(precision, "COMPILE_AUTO_MIN_STEPS", 8)
    out = tmp_path / "auto"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS))
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*goes on eager from step 0"):
        assert trainer.fit().steps == 8
    assert compiled and trainer.train_step.forward is trainer.train_step.method
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == (
        "auto: on, fp32 on the CPU for 8 steps; fell back to eager at step 0: "
        "_CompileFailure: C++ compile error: Python.h: No such file or directory"
    )
    assert summary["skipped_steps"] == 0
    a = load_file(str(eager_out / "encoder.safetensors"))
    b = load_file(str(out / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_explicit_compile_that_fails_raises_and_says_how_to_train_eager(
    tiny_npz, tmp_path, monkeypatch
):
    _failing_compile(monkeypatch, "forward")
    trainer = Trainer(
        tiny_run_config(tiny_npz, tmp_path / "run", *EIGHT_STEPS, "train.compile=true")
    )
    with pytest.raises(_CompileFailure) as raised:
        trainer.fit()
    assert any("train.compile=false trains eager" in note for note in raised.value.__notes__)


def test_the_fallback_does_not_hide_an_error_of_the_method_itself(tiny_npz, tmp_path, monkeypatch):
    """When the eager retry fails too, the method's own error is what the user sees."""
    from selfsup.methods.simclr import SimCLR

    _failing_compile(monkeypatch, "forward")
    monkeypatch.setattr(precision, "COMPILE_AUTO_MIN_STEPS", 8)

    def broken(self, *args, **kwargs):
        raise ValueError("a bug in the method")

    monkeypatch.setattr(SimCLR, "forward", broken)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="a bug in the method"), pytest.warns(RuntimeWarning):
        Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS)).fit()
    assert not (out / "summary.json").exists()


def test_auto_leaves_a_method_eager_where_its_compiled_step_measured_no_faster(
    tiny_npz, tmp_path, monkeypatch
):
    from selfsup.methods.simclr import SimCLR

    compiled = _eager_backend_compile(monkeypatch)
    monkeypatch.setattr(precision, "COMPILE_AUTO_MIN_STEPS", 8)
    monkeypatch.setattr(SimCLR, "keep_eager_on_cpu", "its compiled step measured 0.9x")
    out = tmp_path / "run"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS))
    assert trainer.fit().steps == 8
    assert not compiled and trainer.train_step.forward is trainer.train_step.method
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == "auto: off, simclr: its compiled step measured 0.9x"
    # an explicit setting still wins
    trainer = Trainer(
        tiny_run_config(tiny_npz, tmp_path / "forced", *EIGHT_STEPS, "train.compile=true")
    )
    trainer.fit()
    assert compiled and trainer.train_step.compiled


def test_the_methods_measured_slower_compiled_are_the_ones_kept_eager():
    """``benchmarks/results/compile_cpu_methods.json``: inpainting 0.90x, split-brain 0.89x,
    colorization 1.07x (break-even ~2,400 steps); every other image method 1.13-1.44x."""
    from selfsup.methods import list_methods

    kept = {cls.name for cls in list_methods() if cls.keep_eager_on_cpu}
    assert kept == {"inpainting", "split_brain", "colorization"}
