"""Exceptions that carry a message meant for the user (the CLI prints them without traceback)."""


class SelfsupError(Exception):
    """Base class of user-facing errors."""


class ConfigError(SelfsupError, ValueError):
    """A configuration problem, with a message that names the offending key."""


class TrainingError(SelfsupError, RuntimeError):
    """A run stopped for a reason the user must see (non-finite loss, bad setup)."""


class TrainingInterrupted(TrainingError):
    """SIGTERM/SIGINT stopped a run after it wrote a checkpoint; ``--resume`` continues it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class MissingExtraError(SelfsupError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` extra."""
