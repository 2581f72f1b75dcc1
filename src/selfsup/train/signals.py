"""Graceful stop on SIGTERM/SIGINT: finish the current step, checkpoint, exit non-zero."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from selfsup.utils import distributed as dist_utils


class StopRequest:
    """Records SIGTERM/SIGINT instead of dying mid-step; a second SIGINT interrupts at once.

    Use as a context manager around the training loop (handlers are installed only in the main
    thread and restored on exit). Under DDP, :meth:`should_stop` agrees across processes, so
    every rank stops after the same step.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def should_stop(self, device: torch.device | str = "cpu") -> bool:
        requested = self.signum is not None
        if dist_utils.is_distributed():
            flag = torch.tensor([float(self.signum or 0)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0 and self.signum is None:
                self.signum = int(flag.item())
            requested = flag.item() > 0
        return requested
