"""One process, two cores: one replica with 2 intra-op threads vs ``train.cpu_replicas=2``.

Times the speedrun recipe's full training step (the harness of ``bench_method_steps.py``:
the LR schedule, then ``selfsup.train.TrainStep`` with augmentation, forward, backward and the
optimizer, at the precision ``precision=auto`` picks) at each ``--sizes`` view size, two ways
in the same process, rounds interleaved:

- ``single``: one replica, ``--threads`` intra-op threads (what a run does by default);
- ``replicas``: ``--replicas`` replicas of ``--threads / --replicas`` threads each
  (:mod:`selfsup.train.replicas`: each shard's forward and backward in its own thread).

Both steps share the method and its optimizer; ``ratio`` is the median of the per-round
replicas / single img/s. The two train differently (per-shard BatchNorm and negatives), so
this is speed only; quality is a speedrun search row.

Usage: python benchmarks/bench_replicas.py --sizes 12 16 24 32 --rounds 5
Writes benchmarks/results/replicas.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_method_steps as harness  # noqa: E402

from selfsup.train.replicas import CPUReplicas  # noqa: E402
from selfsup.utils.io import write_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="speedrun_5min")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[12, 16, 24, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/replicas.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bench, precision, source = harness.recipe_bench(args.recipe, args.batch_size, args.steps)
    replicas = CPUReplicas(bench.method, args.replicas, max(1, args.threads // args.replicas))
    ways = {
        "single": bench.train_step,
        "replicas": dataclasses.replace(bench.train_step, replicas=replicas),
    }
    rows = []
    for size in args.sizes:
        for method in ways["replicas"].methods:
            method.set_view_size(size)
        times = harness.interleaved_rounds(  # the first warm-up makes the replicas
            {way: (lambda step=step: setattr(bench, "train_step", step))
             for way, step in ways.items()},
            bench.step, args.rounds, args.steps, bench.device,
        )  # fmt: skip
        img_s = {way: args.batch_size / statistics.median(t) for way, t in times.items()}
        ratio = statistics.median(
            s / r for s, r in zip(times["single"], times["replicas"], strict=True)
        )
        rows.append({"view_size": size, "img_s": img_s, "ratio": ratio,
                     "seconds_per_step": times})  # fmt: skip
        print(f"{size:3d} px: single {img_s['single']:7.0f} img/s, replicas "
              f"{img_s['replicas']:7.0f} img/s, replicas / single {ratio:.2f}x",
              flush=True)  # fmt: skip
    replicas.close()
    out = {"recipe": args.recipe, "batch_size": args.batch_size, "precision": precision,
           "threads": args.threads, "replicas": args.replicas, "data": source,
           "rounds": args.rounds, "steps": args.steps, "rows": rows,
           "machine": harness.machine_info(torch.device("cpu"), args.threads)}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
