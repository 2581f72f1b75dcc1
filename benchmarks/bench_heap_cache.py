"""What ``train.cpu_heap_cache`` buys: each method's training step and its bare backbone with
freed memory kept in the process (:func:`selfsup.utils.allocator.heap_cache`, the Trainer's
default on the CPU) vs the C library's own behaviour.

Each measurement runs in a FRESH process: glibc adjusts its thresholds as a process frees
large blocks, and once ``mallopt`` has set them that adjustment is off for good, so a process
that has been inside a cache block cannot time the default again. For each method and each of
``--rounds`` rounds, one child process per mode (order alternating from round to round) builds
the method, its bare baseline and the data with ``bench_method_steps.build_bench`` (as the
Trainer builds them), then times ``--warmup`` + ``--steps`` method steps and as many bare steps,
with the cache on or off; medians over rounds. ``--precision bf16`` runs autocast +
channels_last.

    SELFSUP_DATA=../shared/datasets python benchmarks/bench_heap_cache.py --precision bf16 \\
        --methods simclr colorization split_brain inpainting mae
    SELFSUP_DATA=../shared/datasets python benchmarks/bench_heap_cache.py --precision bf16 \\
        --methods simclr:speedrun_5min --batch-size 256 --view-size 12 --out ...

Writes ``benchmarks/results/heap_cache_<precision>.json``. Run alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from bench_method_steps import ROOT, build_bench, load_data, machine_info, summary, timed

from selfsup.utils.allocator import glibc, heap_cache

MODES = ("cache", "system")


def child(args: argparse.Namespace) -> None:
    """One mode of one method in this (fresh) process: prints the seconds of its method and
    bare steps as JSON."""
    device = torch.device("cpu")
    images, labels, source = load_data(max(args.images, args.batch_size), device)
    name, _, recipe = args.methods[0].partition(":")
    bench = build_bench(name, recipe or f"{name}_cifar10_cpu", args, device, images, labels)
    if args.view_size is not None:
        bench.method.set_view_size(args.view_size)
        bench.build_bare(bench.method.memory_format)  # the bare inputs at that size
    with heap_cache(enabled=args.child == "cache") as on:
        method = timed(bench.step, args.steps, args.warmup, device)
        bare = timed(bench.bare_step, args.steps, args.warmup, device)
    bound = bench.bare_flops / bench.method_flops
    print(json.dumps({"method": method, "bare": bare, "cache": on, "label": bench.label,
                      "flop_bound": bound, "data": source}))  # fmt: skip


def run_child(args: argparse.Namespace, entry: str, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--methods", entry, "--precision",
           args.precision, "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--images",
           str(args.images)]  # fmt: skip
    if args.width is not None:
        cmd += ["--width", str(args.width)]
    if args.view_size is not None:
        cmd += ["--view-size", str(args.view_size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{entry} ({mode}) failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def paired_ratios(times: dict[str, list[float]]) -> dict[str, Any]:
    """Cache / system speed of each round's pair of processes, and their median: the two run
    back to back, so this is robust to the machine's speed drifting over the rounds (the
    ratio of medians above is not)."""
    out: dict[str, Any] = {}
    for kind in ("method", "bare"):
        cache, system = times[f"{kind}_cache"], times[f"{kind}_system"]
        pairs = [s / c for c, s in zip(cache, system, strict=True)]
        out[f"{kind}_cache_vs_system_per_round"] = pairs
        out[f"{kind}_cache_vs_system_paired_median"] = statistics.median(pairs)
    return out


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
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    if glibc() is None:
        raise SystemExit("the C library is not glibc: there is no heap cache to compare")
    device = torch.device("cpu")
    B = args.batch_size
    rows: dict[str, Any] = {}
    source = None
    for entry in args.methods:
        times: dict[str, list[float]] = {f"{k}_{m}": [] for k in ("method", "bare") for m in MODES}
        for rnd in range(args.rounds):
            for mode in MODES if rnd % 2 == 0 else tuple(reversed(MODES)):
                r = run_child(args, entry, mode)
                assert r["cache"] == (mode == "cache"), r
                times[f"method_{mode}"].append(r["method"])
                times[f"bare_{mode}"].append(r["bare"])
                name, bound, source = r["label"], r["flop_bound"], r["data"]
            line = "  ".join(f"{k} {B * args.steps / v[-1]:7.1f}" for k, v in times.items())
            print(f"round {rnd}: {entry:<14s} {line} img/s", flush=True)
        s = {k: summary(v, B * args.steps) for k, v in times.items()}
        ips = {k: v["per_s_median"] for k, v in s.items()}
        rows[name] = {
            "images_per_second_median": ips,
            "seconds_per_round": times,
            "method_cache_vs_system": ips["method_cache"] / ips["method_system"],
            **paired_ratios(times),
            "bare_cache_vs_system": ips["bare_cache"] / ips["bare_system"],
            "method_vs_bare_cache": ips["method_cache"] / ips["bare_cache"],
            "method_vs_bare_system": ips["method_system"] / ips["bare_system"],
            "flop_bound": bound,
        }
        r = rows[name]
        print(
            f"{name}: method cache/system {r['method_cache_vs_system']:.2f}x (paired rounds: "
            f"{r['method_cache_vs_system_paired_median']:.2f}x), bare "
            f"{r['bare_cache_vs_system']:.2f}x; method/bare {r['method_vs_bare_cache']:.2f} "
            f"(cache) vs {r['method_vs_bare_system']:.2f} (system), FLOP bound "
            f"{r['flop_bound']:.2f}",
            flush=True,
        )
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
            "method_cache_vs_system_paired_median": {
                k: r["method_cache_vs_system_paired_median"] for k, r in rows.items()
            }
        },
    })  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
