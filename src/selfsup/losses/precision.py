"""Losses run in float32 with autocast disabled, whatever the caller's autocast.

Casting a loss's inputs with ``.float()`` is not enough under autocast: ``z1.T @ z2`` of two
float32 tensors still runs in bf16 (CPU) or fp16/bf16 (CUDA) inside an autocast region, so
similarity logits, cross-correlations and covariances come out rounded to 8 (bf16) mantissa
bits. :func:`full_precision` wraps a loss so that autocast is off inside it and every floating
tensor argument (also inside lists and tuples) is cast to float32; gradients flow back through
the casts into the low-precision activations as usual.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable[..., Any])


def _to_fp32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_fp32(v) for v in value)
    return value


def _device_types(values: Any) -> set[str]:
    found: set[str] = set()
    for v in values:
        if isinstance(v, Tensor):
            found.add(v.device.type)
        elif isinstance(v, (list, tuple)):
            found |= _device_types(v)
    return found


def full_precision(fn: F) -> F:
    """Decorator: run ``fn`` with autocast disabled and its floating tensor arguments in
    float32 (see the module docstring). Shapes and return values are ``fn``'s own."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        devices = _device_types(args) | _device_types(kwargs.values()) or {"cpu"}
        args = tuple(_to_fp32(a) for a in args)
        kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
        if len(devices) == 1:  # the usual case, and the form torch.compile traces
            with torch.autocast(devices.pop(), enabled=False):
                return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device in sorted(devices):
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
