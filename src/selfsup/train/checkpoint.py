"""Deprecated alias of the checkpoint functions of :mod:`selfsup.utils.io`."""

from selfsup.utils.io import (  # noqa: F401
    CHECKPOINT_FORMAT,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_weights,
    write_json,
)
