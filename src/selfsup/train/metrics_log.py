"""Metrics to JSONL (always) and TensorBoard (when installed and enabled)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON object per record to ``RUN/metrics.jsonl``; mirrors scalars to TB."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if enabled and self.path.exists() and self.path.stat().st_size:
            # a killed run may have left half a line: start ours on a fresh one
            with open(self.path, "rb+") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = None

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None and step is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and key not in {"step", "epoch"}:
                    self._tb.add_scalar(key, value, step)

    def size(self) -> int | None:
        """The bytes written to ``metrics.jsonl`` so far (every record is a whole line), or
        None off the main process."""
        if not self.enabled:
            return None
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
    return rows


def rewind_metrics(run_dir: Path, step: int, size: int | None) -> None:
    """Make ``RUN/metrics.jsonl`` what it was when the checkpoint of ``step`` was written, so
    that a resumed run logs every later step exactly once: cut it back to ``size`` bytes (the
    checkpoint records the file's size), or, for a checkpoint without that record or a file
    shorter than it, keep the rows logged at ``step`` or before. Step 0 (a fresh start) empties
    it. TensorBoard event files are not rewound."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    if size is not None and path.stat().st_size >= size:
        with open(path, "rb+") as f:
            f.truncate(size)
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        if not isinstance(row.get("step"), int) or row["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
