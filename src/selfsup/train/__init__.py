"""Training: the loop, optimizers and schedules, callbacks, metrics.

The layer below (``selfsup.utils``) holds the distributed helpers and checkpoint I/O it uses;
``selfsup.models`` builds the method it trains.
"""

from selfsup.errors import TrainingError
from selfsup.models import build_method  # deprecated alias: build it with selfsup.models
from selfsup.train.callbacks import Callback, StepOutput, TrainingRun
from selfsup.train.trainer import Trainer, TrainResult, TrainStep

__all__ = [
    "Callback",
    "StepOutput",
    "TrainResult",
    "TrainStep",
    "Trainer",
    "TrainingError",
    "TrainingRun",
    "build_method",
]
