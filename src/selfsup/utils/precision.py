"""Precision, memory-format and compile choices for a device (autocast dtype, channels_last,
``train.compile=auto``)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None = fp32)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if precision == "bf16":
        return torch.bfloat16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve_bf16", "svebf16")
"""CPU feature flags (Linux ``/proc/cpuinfo`` names) that mean bf16 matrix arithmetic runs in
hardware: AVX-512 BF16 and AMX on x86, the BF16 extension on Arm (``bf16`` in ``Features``)."""

REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                  "asimd", "sve", "bf16", "i8mm")  # fmt: skip
"""The flags a benchmark or speedrun records to say which class of CPU produced a number."""


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The CPU's model name, its relevant feature flags and whether it has native bf16.

    Reads ``/proc/cpuinfo`` (or ``cpuinfo_text``, for tests); on other systems the model comes
    from :func:`platform.processor` and the flags are empty. Returns ``{"model": str,
    "flags": [...] (those of :data:`REPORTED_FLAGS` present), "native_bf16": bool,
    "logical_cpus": int}``.
    """
    text = cpuinfo_text
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
    if not model:
        model = platform.processor() or platform.machine()
    native = any(f in flags for f in NATIVE_BF16_FLAGS)
    return {
        "model": model,
        "flags": [f for f in REPORTED_FLAGS if f in flags],
        "native_bf16": native,
        "logical_cpus": os.cpu_count() or 1,
    }


FORCE_BF16_ENV = "SELFSUP_FORCE_BF16"
"""Environment switch over the CPU probe: ``1`` makes :func:`cpu_has_fast_bf16` say yes (so
``precision: auto`` picks bf16 on any CPU, as on one with native bf16), ``0`` says no. CI runs
the precision-sensitive tests (``pytest -m bf16``) once with ``1``, so a machine without native
bf16 exercises the paths a newer CPU takes."""


def cpu_has_fast_bf16() -> bool:
    """True when the CPU runs bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm).

    Without those instructions bf16 is emulated and is many times *slower* than fp32 (measured
    on an AVX2-only EPYC: ResNet-18 training 2 img/s in bf16 vs 57 img/s in fp32), so ``auto``
    precision falls back to fp32 there. ``$SELFSUP_FORCE_BF16`` (``1`` or ``0``) overrides the
    answer; otherwise asks torch first (its own CPU-capability probe), then the flags the OS
    reports (:func:`cpu_info`).
    """
    forced = os.environ.get(FORCE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _probe_fast_bf16()


@functools.lru_cache(maxsize=1)
def _probe_fast_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(bool(getattr(cpu, name, lambda: False)()) for name in checks):
        return True
    return bool(cpu_info()["native_bf16"])


cpu_has_fast_bf16.cache_clear = _probe_fast_bf16.cache_clear  # type: ignore[attr-defined]


def use_channels_last(device: torch.device, setting: str | bool) -> bool:
    """Resolve the ``channels_last`` setting: ``auto`` = on for CUDA and for bf16-capable CPUs."""
    if isinstance(setting, bool):
        return setting
    if setting in {"true", "false"}:
        return setting == "true"
    return device.type == "cuda" or cpu_has_fast_bf16()


COMPILE_AUTO_MIN_STEPS = 1000
"""Where a run's step time is unknown (:func:`use_compile` without ``step_seconds``),
``train.compile=auto`` compiles a run planned for at least this many steps per compilation.
On 2 cores a cold compile costs ~25 s and an fp32 SimCLR step at quarter width and batch 256
saves ~0.14 s (break-even ~185 steps, ``benchmarks/results/compile_cpu.json``). The Trainer
times an eager step instead, since break-evens range from 24 steps (full width) to ~3,000
(the cheapest steps, ``compile_cpu_methods.json``)."""

COMPILE_AUTO_MIN_SECONDS = 200.0
"""``train.compile=auto`` compiles a run expected to train at least this many seconds per
compilation: a time budget, or the planned steps times an eager step's measured time. With
15-55 s per cold compile and steps 1.13-1.44x faster compiled, compiling pays from ~100-200 s
per compilation at the typical 1.3x; 200 s is the threshold."""


@functools.lru_cache(maxsize=1)
def cpu_compiler_found() -> bool:
    """Whether inductor finds the C++ compiler it builds CPU kernels with (``g++`` / ``clang++``
    or ``$CXX``; ``cl`` on Windows): without one, a compiled CPU step fails at its first call."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an inductor without the probe
        return False
    return True


def compile_blocked(
    device: torch.device, amp_dtype: torch.dtype | None, keep_eager: str | None = None
) -> str | None:
    """Why ``train.compile=auto`` leaves a run eager whatever its length (``"auto: off, ..."``),
    or None where only the run's length decides (fp32 on the CPU, a C++ compiler found)."""
    if keep_eager is not None:
        return f"auto: off, {keep_eager}"
    if device.type != "cpu":
        return f"auto: off on {device.type} (no gain measured on a GPU)"
    if amp_dtype is not None:
        return f"auto: off with {str(amp_dtype).removeprefix('torch.')} autocast on the CPU"
    if not cpu_compiler_found():
        return "auto: off, inductor finds no C++ compiler to build CPU kernels with"
    return None


def use_compile(
    setting: bool | str,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    *,
    steps: int,
    budget_seconds: float | None = None,
    step_seconds: float | None = None,
    compilations: int = 1,
    keep_eager: str | None = None,
) -> tuple[bool, str]:
    """Resolve ``train.compile``: ``(compile?, why)``.

    ``true`` / ``false`` are obeyed. ``auto`` compiles only where it measured faster and the run
    is long enough to repay the compile time: on the CPU, without autocast (fp32: 1.34-1.40x
    faster steps at quarter and full width; with bf16 autocast the compiled step was
    0.91-0.98x), for a run of at least :data:`COMPILE_AUTO_MIN_SECONDS` seconds per compilation:
    a time budget (``budget_seconds``) or ``steps`` of ``step_seconds`` each (an eager step's
    measured time; with a view-size schedule, its mean over the run's sizes); with neither
    known, :data:`COMPILE_AUTO_MIN_STEPS` steps per compilation. ``compilations`` is how many
    times the run compiles: one per view size of a ``train.view_size_schedule`` (each new
    input shape recompiles, ~25 s each). A CPU without a C++ compiler for inductor
    (:func:`cpu_compiler_found`) stays eager. ``keep_eager`` says why this run should stay eager
    whatever its length (``auto`` then stays off; e.g. ``train.cpu_replicas``, whose caller
    refuses an explicit ``true``). Under ``auto`` a compiled step that fails at run time falls
    back to eager (:class:`selfsup.train.TrainStep`'s ``eager_fallback``).
    """
    if isinstance(setting, bool) or setting in {"true", "false"}:
        on = setting is True or setting == "true"
        return on, f"train.compile={'true' if on else 'false'}"
    blocked = compile_blocked(device, amp_dtype, keep_eager)
    if blocked is not None:
        return False, blocked
    per = f" ({compilations} compilations, one per view size)" if compilations > 1 else ""
    if budget_seconds is not None:
        needed = COMPILE_AUTO_MIN_SECONDS * compilations
        long_enough = budget_seconds >= needed
        length, threshold = f"a {budget_seconds:g} s budget", f"{needed:g} s{per}"
    elif step_seconds is not None:
        needed, seconds = COMPILE_AUTO_MIN_SECONDS * compilations, steps * step_seconds
        long_enough = seconds >= needed
        length = f"{steps} steps of {step_seconds:.3g} s eager (~{seconds:.0f} s)"
        threshold = f"{needed:g} s{per}"
    else:
        needed = COMPILE_AUTO_MIN_STEPS * compilations
        long_enough = steps >= needed
        length, threshold = f"{steps} steps", f"{needed} steps{per}"
    if not long_enough:
        return False, f"auto: off, {length} is shorter than the {threshold} that repay compiling"
    return True, f"auto: on, fp32 on the CPU for {length}{per}"
