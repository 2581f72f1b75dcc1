"""Training: the loop, optimizers and schedules, distributed helpers, checkpoints, metrics.

``Trainer`` and friends are imported lazily so that methods can use
:mod:`selfsup.train.distributed` without a circular import.
"""

from typing import Any

__all__ = ["TrainResult", "Trainer", "TrainingError", "build_method"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from selfsup.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'selfsup.train' has no attribute {name!r}")
