"""Deprecated alias of :mod:`selfsup.utils.precision`."""

from selfsup.utils.precision import autocast_dtype, cpu_has_fast_bf16, use_channels_last  # noqa: F401
