"""Deprecated alias: encoders are built and loaded by :mod:`selfsup.models`."""

from selfsup.models import (  # noqa: F401
    LoadedEncoder,
    build_encoder,
    encoder_meta,
    load_encoder,
    load_encoder_with_head,
    make_encoder,
)
