"""precision=auto picks bf16 only where the CPU has native bf16; the CPU class is read from
the flags the OS reports (mocked here: every CPU class without needing the hardware)."""

from __future__ import annotations

import pytest
import torch

from selfsup.utils import precision
from selfsup.utils.precision import autocast_dtype, cpu_info, use_channels_last

AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
"""
ZEN4 = AVX2_EPYC.replace("7B12", "9B14").replace("bmi2", "bmi2 avx512f avx512bw avx512_bf16")
SAPPHIRE_RAPIDS = """model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve i8mm bf16 svebf16
CPU implementer\t: 0x41
"""
GRAVITON2 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp
"""


@pytest.mark.parametrize(
    "text, native, flags",
    [
        (AVX2_EPYC, False, ["avx2"]),
        (ZEN4, True, ["avx2", "avx512f", "avx512_bf16"]),
        (
            SAPPHIRE_RAPIDS,
            True,
            ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"],
        ),
        (GRAVITON3, True, ["asimd", "sve", "bf16", "i8mm"]),
        (GRAVITON2, False, ["asimd"]),
    ],
    ids=["avx2", "zen4", "sapphire-rapids", "graviton3", "graviton2"],
)
def test_cpu_class_from_reported_flags(text, native, flags):
    info = cpu_info(text)
    assert info["native_bf16"] is native
    assert info["flags"] == flags
    assert info["model"]


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if native else None)
    assert use_channels_last(cpu, "auto") is native
    # explicit settings are obeyed whatever the CPU
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16


@pytest.mark.parametrize("text, expected", [(AVX2_EPYC, False), (GRAVITON3, True)])
def test_native_bf16_falls_back_to_the_os_flags_when_torch_does_not_know(
    monkeypatch, text, expected
):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(precision, "cpu_info", lambda: cpu_info(text))
    monkeypatch.delenv(precision.FORCE_BF16_ENV, raising=False)
    precision.cpu_has_fast_bf16.cache_clear()
    try:
        assert precision.cpu_has_fast_bf16() is expected
    finally:
        precision.cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize("forced, expected", [("1", True), ("0", False)])
def test_force_bf16_switch_overrides_the_probe(monkeypatch, forced, expected):
    """SELFSUP_FORCE_BF16 lets CI take the bf16 paths of a newer CPU (1) or the fp32 paths
    of an older one (0) on whatever machine it has."""
    monkeypatch.setattr(precision, "_probe_fast_bf16", lambda: not expected)
    monkeypatch.setenv(precision.FORCE_BF16_ENV, forced)
    assert precision.cpu_has_fast_bf16() is expected
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if expected else None)
    monkeypatch.delenv(precision.FORCE_BF16_ENV)
    assert precision.cpu_has_fast_bf16() is (not expected)


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "amp", "steps", "budget", "compilations", "keep_eager", "expected", "why"),
    [
        # fp32 on the CPU (the only place the compiled step measured faster), long enough
        (CPU, None, 1000, None, 1, None, True, "auto: on, fp32 on the CPU for 1000 steps"),
        (CPU, None, 10**6, None, 1, None, True, "auto: on"),
        (CPU, None, 10, 200.0, 1, None, True, "for a 200 s budget"),  # steps are a guess
        # too short to repay the ~25 s of compiling
        (CPU, None, 999, None, 1, None, False, "shorter than the 1000 steps that repay"),
        (CPU, None, 10**6, 199.0, 1, None, False, "shorter than the 200 s that repay"),
        # one compilation per view size: the 5-minute speedrun's four sizes do not repay it,
        # the 15-minute one's do
        (CPU, None, 10, 300.0, 4, None, False, "shorter than the 800 s (4 compilations"),
        (CPU, None, 10, 900.0, 4, None, True, "900 s budget (4 compilations, one per view"),
        (CPU, None, 3999, None, 4, None, False, "shorter than the 4000 steps (4 compilations"),
        (CPU, None, 4000, None, 4, None, True, "auto: on"),
        # measured no faster: bf16 autocast on the CPU, and GPUs
        (CPU, torch.bfloat16, 10**6, None, 1, None, False, "bfloat16 autocast"),
        (CUDA, None, 10**6, None, 1, None, False, "off on cuda"),
        (CUDA, torch.bfloat16, 10**6, 3600.0, 1, None, False, "off on cuda"),
        # a setting that needs the eager method
        (CPU, None, 10**6, None, 1, "train.cpu_replicas runs the eager method", False, "replicas"),
    ],
)
def test_auto_compile_only_where_it_measured_faster_and_pays_for_itself(
    monkeypatch, device, amp, steps, budget, compilations, keep_eager, expected, why
):
    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: True)
    on, reason = precision.use_compile(
        "auto", device, amp, steps=steps, budget_seconds=budget, compilations=compilations,
        keep_eager=keep_eager,
    )  # fmt: skip
    assert on is expected and why in reason and reason.startswith("auto: ")


@pytest.mark.parametrize(
    ("steps", "step_seconds", "compilations", "expected", "why"),
    [
        # a full-width step (~4 s): 100 steps repay compiling, far below 1,000
        (100, 4.0, 1, True, "auto: on, fp32 on the CPU for 100 steps of 4 s eager (~400 s)"),
        # the cheapest steps (relative location, ~0.05 s): 2,000 steps do not
        (2000, 0.05, 1, False, "2000 steps of 0.05 s eager (~100 s) is shorter than the 200 s"),
        (4000, 0.05, 1, True, "auto: on"),
        # one compilation per view size
        (100, 4.0, 4, False, "shorter than the 800 s (4 compilations, one per view size)"),
    ],
)
def test_auto_weighs_a_run_of_steps_by_an_eager_steps_time(
    monkeypatch, steps, step_seconds, compilations, expected, why
):
    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: True)
    on, reason = precision.use_compile(
        "auto", CPU, None, steps=steps, step_seconds=step_seconds, compilations=compilations
    )
    assert on is expected and why in reason


def test_a_budget_outweighs_a_step_time(monkeypatch):
    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: True)
    on, reason = precision.use_compile(
        "auto", CPU, None, steps=10, budget_seconds=900.0, step_seconds=0.001
    )
    assert on and "900 s budget" in reason


@pytest.mark.parametrize("setting", [True, False, "true", "false"])
def test_an_explicit_compile_setting_is_obeyed_everywhere(setting):
    wanted = setting in (True, "true")
    for device, amp in [(CPU, None), (CPU, torch.bfloat16), (CUDA, torch.float16)]:
        on, reason = precision.use_compile(setting, device, amp, steps=1)
        assert on is wanted and reason == f"train.compile={str(wanted).lower()}"


def test_auto_stays_eager_where_inductor_has_no_cpp_compiler(monkeypatch):
    monkeypatch.setattr(precision, "cpu_compiler_found", lambda: False)
    on, reason = precision.use_compile("auto", CPU, None, steps=10**6)
    assert not on and reason == (
        "auto: off, inductor finds no C++ compiler to build CPU kernels with"
    )
    assert precision.use_compile(True, CPU, None, steps=1)[0]  # asked for: tried anyway


def test_no_cpp_compiler_is_detected(monkeypatch):
    from torch._inductor import config as inductor_config
    from torch._inductor import cpp_builder

    precision.cpu_compiler_found.cache_clear()
    cpp_builder.cpp_compiler_search.cache_clear()
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-compiler-xyz"))
    try:
        assert precision.cpu_compiler_found() is False
    finally:
        precision.cpu_compiler_found.cache_clear()
        cpp_builder.cpp_compiler_search.cache_clear()
