"""How the speedrun's SimCLR step scales with view size and with threads.

The speedrun recipe trains mostly on 12-16 px views. This benchmark times its full training step
(the bench harness of ``bench_method_steps.py``: augmentation, forward, backward, optimizer)
at each view size of the recipe's schedule, with 1 and with ``--threads`` torch threads in the
same process (rounds interleaved, median reported), at the precision ``precision=auto`` picks
(bf16 autocast + channels_last on CPUs with native bf16, else fp32). ``speedup`` is the
``--threads`` img/s over the 1-thread img/s: how much a second core buys at that size.

Usage: python benchmarks/bench_view_sizes.py --threads 2
Writes benchmarks/results/view_sizes.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_method_steps as harness  # noqa: E402

from selfsup.utils.io import write_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="speedrun_5min")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[12, 16, 24, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/view_sizes.json")
    args = p.parse_args()
    bench, precision, source = harness.recipe_bench(args.recipe, args.batch_size, args.steps)
    rows = []
    for size in args.sizes:
        bench.method.set_view_size(size)
        times = harness.interleaved_rounds(
            {n: (lambda n=n: torch.set_num_threads(n)) for n in (1, args.threads)},
            bench.step, args.rounds, args.steps, bench.device,
        )  # fmt: skip
        one = args.batch_size / statistics.median(times[1])
        many = args.batch_size / statistics.median(times[args.threads])
        rows.append({"view_size": size, "img_s_1thread": one,
                     f"img_s_{args.threads}threads": many, "speedup": many / one})  # fmt: skip
        print(f"{size:3d} px: 1 thread {one:7.0f} img/s, {args.threads} threads {many:7.0f} "
              f"img/s, speed-up {many / one:.2f}x", flush=True)  # fmt: skip
    out = {"recipe": args.recipe, "batch_size": args.batch_size, "precision": precision,
           "data": source, "rounds": args.rounds, "steps": args.steps, "rows": rows,
           "machine": harness.machine_info(torch.device("cpu"), args.threads)}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
