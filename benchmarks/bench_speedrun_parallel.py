"""Two cores, four ways to use them: one 2-thread process, two replicas in it, DDP, or two runs.

The speedrun trains in one process with one torch thread per core. At its small view sizes a
second thread buys only ~1.6x (``bench_view_sizes.py``), so two processes of one thread each
might do better. This benchmark runs the speedrun recipe at a fixed view size for ``--seconds``
each way, in alternating rounds, and reads the images each saw from its ``summary.json``:

- ``single``: one process, ``--threads`` threads, one replica (``train.cpu_replicas=1``);
- ``replicas``: one process, ``--threads`` threads, two replicas of one thread each
  (``train.cpu_replicas=2``: each half-batch runs forward and backward in its own thread;
  per-shard BatchNorm and negatives, no collectives; :mod:`selfsup.train.replicas`);
- ``ddp``: ``torchrun --nproc-per-node 2``, one thread per process, per-process BatchNorm
  (``train.sync_batchnorm=false``); the same global batch, split in two;
- ``ddp_syncbn``: the same with global-batch BatchNorm (the trainer's default under DDP);
- ``pair``: two independent 1-thread runs at once (an upper bound for data-parallel training:
  no communication at all; what the speedrun search rows do).

Usage: python benchmarks/bench_speedrun_parallel.py --view-size 12 --seconds 60 --rounds 2
Writes benchmarks/results/speedrun_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_method_steps as harness  # noqa: E402

WAYS = ("single", "replicas", "ddp", "ddp_syncbn", "pair")


def _overrides(args: argparse.Namespace, out: Path) -> list[str]:
    return ["--config", args.recipe, f"out_dir={out}", "train.progress=false",
            f"train.time_budget_minutes={args.seconds / 60}",
            f"train.view_size_schedule=[[0,{args.view_size}]]"]  # fmt: skip


def _img_s(out: Path) -> float:
    s = json.loads((out / "summary.json").read_text())
    return s["images_seen"] / s["seconds"]


def _run_all(commands: list[list[str]], env: dict[str, str], logs: list[Path]) -> None:
    """Start the commands at once (stderr to ``logs``: a pipe nobody reads could fill and
    stall a run), wait for all; a failure stops the benchmark with the end of its log."""
    procs = []
    for cmd, log in zip(commands, logs, strict=True):
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as err:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env))
    for proc, log in zip(procs, logs, strict=True):
        if proc.wait() != 0:
            raise SystemExit(f"{' '.join(proc.args)} failed:\n{log.read_text()[-3000:]}")


def run_way(way: str, args: argparse.Namespace, tmp: Path) -> float:
    """Images per second of the training loop (all processes together) one way."""
    train = [sys.executable, "-m", "selfsup", "train", "simclr"]
    env = {**os.environ}
    if way in ("single", "replicas"):
        out = tmp / way
        cmd = [*train, *_overrides(args, out), f"train.num_threads={args.threads}",
               f"train.cpu_replicas={2 if way == 'replicas' else 1}"]  # fmt: skip
        _run_all([cmd], env, [tmp / f"{way}.log"])
        return _img_s(out)
    env["OMP_NUM_THREADS"] = "1"
    if way.startswith("ddp"):
        out = tmp / way
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc-per-node", "2", "-m", "selfsup", "train", "simclr"]  # fmt: skip
        sync = "true" if way == "ddp_syncbn" else "false"
        cmd = [*launch, *_overrides(args, out), "train.num_threads=1",
               f"train.sync_batchnorm={sync}"]  # fmt: skip
        _run_all([cmd], env, [tmp / f"{way}.log"])
        return _img_s(out)
    outs = [tmp / f"pair{i}" for i in range(2)]
    cmds = [[*train, *_overrides(args, o), "train.num_threads=1"] for o in outs]
    _run_all(cmds, env, [tmp / f"pair{i}.log" for i in range(2)])
    return sum(_img_s(o) for o in outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="speedrun_5min")
    p.add_argument("--view-size", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    p.add_argument("--out", default="benchmarks/results/speedrun_parallel.json")
    args = p.parse_args()
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            ways = args.ways if r % 2 == 0 else args.ways[::-1]
            row = {}
            for way in ways:
                row[way] = run_way(way, args, Path(tmp) / f"r{r}")
                print(f"round {r} {way}: {row[way]:.0f} img/s", flush=True)
            rounds.append(row)
    median = {w: statistics.median(r[w] for r in rounds) for w in args.ways}
    vs_single = {w: statistics.median(r[w] / r["single"] for r in rounds)
                 for w in args.ways} if "single" in args.ways else {}  # fmt: skip
    print("median img/s:", {w: round(v) for w, v in median.items()})
    print("vs single (median of per-round ratios):", {w: round(v, 2) for w, v in vs_single.items()})
    import torch

    out = {"recipe": args.recipe, "view_size": args.view_size, "seconds": args.seconds,
           "threads_single": args.threads, "rounds": rounds, "median_img_s": median,
           "vs_single": vs_single,
           "machine": harness.machine_info(torch.device("cpu"), args.threads)}  # fmt: skip
    from selfsup.utils.io import write_json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
