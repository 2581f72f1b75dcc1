"""What ``train.cpu_heap_cache`` buys: each method's training step and its bare backbone with
freed memory kept in the process (:func:`selfsup.utils.allocator.heap_cache`, the Trainer's
default on the CPU) vs the C library's defaults, in ONE process.

The four contenders of a method (method step and bare step, each with and without the cache)
are interleaved within each of ``--rounds`` rounds, their order alternating; the cache is
switched on and off around each contender's warm-up and timed steps (leaving the block restores
glibc's limits and trims the heap, so the next contender starts from the defaults). The
method, its bare baseline and the data are built by ``bench_method_steps.build_bench``, as
the Trainer builds them; ``--precision bf16`` runs autocast + channels_last.

    SELFSUP_DATA=../shared/datasets python benchmarks/bench_heap_cache.py --precision bf16 \\
        --methods simclr colorization split_brain inpainting mae
    SELFSUP_DATA=../shared/datasets python benchmarks/bench_heap_cache.py --precision bf16 \\
        --methods simclr:speedrun_5min --batch-size 256 --view-size 12 --out ...

Writes ``benchmarks/results/heap_cache_<precision>.json``. Run alone on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from bench_method_steps import ROOT, build_bench, load_data, machine_info, summary, timed

from selfsup.utils.allocator import glibc, heap_cache

KINDS = ("method_cache", "method_system", "bare_cache", "bare_system")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["simclr", "colorization", "split_brain"],
                    help="method names (<name>_cifar10_cpu recipes) or name:recipe")  # fmt: skip
    ap.add_argument("--view-size", type=int, default=None,
                    help="train at this view size (methods with a resizing schedule)")  # fmt: skip
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per contender and round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--width", type=float, default=None, help="ResNet width (default: recipe's)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if glibc() is None:
        raise SystemExit("the C library is not glibc: there is no heap cache to compare")
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    images, labels, source = load_data(max(args.images, args.batch_size), device)
    B = args.batch_size
    rows: dict[str, Any] = {}
    for entry in args.methods:
        name, _, recipe = entry.partition(":")
        bench = build_bench(name, recipe or f"{name}_cifar10_cpu", args, device, images, labels)
        if args.view_size is not None:
            bench.method.set_view_size(args.view_size)
            bench.build_bare(bench.method.memory_format)  # the bare inputs at that size
        name = bench.label
        times: dict[str, list[float]] = {k: [] for k in KINDS}
        for rnd in range(args.rounds):
            for kind in KINDS if rnd % 2 == 0 else tuple(reversed(KINDS)):
                step = bench.step if kind.startswith("method") else bench.bare_step
                with heap_cache(enabled=kind.endswith("cache")):
                    times[kind].append(timed(step, args.steps, args.warmup, device))
            line = "  ".join(f"{k} {B * args.steps / v[-1]:7.1f}" for k, v in times.items())
            print(f"round {rnd}: {name:<14s} {line} img/s", flush=True)
        s = {k: summary(v, B * args.steps) for k, v in times.items()}
        ips = {k: v["per_s_median"] for k, v in s.items()}
        rows[name] = {
            "images_per_second_median": ips,
            "seconds_per_round": times,
            "method_cache_vs_system": ips["method_cache"] / ips["method_system"],
            "bare_cache_vs_system": ips["bare_cache"] / ips["bare_system"],
            "method_vs_bare_cache": ips["method_cache"] / ips["bare_cache"],
            "method_vs_bare_system": ips["method_system"] / ips["bare_system"],
            "flop_bound": bench.bare_flops / bench.method_flops,
        }
        r = rows[name]
        print(
            f"{name}: method cache/system {r['method_cache_vs_system']:.2f}x, bare "
            f"{r['bare_cache_vs_system']:.2f}x; method/bare {r['method_vs_bare_cache']:.2f} "
            f"(cache) vs {r['method_vs_bare_system']:.2f} (system), FLOP bound "
            f"{r['flop_bound']:.2f}",
            flush=True,
        )
        del bench
    from selfsup.utils.io import write_json

    out = args.out or ROOT / "benchmarks" / "results" / f"heap_cache_{args.precision}.json"
    write_json(out, {
        "benchmark": "train.cpu_heap_cache: method and bare steps with and without (issue 19)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(device, args.threads),
        "settings": vars(args) | {"out": str(out), "data": source},
        "load_average": os.getloadavg(),
        "methods": rows,
        "summary": {
            "method_cache_vs_system_median": statistics.median(
                r["method_cache_vs_system"] for r in rows.values()
            )
        },
    })  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
