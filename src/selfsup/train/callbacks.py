"""What the training loop shares with the code around it: the run's state and callback hooks.

:class:`~selfsup.train.Trainer` calls every callback's hooks in order: ``on_fit_start`` once
the run is set up (before the first step, or the first step after a resume), ``on_step_end``
after every optimizer step (applied or skipped), ``on_fit_end`` after the final checkpoint.
Logging, the collapse monitor, pictures and checkpoints are callbacks of the trainer itself;
online evaluation (:class:`selfsup.pretraining.OnlineKnn`) comes from the layer above, which
knows about evaluation. A callback that puts the model in eval mode puts it back in train mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.config import RunConfig
from selfsup.data import ImageSource
from selfsup.methods import Method
from selfsup.train.metrics_log import MetricsLogger


@dataclass
class TrainingRun:
    """One training run as the loop and its callbacks see it.

    ``step`` counts the optimizer steps done so far (a resumed run starts at ``start_step``);
    in ``on_step_end`` it already includes the step just taken. ``method`` is the bare method;
    ``model`` what the loop steps (the method, its DDP wrapper). ``progress`` is the progress
    bar (``progress.write`` prints without breaking it).
    """

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    is_main: bool
    world_size: int
    source: ImageSource
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    logger: MetricsLogger
    progress: Any
    encoder_meta: dict[str, Any]
    num_classes: int | None
    steps_per_epoch: int
    total_steps: int
    start_step: int = 0
    step: int = 0
    lr: float = math.nan
    last_loss: float = math.nan
    skipped_steps: int = 0

    @property
    def epoch(self) -> float:
        """Epochs done (fractional)."""
        return self.step / self.steps_per_epoch

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` (and TensorBoard) at the current step."""
        self.logger.log(record, self.step)


@dataclass
class StepOutput:
    """What one optimizer step gave: the loss (0-d tensor, this process's), the method's
    metrics plus ``grad_norm``, whether the update was applied (False for a skipped non-finite
    step) and the global batch size."""

    loss: torch.Tensor
    metrics: dict[str, Any]
    applied: bool
    images: int


class Callback:
    """Base class of training callbacks; every hook does nothing unless overridden."""

    serves: ClassVar[str | None] = None
    """The config section this callback carries out (e.g. ``train.knn_monitor``), if any."""

    def on_fit_start(self, run: TrainingRun) -> None:
        """Once, after setup and before the first step of this session."""

    def on_step_end(self, run: TrainingRun, out: StepOutput) -> None:
        """After every optimizer step; ``run.step`` includes it."""

    def on_fit_end(self, run: TrainingRun) -> None:
        """Once, after the last step and the final checkpoint."""
