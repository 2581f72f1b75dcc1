from selfsup._version import __version__  # noqa: F401
from selfsup.models.pretrained import Encoder  # noqa: F401  (selfsup.Encoder.from_pretrained)
