"""The one place that builds an encoder or a method from a config or a run directory.

Train, evaluate, export, sweep, quickstart and the CLI all come here:

- :func:`make_encoder` (a backbone config -> a fresh encoder), :func:`build_encoder` (an
  ``encoder.json`` meta -> a fresh encoder), :func:`encoder_meta` (the meta itself);
- :func:`build_method` (a run config -> a fresh method), :func:`method_encoder_meta`;
- :func:`load_encoder` (a run / checkpoint / file / ``random:SPEC`` -> trained encoder),
  :func:`load_method` (a run directory -> its trained method), :func:`load_encoder_with_head`;
- :func:`write_pictures` (a method's pictures of some images, as PNG files);
- :class:`Encoder` (``selfsup.Encoder``): a trained encoder with its preprocessing, loaded with
  ``from_pretrained`` and written with ``save_pretrained``.
"""

from selfsup.models.encoders import (
    LoadedEncoder,
    build_encoder,
    encoder_meta,
    load_encoder,
    make_encoder,
)
from selfsup.models.methods import (
    build_method,
    load_encoder_with_head,
    load_method,
    method_encoder_meta,
    random_method,
    write_pictures,
)
from selfsup.models.pretrained import Encoder

__all__ = [
    "Encoder",
    "LoadedEncoder",
    "build_encoder",
    "build_method",
    "encoder_meta",
    "load_encoder",
    "load_encoder_with_head",
    "load_method",
    "random_method",
    "make_encoder",
    "method_encoder_meta",
    "write_pictures",
]
