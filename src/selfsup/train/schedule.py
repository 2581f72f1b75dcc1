"""Where training stands (:class:`Progress`) and the learning rate there (:class:`LRSchedule`).

Every schedule of the loop is a function of progress, a point between the start (0) and the end
(1) of training, given as ``done`` of ``total`` units. Today the unit is the optimizer step
(``Trainer`` passes ``Progress(step, total_steps)``); a time budget would pass seconds from a
clock instead, with no change here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfsup.config import ScheduleConfig


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of training (steps today). ``step`` is the size of one
    optimizer step in those units (1 for steps), so that the warm-up's first step runs at
    ``step / warmup`` of the peak rather than at zero."""

    done: float
    total: float
    step: float = 1

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate = ``peak`` x a linear warm-up over ``warmup`` units, then a decay to
    ``cfg.final_lr_fraction`` of the peak at the end: cosine, linear, or none (constant),
    by ``cfg.name``."""

    cfg: ScheduleConfig
    peak: float
    warmup: float

    def multiplier(self, progress: Progress) -> float:
        """The fraction of the peak learning rate at ``progress``."""
        done, total, warmup = progress.done, progress.total, self.warmup
        if warmup > 0 and done < warmup:
            return (done + progress.step) / warmup
        if self.cfg.name == "constant":
            return 1.0
        span = max(1, total - warmup)
        decay = min(1.0, (done - warmup) / span)
        floor = self.cfg.final_lr_fraction
        if self.cfg.name == "linear":
            return floor + (1 - floor) * (1 - decay)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * decay))

    def apply(self, optimizer: torch.optim.Optimizer, progress: Progress) -> float:
        """Set every parameter group's lr for ``progress`` (keeping each group's ``lr_scale``);
        returns the scheduled lr."""
        return set_lr(optimizer, self.peak, self.multiplier(progress))


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak LR at ``step`` of ``total_steps`` (steps as the unit)."""
    return LRSchedule(cfg, 1.0, warmup_steps).multiplier(Progress(step, total_steps))


def set_lr(optimizer: torch.optim.Optimizer, peak: float, multiplier: float) -> float:
    """Set every group's lr to ``peak * multiplier`` (times the group's ``lr_scale``, if any;
    a ``fixed_lr`` group stays at ``peak`` times its scale); returns ``peak * multiplier``."""
    lr = peak * multiplier
    for group in optimizer.param_groups:
        group["lr"] = (peak if group.get("fixed_lr") else lr) * group.get("lr_scale", 1.0)
    return lr


def view_size_phases(
    schedule: list[tuple[float, int]] | None,
) -> list[tuple[float, int | None]]:
    """A ``train.view_size_schedule`` (``[[start fraction, size], ...]`` from 0) as the share
    of the run each view size lasts: ``[(share, size), ...]`` with the shares summing to 1, one
    entry per distinct size (a size the schedule returns to adds up). Without a schedule,
    ``[(1.0, None)]``: the views keep their size for the whole run."""
    if not schedule:
        return [(1.0, None)]
    shares: dict[int, float] = {}
    ends = [f for f, _ in schedule[1:]] + [1.0]
    for (start, size), end in zip(schedule, ends, strict=True):
        shares[size] = shares.get(size, 0.0) + end - start
    return [(share, size) for size, share in shares.items()]
