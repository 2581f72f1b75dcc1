"""Peak memory of a training step: MoCo v2 with a large queue vs SimCLR with as many negatives.

SimCLR's negatives per query are the other ``2B - 2`` views of its batch, so they cost
activation memory (and compute) for every one of them; MoCo v2's ``K`` negatives are stored keys
(``K x 128`` floats) and cost almost nothing. Each cell runs in a fresh subprocess: build the
method from its ``<name>_cifar10_cpu`` recipe (ResNet-18 CIFAR stem at width 0.25, 32 px), run
one warm-up step at a small batch, then one training step (augment, forward, backward, SGD) at
the cell's batch; the figure is the process's peak RSS during that step minus its RSS before
it. SimCLR batches too large for this machine's memory are not run: the table fits a line to
the measured SimCLR cells (activation memory is linear in the batch) and extrapolates it,
marked as such.

    python benchmarks/negatives_memory.py
Writes ``benchmarks/results/negatives_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (resource.getpagesize() / 2**20)


def measure(method: str, batch: int, queue: int | None) -> dict:
    """One cell, in this process: peak RSS increase (MiB) of one training step at ``batch``."""
    from selfsup.config import load_config
    from selfsup.models import build_method

    torch.manual_seed(0)
    overrides = [f"method_args.queue_size={queue}"] if queue else []
    cfg = load_config(method, f"{method}_cifar10_cpu", overrides)
    m = build_method(cfg, 32, 3, None).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)

    def step(n: int) -> None:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        loss = m(images, None, g, None, 0)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(min(batch, 32))  # warm-up: optimizer state, allocator, first-call costs
    before = _rss_mib()
    step(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    negatives = queue if method == "moco_v2" else 2 * batch - 2
    return {
        "method": method,
        "batch": batch,
        "queue": queue,
        "negatives_per_query": negatives,
        "step_peak_mib": peak - before,
        "rss_before_mib": before,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--simclr-batches", type=int, nargs="*", default=[256, 512, 1024, 2048])
    p.add_argument("--moco-queues", type=int, nargs="*", default=[256, 1024, 4096, 16384, 65536])
    p.add_argument("--moco-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print its JSON
    p.add_argument("--out", default="benchmarks/results/negatives_memory.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.cell:
        method, batch, queue = args.cell.split(":")
        print(json.dumps(measure(method, int(batch), int(queue) or None)))
        return
    cells = [("simclr", b, 0) for b in args.simclr_batches]
    cells += [("moco_v2", args.moco_batch, k) for k in args.moco_queues]
    rows = []
    for method, batch, queue in cells:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--cell",
                f"{method}:{batch}:{queue}",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            print(f"{method} batch {batch} queue {queue}: failed\n{proc.stderr[-2000:]}")
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    simclr = [r for r in rows if r["method"] == "simclr"]
    fit = None
    if len(simclr) >= 2:  # least squares MiB = a + b * batch
        xs = torch.tensor([float(r["batch"]) for r in simclr])
        ys = torch.tensor([r["step_peak_mib"] for r in simclr])
        b = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
        fit = {"intercept_mib": float(ys.mean() - b * xs.mean()), "mib_per_image": b}
    out = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "setup": "resnet18 CIFAR stem width 0.25, 32 px, fp32, one SGD step; peak RSS "
        "increase over the RSS before the step",
        "rows": rows,
        "simclr_fit": fit,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    _table(out)


def _table(out: dict) -> None:
    fit = out["simclr_fit"]
    print(
        "\n| negatives per query | MoCo v2 (batch 256, queue K) | SimCLR with as many negatives "
        "(batch K/2 + 1) | ratio |"
    )
    print("|---|---|---|---|")
    simclr = {r["negatives_per_query"]: r for r in out["rows"] if r["method"] == "simclr"}
    for r in (r for r in out["rows"] if r["method"] == "moco_v2"):
        k = r["negatives_per_query"]
        batch = k // 2 + 1
        near = min(simclr.values(), key=lambda s: abs(s["batch"] - batch), default=None)
        if near and abs(near["batch"] - batch) <= 1:
            mib, how = near["step_peak_mib"], f"batch {near['batch']}, measured"
        elif fit:
            mib, how = (
                fit["intercept_mib"] + fit["mib_per_image"] * batch,
                f"batch {batch}, extrapolated",
            )
        else:
            continue
        print(
            f"| {k} | {r['step_peak_mib']:.0f} MiB | {mib:.0f} MiB ({how}) | "
            f"{mib / max(r['step_peak_mib'], 1):.1f}x |"
        )


if __name__ == "__main__":
    main()
