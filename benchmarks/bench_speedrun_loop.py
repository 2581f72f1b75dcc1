"""Does the speedrun's training loop lose throughput outside its step?

The 5-minute speedrun finals saw 81% of the images that ``bench_view_sizes.py`` predicts from the
step's speed. This benchmark finds where the rest goes. In one process, rounds alternate between

- the **harness**: the speedrun's SimCLR step at one view size on pre-loaded uint8 batches
  (``bench_method_steps.py``, as ``bench_view_sizes.py`` times it), ``--steps`` steps;
- the **loop**: ``Trainer.fit`` of the speedrun recipe at the same view size under a time budget
  of ``--seconds`` (set-up, the prefetching loader, logging, checkpoints every epoch: all of it),
  with every ``TrainStep`` call timed.

Per round it reports the harness's img/s, the loop's img/s over its training seconds, the loop's
img/s inside its steps only, the set-up seconds and the share of the loop's seconds spent
outside the step. Medians over the rounds, and the spread, go to
``benchmarks/results/speedrun_loop.json``.

Usage: python benchmarks/bench_speedrun_loop.py --view-size 12 --rounds 4 --seconds 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_method_steps as harness  # noqa: E402

from selfsup.config import load_config  # noqa: E402
from selfsup.train.trainer import Trainer, TrainStep  # noqa: E402
from selfsup.utils.io import write_json  # noqa: E402


class _TimedStep(TrainStep):
    """A TrainStep that records the seconds of every call (``seconds``)."""

    seconds: list[float]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        t = time.perf_counter()
        out = super().__call__(*args, **kwargs)
        self.seconds.append(time.perf_counter() - t)
        return out


class _TimedTrainer(Trainer):
    """The trainer, its step swapped for :class:`_TimedStep` once set up."""

    def _set_up(self) -> Any:
        run = super()._set_up()
        self.train_step.__class__ = _TimedStep
        self.train_step.seconds = []  # type: ignore[attr-defined]
        return run


def loop_round(args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    """One time-budgeted ``Trainer.fit`` of the recipe at a fixed view size."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = load_config(None, args.recipe, [
        f"out_dir={out_dir}", "data.source=cifar10", "train.progress=false",
        f"train.time_budget_minutes={args.seconds / 60}",
        f"train.view_size_schedule=[[0,{args.view_size}]]",
        f"train.num_threads={args.threads}",
    ])  # fmt: skip
    trainer = _TimedTrainer(cfg)
    trainer.fit()
    summary = json.loads((out_dir / "summary.json").read_text())
    inside = trainer.train_step.seconds  # type: ignore[attr-defined]
    images = summary["images_seen"]
    return {
        "loop_img_s": images / summary["seconds"],
        "in_step_img_s": images / sum(inside),
        "median_step_img_s": cfg.train.batch_size / statistics.median(inside),
        "outside_step_share": 1 - sum(inside) / summary["seconds"],
        "setup_seconds": summary["elapsed_seconds"] - summary["seconds"],
        "steps": len(inside),
    }


def harness_round(bench: Any, args: argparse.Namespace) -> float:
    """img/s of the harness's step (one warm-up step, then ``--steps`` timed)."""
    bench.step(0)
    t = time.perf_counter()
    for i in range(args.steps):
        bench.step(i)
    return args.batch_size * args.steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="speedrun_5min")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--view-size", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/speedrun_loop.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bench, precision, source = harness.recipe_bench(args.recipe, args.batch_size, 3)
    bench.method.set_view_size(args.view_size)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["harness", "loop"] if r % 2 == 0 else ["loop", "harness"]
            row: dict[str, float] = {}
            for what in order:
                torch.set_num_threads(args.threads)
                if what == "harness":
                    row["harness_img_s"] = harness_round(bench, args)
                else:
                    row.update(loop_round(args, Path(tmp) / f"round{r}"))
            row["loop_vs_harness"] = row["loop_img_s"] / row["harness_img_s"]
            rounds.append(row)
            print(f"round {r}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    keys = rounds[0].keys()
    median = {k: statistics.median(r[k] for r in rounds) for k in keys}
    spread = {k: [min(r[k] for r in rounds), max(r[k] for r in rounds)] for k in keys}
    print("median: " + ", ".join(f"{k} {v:.3g}" for k, v in median.items()))
    out = {"recipe": args.recipe, "view_size": args.view_size, "batch_size": args.batch_size,
           "threads": args.threads, "precision": precision, "seconds_per_loop": args.seconds,
           "harness_steps": args.steps, "data": source, "rounds": rounds, "median": median,
           "min_max": spread,
           "machine": harness.machine_info(torch.device("cpu"), args.threads)}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
