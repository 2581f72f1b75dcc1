"""A child process for test_checkpoint_faults.py that writes checkpoints until it is killed.
A module of its own, importing only torch and selfsup.utils.io, so that the fork server
preloads it and every child starts in milliseconds."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from selfsup.utils.io import save_checkpoint


def model_at(step: int) -> nn.Module:
    """About 1 MB of weights, every value equal to ``step`` (what a checkpoint must hold)."""
    model = nn.Linear(256, 1024)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))
    return model


def save(run: Path, step: int) -> None:
    """Checkpoint ``step`` of the ``model_at(step)`` run into ``run``."""
    model = model_at(step)
    save_checkpoint(run, step, model, model, {"step": torch.tensor(step), "elapsed_seconds": 1.0},
                    {"method": "m"}, keep_last=2)  # fmt: skip


def write_forever(run: Path, start: int) -> None:
    """Checkpoint ``start``, ``start + 1``, ... (every third step twice, as when a finished run
    is resumed) until killed."""
    torch.set_num_threads(1)
    step = start
    while True:
        save(run, step)
        if step % 3 == 0:
            save(run, step)
        step += 1
