"""Shared pieces of the CIFAR-10 CPU-budget benchmarks (``pretext_budget.py``,
``methods_budget.py``, ``run_table.py``, ``data_vs_compute.py``): their common arguments,
train-or-reuse a run, and a results file that several processes
(each running its own ``--only`` rows) can update without losing each other's rows."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from selfsup.config import load_config
from selfsup.pretraining import pretrain
from selfsup.utils.io import latest_checkpoint


def add_budget_args(p: argparse.ArgumentParser, name: str, only_help: str) -> None:
    """The arguments every budget benchmark takes: ``--out`` (runs under
    ``benchmarks/runs/<name>``), ``--results`` (``benchmarks/results/<name>.json``), ``--only``,
    ``--threads`` (torch threads per process) and ``--overrides`` (key=value for every run)."""
    p.add_argument("--out", default=f"benchmarks/runs/{name}")
    p.add_argument("--results", default=f"benchmarks/results/{name}.json")
    p.add_argument("--only", nargs="*", help=only_help)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="key=value for every run (e.g. a tiny smoke budget)",
    )


def train(method: str, recipe: str, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Train (or resume, or reuse) one run; returns its summary.json."""
    cfg = load_config(method, recipe, [f"out_dir={out_dir}", "train.progress=false", *overrides])
    summary = out_dir / "summary.json"
    if not summary.exists():
        pretrain(cfg, resume=latest_checkpoint(out_dir) is not None)
    return json.loads(summary.read_text())


def train_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """The training-cost fields a result row carries, from a run's summary.json."""
    return {
        "checkpoint_step": summary.get("steps"),
        "train_minutes": summary["seconds"] / 60,
        "train_images_per_second": summary["images_per_second"],
        "images_seen": summary.get("images_seen"),
        "train_threads": summary.get("threads"),
    }


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of a results file by name ({} when it does not exist yet)."""
    if not path.exists():
        return {}
    return {r["name"]: r for r in json.loads(path.read_text())["rows"]}


def write_rows(path: Path, rows: dict[str, dict[str, Any]], budget: dict[str, Any]) -> None:
    """Write the results, merged with rows another process wrote meanwhile (ours win)."""
    for name, row in read_rows(path).items():
        rows.setdefault(name, row)
    result = {
        "budget": budget,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "rows": list(rows.values()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
