"""Tiny training runs for the trainer's tests: a SimCLR config on a ``resnet_tiny`` that trains
in a second or two, and a stand-in for a kill."""

from __future__ import annotations

from selfsup.config import RunConfig, load_config
from selfsup.train import Callback

TINY_RUN = [
    "backbone.name=resnet_tiny", "train.batch_size=16", "train.epochs=2",
    "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
    "train.num_threads=1", "train.knn_monitor.every_epochs=0",
    "method_args.proj_hidden_dim=32", "method_args.proj_out_dim=16",
]  # fmt: skip
"""Overrides of every tiny run: 2 epochs of batch 16 in fp32 on one thread, quiet."""


def tiny_run_config(data, out_dir, *extra: str) -> RunConfig:
    """SimCLR on ``data`` into ``out_dir`` with :data:`TINY_RUN`, then ``extra`` (which win)."""
    return load_config(
        "simclr", None, [f"data.source={data}", f"out_dir={out_dir}", *TINY_RUN, *extra]
    )


class Crash(Exception):
    """Stands in for a kill: the process dies after logging step ``at``, before its checkpoint."""


class CrashAt(Callback):
    """Raises :class:`Crash` at the end of step ``at`` (after the trainer's own callbacks)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, run, out) -> None:
        if run.step == self.at:
            raise Crash


def without_timing(records: list[dict]) -> list[dict]:
    """A run's ``metrics.jsonl`` records as two runs of one config must log them alike: the
    ``end`` record (the summary's timings) and ``images_per_second`` dropped, and
    ``train.compile``'s reason cut to its decision (an ``auto`` reason quotes an eager step's
    measured time)."""
    return [
        {k: v.split(",")[0] if k == "compile" else v for k, v in r.items()
         if k != "images_per_second"}
        for r in records if r.get("event") != "end"
    ]  # fmt: skip
