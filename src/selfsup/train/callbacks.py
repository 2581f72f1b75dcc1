"""What the training loop shares with the code around it: the run's state and callback hooks.

:class:`~selfsup.train.Trainer` calls every callback's hooks in order: ``on_fit_start`` once
the run is set up (before the first step, or the first step after a resume), ``on_step_end``
after every optimizer step (applied or skipped), ``on_fit_end`` after the final checkpoint.
Its own callbacks, in this order, are :class:`LogMetrics`, :class:`ProgressBar`,
:class:`CollapseMonitor` and :class:`Pictures`; callbacks given to the trainer run after them.
Online evaluation (:class:`selfsup.pretraining.OnlineKnn`) is such a callback, from the layer
above, which knows about evaluation. A callback that puts the model in eval mode puts it back
in train mode. ``on_step_end`` runs on every process under DDP (the collectives in
:class:`LogMetrics` need all of them); callbacks that write files check ``run.is_main``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from selfsup.config import RunConfig, TrainConfig
from selfsup.data import ImageSource
from selfsup.methods import Method
from selfsup.models import write_pictures
from selfsup.train.metrics_log import MetricsLogger
from selfsup.utils import distributed as dist_utils


@dataclass
class TrainingRun:
    """One training run as the loop and its callbacks see it.

    ``step`` counts the optimizer steps done so far (a resumed run starts at ``start_step``);
    in ``on_step_end`` it already includes the step just taken. ``method`` is the bare method;
    ``model`` what the loop steps (the method, or its DDP wrapper). ``started`` is the
    ``time.perf_counter()`` at the first step of this session.
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
    encoder_meta: dict[str, Any]
    num_classes: int | None
    steps_per_epoch: int
    total_steps: int
    start_step: int = 0
    step: int = 0
    lr: float = math.nan
    last_loss: float = math.nan
    images_per_second: float = math.nan
    skipped_steps: int = 0
    started: float = 0.0
    warmed_up: bool = False
    """Whether the learning-rate warm-up is over (set by the trainer every step)."""

    @property
    def epoch(self) -> float:
        """Epochs done (fractional)."""
        return self.step / self.steps_per_epoch

    @property
    def logging_now(self) -> bool:
        """Whether the step just taken is logged (every ``train.log_every_steps`` and the last)."""
        return self.step % self.cfg.train.log_every_steps == 0 or self.step == self.total_steps

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` (and TensorBoard) at the current step."""
        self.logger.log(record, self.step)

    def write(self, message: str) -> None:
        """Print a line on the main process without breaking the progress bar."""
        if self.is_main:
            tqdm.write(message)


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


class ProgressBar(Callback):
    """A tqdm bar of the steps on the main process (``train.progress``), showing the last
    logged loss and images/s."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_fit_start(self, run: TrainingRun) -> None:
        self.bar = tqdm(
            total=run.total_steps,
            initial=run.start_step,
            disable=not (run.is_main and run.cfg.train.progress),
            desc=run.cfg.method,
            unit="step",
            dynamic_ncols=True,
        )

    def on_step_end(self, run: TrainingRun, out: StepOutput) -> None:
        if self.bar.total != run.total_steps:  # a time budget's estimate moves
            self.bar.total = run.total_steps
        self.bar.update(1)
        if run.logging_now:
            self.bar.set_postfix(loss=f"{run.last_loss:.4f}", img_s=f"{run.images_per_second:.0f}")

    def on_fit_end(self, run: TrainingRun) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LogMetrics(Callback):
    """Every ``train.log_every_steps`` steps and at the last: the loss averaged over processes
    (kept as ``run.last_loss``), lr, images/s since the previous record (kept as
    ``run.images_per_second``) and the method's metrics, as one ``metrics.jsonl`` record."""

    def on_fit_start(self, run: TrainingRun) -> None:
        self.since: float | None = None
        self.images = 0

    def on_step_end(self, run: TrainingRun, out: StepOutput) -> None:
        self.images += out.images
        if not run.logging_now:
            return
        now = time.perf_counter()
        run.last_loss = dist_utils.all_reduce_mean(out.loss.detach().float()).item()
        since = run.started if self.since is None else self.since
        run.images_per_second = self.images / max(now - since, 1e-9)
        record: dict[str, Any] = {
            "step": run.step,
            "epoch": run.epoch,
            "loss": run.last_loss,
            "lr": run.lr,
            "images_per_second": run.images_per_second,
            **out.metrics,
        }
        if run.skipped_steps:
            record["skipped_steps"] = run.skipped_steps
        run.log(record)
        self.since, self.images = now, 0


class CollapseWarning(UserWarning):
    """The embeddings are collapsing towards a constant."""


COLLAPSE_HELP = "docs/methods/README.md#when-a-method-collapses-what-to-try"


def collapse_reason(
    metrics: dict[str, Any], tcfg: TrainConfig, warmed_up: bool = True
) -> str | None:
    """Why a step's metrics look like collapse, or None: ``embedding_spread`` (1 spread, 0
    collapsed) under ``train.collapse_threshold``, ``effective_rank`` (1 = every embedding on
    one direction) under ``train.collapse_min_effective_rank``, or, once ``warmed_up``, under
    ``train.collapse_min_rank_fraction`` of ``effective_rank_max`` (the largest rank the batch
    could show). Metrics a method does not report are not checked."""
    if "embedding_spread" in metrics:
        spread = float(metrics["embedding_spread"])
        if spread < tcfg.collapse_threshold:
            return f"embedding spread {spread:.4f} < {tcfg.collapse_threshold}"
    if "effective_rank" in metrics:
        rank = float(metrics["effective_rank"])
        if rank < tcfg.collapse_min_effective_rank:
            return f"effective rank {rank:.3f} < {tcfg.collapse_min_effective_rank}"
        top = float(metrics.get("effective_rank_max", 0.0))
        floor = tcfg.collapse_min_rank_fraction * top
        if warmed_up and rank < floor:
            return (
                f"effective rank {rank:.1f} < {tcfg.collapse_min_rank_fraction:.0%} of the "
                f"{top:.0f} dimensions the batch could span (dimensional collapse)"
            )
    return None


class CollapseMonitor(Callback):
    """At logged steps, a :class:`CollapseWarning` (once per run, and a ``collapse_warning``
    record) when the method's metrics look like collapse (:func:`collapse_reason`; the rank
    fraction only after the learning-rate warm-up, ``run.warmed_up``)."""

    def on_fit_start(self, run: TrainingRun) -> None:
        self.warned = False

    def on_step_end(self, run: TrainingRun, out: StepOutput) -> None:
        if self.warned or not (run.is_main and run.logging_now):
            return
        reason = collapse_reason(out.metrics, run.cfg.train, run.warmed_up)
        if reason is None:
            return
        self.warned = True
        warnings.warn(
            f"step {run.step}: {reason}: the representation may be collapsing (images mapped "
            f"to nearly the same embedding, or to a few directions); what to try: {COLLAPSE_HELP}",
            CollapseWarning,
            stacklevel=1,
        )
        run.log({"step": run.step, "event": "collapse_warning", "reason": reason})


class Pictures(Callback):
    """Every ``train.pictures_every_epochs`` epochs, the method's pictures of the first training
    images in ``RUN/pictures/`` (:func:`selfsup.models.write_pictures`; main process)."""

    def on_step_end(self, run: TrainingRun, out: StepOutput) -> None:
        every = run.cfg.train.pictures_every_epochs * run.steps_per_epoch
        if every and run.is_main and run.step % every == 0:
            tag = f"step{run.step:08d}"
            write_pictures(run.method, run.source, run.run_dir, tag, run.device)
            run.model.train()
