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


def _eager_step_takes(monkeypatch, seconds: float) -> list[int]:
    """Make the Trainer's timing of an eager step (``_time_eager_step``) report ``seconds``;
    returns a list that counts its calls."""
    calls: list[int] = []

    def timed(self, *args, **kwargs):
        calls.append(1)
        return seconds

    monkeypatch.setattr(Trainer, "_time_eager_step", timed)
    return calls


LONG = 30.0
"""An eager step time that makes the 8-step tiny run long enough to compile (240 s >= 200)."""
ON = "auto: on, fp32 on the CPU for 8 steps of 30 s eager (~240 s)"


def _start_record(run_dir) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return next(r for r in map(json.loads, lines) if r.get("event") == "start")


def test_auto_compiles_a_long_enough_fp32_cpu_run_and_says_so(tiny_npz, tmp_path, monkeypatch):
    compiled = _eager_backend_compile(monkeypatch)
    _eager_step_takes(monkeypatch, LONG)  # "long enough" = this run
    out = tmp_path / "run"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS))
    result = trainer.fit()
    assert result.steps == 8 and compiled  # the method went through torch.compile
    assert trainer.train_step.forward is not trainer.train_step.method
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == ON
    assert _start_record(out)["compile"] == summary["compile"]


@pytest.mark.parametrize(
    ("extra", "step_seconds", "timed", "reason"),
    [
        (
            [], 1.0, True,
            "auto: off, 8 steps of 1 s eager (~8 s) is shorter than the 200 s that repay "
            "compiling",
        ),
        # each view size compiles anew, so two sizes need twice the time
        (
            ["train.view_size_schedule=[[0,8],[0.5,16]]"], LONG, True,
            "auto: off, 8 steps of 30 s eager (~240 s) is shorter than the 400 s (2 "
            "compilations, one per view size) that repay compiling",
        ),
        # no step is timed where the run's length cannot matter
        (["train.precision=bf16"], LONG, False, "auto: off with bfloat16 autocast on the CPU"),
        (["train.compile=false"], LONG, False, "train.compile=false"),
    ],
)  # fmt: skip
def test_runs_that_would_not_repay_it_stay_eager(
    tiny_npz, tmp_path, monkeypatch, extra, step_seconds, timed, reason
):
    compiled = _eager_backend_compile(monkeypatch)
    calls = _eager_step_takes(monkeypatch, step_seconds)
    out = tmp_path / "run"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS, *extra))
    assert trainer.fit().steps == 8
    assert not compiled and trainer.train_step.forward is trainer.train_step.method
    assert json.loads((out / "summary.json").read_text())["compile"] == reason
    assert bool(calls) is timed


VIEW_SIZES = "train.view_size_schedule=[[0,8],[0.5,12],[0.75,16]]"


@pytest.mark.parametrize("schedule", [(), (VIEW_SIZES,)], ids=["one size", "view sizes"])
def test_timing_an_eager_step_leaves_no_trace(tiny_npz, tmp_path, monkeypatch, schedule):
    """The step ``auto`` times at set-up (forward + backward on a random batch, at each size of
    a view-size schedule) changes no weight, buffer, view size or random state: the run ends
    bit-equal to one that times nothing."""
    from selfsup.methods.simclr import SimCLR

    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: True)  # so auto times a step
    forward = SimCLR.forward

    def draws_from_the_global_rng(self, *args, **kwargs):  # as dropout would
        torch.rand(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SimCLR, "forward", draws_from_the_global_rng)
    Trainer(tiny_run_config(tiny_npz, tmp_path / "auto", *EIGHT_STEPS, *schedule)).fit()
    rng_after_timed = torch.get_rng_state()  # the run seeds it; its steps may draw from it
    reason = json.loads((tmp_path / "auto" / "summary.json").read_text())["compile"]
    assert reason.startswith("auto: off, 8 steps of ") and " s eager (~" in reason
    Trainer(
        tiny_run_config(
            tiny_npz, tmp_path / "eager", *EIGHT_STEPS, *schedule, "train.compile=false"
        )
    ).fit()
    assert torch.equal(rng_after_timed, torch.get_rng_state())
    a = load_file(str(tmp_path / "auto" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "eager" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_view_size_schedule_is_timed_at_each_size_by_the_share_of_the_run_it_lasts(
    tiny_npz, tmp_path, monkeypatch
):
    """With progressive resizing the run's eager time is not its steps times a full-size step:
    each size is timed and weighs by how long it lasts; the views are left at the size the
    run is at. Here a fake clock makes a step cost its view's area."""
    from selfsup.methods.simclr import SimCLR
    from selfsup.train import trainer as trainer_module

    trainer = Trainer(
        tiny_run_config(tiny_npz, tmp_path / "run", *EIGHT_STEPS, VIEW_SIZES, "train.compile=false")
    )
    trainer.fit()
    assert trainer.view_size == 16
    clock, size = [0.0], {}
    set_view_size, forward = SimCLR.set_view_size, SimCLR.forward

    def recorded(self, s):
        size["now"] = s
        set_view_size(self, s)

    def costs_its_area(self, *args, **kwargs):
        clock[0] += size["now"] ** 2
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SimCLR, "set_view_size", recorded)
    monkeypatch.setattr(SimCLR, "forward", costs_its_area)
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: clock[0])
    method = trainer.train_step.method
    trainer.view_size = 12  # as a session resumed in the 12 px phase would be
    seconds = trainer._time_eager_step(method, torch.device("cpu"), None, 3, 16)
    assert seconds == pytest.approx(0.5 * 8**2 + 0.25 * 12**2 + 0.25 * 16**2)
    assert size["now"] == 12  # the views are where the run is


def test_a_resumed_run_follows_its_first_sessions_decision(tiny_npz, tmp_path, monkeypatch):
    """The decision is in the checkpoint: a resumed session compiles as the first one did,
    without timing a step again (a new timing could decide otherwise, and the compiled and
    eager steps differ in rounding)."""
    compiled = _eager_backend_compile(monkeypatch)
    calls = _eager_step_takes(monkeypatch, LONG)
    extra = [*EIGHT_STEPS, "train.checkpoint_every_steps=2"]
    run = tmp_path / "run"
    with pytest.raises(Crash):
        Trainer(tiny_run_config(tiny_npz, run, *extra), callbacks=[CrashAt(5)]).fit()
    assert len(calls) == 1 and len(compiled) == 1
    _eager_step_takes(monkeypatch, 0.001)  # would now decide eager
    trainer = Trainer(tiny_run_config(tiny_npz, run, *extra), resume=True)
    trainer.fit()
    assert len(compiled) == 2 and trainer.train_step.compiled
    assert json.loads((run / "summary.json").read_text())["compile"] == ON


def test_a_checkpoint_without_a_recorded_decision_resumes_by_counting_steps(
    tiny_npz, tmp_path, monkeypatch
):
    """A checkpoint written before decisions were recorded: the resumed session does not time
    a step (a timing could decide otherwise than the first session did), it counts steps as
    the code that wrote the checkpoint did, and ends bit-equal to an unbroken run."""
    eager_out = tmp_path / "eager"
    Trainer(tiny_run_config(tiny_npz, eager_out, *EIGHT_STEPS, "train.compile=false")).fit()
    compiled = _eager_backend_compile(monkeypatch)
    _eager_step_takes(monkeypatch, 0.001)  # the first session: too short, eager
    extra = [*EIGHT_STEPS, "train.checkpoint_every_steps=2"]
    run = tmp_path / "run"
    with pytest.raises(Crash):
        Trainer(tiny_run_config(tiny_npz, run, *extra), callbacks=[CrashAt(5)]).fit()
    checkpoint = run / "checkpoints" / "step_00000004"
    state = torch.load(checkpoint / "train_state.pt", weights_only=True)
    del state["compile_decision"]  # as the code before the record wrote it
    torch.save(state, checkpoint / "train_state.pt")
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"]["train_state.pt"] = (checkpoint / "train_state.pt").stat().st_size
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    calls = _eager_step_takes(monkeypatch, LONG)  # a timing now would compile
    trainer = Trainer(tiny_run_config(tiny_npz, run, *extra), resume=True)
    trainer.fit()
    assert not calls and not compiled and not trainer.train_step.compiled
    assert json.loads((run / "summary.json").read_text())["compile"] == (
        "auto: off, 8 steps is shorter than the 1000 steps that repay compiling"
    )
    a = load_file(str(eager_out / "encoder.safetensors"))
    b = load_file(str(run / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


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
    calls = _eager_step_takes(monkeypatch, LONG)
    extra = [*EIGHT_STEPS, "train.checkpoint_every_steps=2"]
    Trainer(tiny_run_config(tiny_npz, tmp_path / "whole", *extra)).fit()
    run = tmp_path / "resumed"
    with pytest.raises(Crash):
        Trainer(tiny_run_config(tiny_npz, run, *extra), callbacks=[CrashAt(5)]).fit()
    Trainer(tiny_run_config(tiny_npz, run, *extra), resume=True).fit()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compile"] == ON and len(calls) == 2  # the resumed session did not time
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
    _eager_step_takes(monkeypatch, LONG)
    out = tmp_path / "auto"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS))
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*goes on eager from step 0"):
        assert trainer.fit().steps == 8
    assert compiled and trainer.train_step.forward is trainer.train_step.method
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == (
        f"{ON}; fell back to eager at step 0: "
        "_CompileFailure: C++ compile error: Python.h: No such file or directory"
    )
    assert summary["skipped_steps"] == 0
    a = load_file(str(eager_out / "encoder.safetensors"))
    b = load_file(str(out / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_that_fell_back_to_eager_resumes_eager(tiny_npz, tmp_path, monkeypatch):
    """The checkpoint records the fall-back: a resumed session trains eager from its first step
    (it does not compile, and fail, again), says why in its summary, and ends at the weights of
    an unbroken eager run."""
    eager_out = tmp_path / "eager"
    Trainer(tiny_run_config(tiny_npz, eager_out, *EIGHT_STEPS, "train.compile=false")).fit()
    compiled = _failing_compile(monkeypatch, "forward")
    _eager_step_takes(monkeypatch, LONG)
    extra = [*EIGHT_STEPS, "train.checkpoint_every_steps=2"]
    run = tmp_path / "run"
    with pytest.raises(Crash), pytest.warns(RuntimeWarning, match="goes on eager from step 0"):
        Trainer(tiny_run_config(tiny_npz, run, *extra), callbacks=[CrashAt(5)]).fit()
    assert len(compiled) == 1
    trainer = Trainer(tiny_run_config(tiny_npz, run, *extra), resume=True)
    trainer.fit()
    assert len(compiled) == 1 and not trainer.train_step.compiled
    assert json.loads((run / "summary.json").read_text())["compile"] == (
        f"{ON}; fell back to eager at step 0: "
        "_CompileFailure: C++ compile error: Python.h: No such file or directory"
    )
    a = load_file(str(eager_out / "encoder.safetensors"))
    b = load_file(str(run / "encoder.safetensors"))
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
    _eager_step_takes(monkeypatch, LONG)

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
    calls = _eager_step_takes(monkeypatch, LONG)
    monkeypatch.setattr(SimCLR, "keep_eager_on_cpu", "its compiled step measured 0.9x")
    out = tmp_path / "run"
    trainer = Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS))
    assert trainer.fit().steps == 8
    assert not compiled and trainer.train_step.forward is trainer.train_step.method
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == "auto: off, simclr: its compiled step measured 0.9x"
    assert not calls  # nothing to weigh
    # an explicit setting still wins
    trainer = Trainer(
        tiny_run_config(tiny_npz, tmp_path / "forced", *EIGHT_STEPS, "train.compile=true")
    )
    trainer.fit()
    assert compiled and trainer.train_step.compiled


def test_the_methods_measured_slower_compiled_are_the_ones_kept_eager():
    """``benchmarks/results/compile_cpu_methods.json``: inpainting 0.90x, split-brain 0.89x,
    colorization 1.07x (break-even ~2,400 steps); every other image method 1.13-1.44x.
    ``compile_cpu_video_rgbd.json``: video colorization 1.02-1.04x, RGB-D 1.09x."""
    from selfsup.methods import list_methods

    kept = {cls.name for cls in list_methods() if cls.keep_eager_on_cpu}
    assert kept == {"inpainting", "split_brain", "colorization", "video_colorization"}


@pytest.mark.parametrize(("short_below", "passes"), [(1e9, 1), (0.0, 2)])
def test_a_run_the_first_timing_shows_too_short_is_timed_once(
    tiny_npz, tmp_path, monkeypatch, short_below, passes
):
    """The first pass overstates the step (one-off allocations): when even it is too short to
    repay compiling, the second pass is skipped; otherwise the second is the one that counts."""
    from selfsup.methods.simclr import SimCLR
    from selfsup.models import build_method

    forward, calls = SimCLR.forward, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SimCLR, "forward", counted)
    cfg = tiny_run_config(tiny_npz, tmp_path / "run", *EIGHT_STEPS)
    method = build_method(cfg, 16, 3, 4)
    seconds = Trainer(cfg)._time_eager_step(
        method, torch.device("cpu"), 4, 3, 16, short_below=short_below
    )
    assert seconds is not None and seconds > 0 and len(calls) == passes
    assert all(p.grad is None for p in method.parameters())


def test_a_method_that_fails_the_timing_is_weighed_by_its_steps(tiny_npz, tmp_path, monkeypatch):
    """Where the set-up timing cannot run the method (its forward raises there), ``auto``
    falls back to counting steps and the run trains as usual, its weights untouched by the
    failed timing."""
    from selfsup.methods.simclr import SimCLR

    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: True)
    forward, calls = SimCLR.forward, []

    def fails_first(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not at set-up")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SimCLR, "forward", fails_first)
    out = tmp_path / "run"
    assert Trainer(tiny_run_config(tiny_npz, out, *EIGHT_STEPS)).fit().steps == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] == (
        "auto: off, 8 steps is shorter than the 1000 steps that repay compiling"
    )
    monkeypatch.setattr(SimCLR, "forward", forward)
    Trainer(
        tiny_run_config(tiny_npz, tmp_path / "eager", *EIGHT_STEPS, "train.compile=false")
    ).fit()
    a = load_file(str(out / "encoder.safetensors"))
    b = load_file(str(tmp_path / "eager" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
