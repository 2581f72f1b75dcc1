"""Where the time of a SimCLR training step goes on the CPU (issue 19): torch.profiler over the
whole step (batched augmentation of both views, backbone, head, NT-Xent, backward, SGD step), per
precision, the top operators by self time and the share of each group of operators.

    python benchmarks/profile_simclr_step.py --width 0.25 --batch-size 256

Precisions: fp32 (contiguous) and, where the CPU has native bf16 (or with ``--force-bf16``),
bf16 autocast + channels_last, as ``selfsup train`` runs them. Writes
``benchmarks/results/simclr_step_profile.json``: per precision the median step time of
``--steps`` timed steps, the groups (convolution forward / backward, BatchNorm, ReLU, the
augmentation, the loss, the optimizer, other) and the top ``--top`` operators.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from selfsup.config import load_config
from selfsup.models import build_method
from selfsup.utils.precision import cpu_has_fast_bf16, cpu_info

ROOT = Path(__file__).resolve().parents[1]

GROUPS = {  # operator-name fragments -> group (first match wins)
    "convolution_backward": "convolution backward",
    "mkldnn_convolution": "convolution forward",
    "convolution": "convolution forward",
    "batch_norm_backward": "BatchNorm backward",
    "batch_norm": "BatchNorm forward",
    "threshold_backward": "ReLU backward",
    "relu": "ReLU forward",
    "clamp_min": "ReLU forward",
    "addmm": "linear layers",
    "mm": "linear layers",
    "sgd": "optimizer",
    "_foreach": "optimizer",
    "grid_sampler": "augmentation",
    "upsample": "augmentation",
    "log_softmax": "loss",
    "copy_": "copies / casts",
    "to_copy": "copies / casts",
}


def group_of(name: str) -> str:
    low = name.lower()
    for fragment, group in GROUPS.items():
        if fragment in low:
            return group
    return "other"


def profile_precision(precision: str, width: float, batch: int, steps: int,
                      top: int) -> dict[str, Any]:  # fmt: skip
    """Time and profile ``steps`` SimCLR steps at one precision."""
    torch.manual_seed(0)
    cfg = load_config("simclr", "simclr_cifar10_cpu", [f"backbone.width={width}"])
    method = build_method(cfg, 32, 3, None)
    bf16 = precision == "bf16"
    if bf16:
        method = method.to(memory_format=torch.channels_last)
        method.memory_format = torch.channels_last
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)

    def step(i: int) -> None:
        generator = torch.Generator().manual_seed(i)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = method(images, None, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(2):
        step(i)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {
        "step_seconds_median": statistics.median(times),
        "images_per_second": batch / statistics.median(times),
        "groups": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "top_ops": [
            {"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count}
            for e in events[:top]
        ],  # fmt: skip
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--force-bf16", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/simclr_step_profile.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = ["fp32"] + (["bf16"] if args.force_bf16 or cpu_has_fast_bf16() else [])
    result: dict[str, Any] = {
        "command": "python benchmarks/profile_simclr_step.py "
        f"--width {args.width} --batch-size {args.batch_size} --steps {args.steps}",
        "machine": {
            "cpu": cpu_info(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },  # fmt: skip
        "model": f"SimCLR, ResNet-18 (CIFAR stem) x{args.width}, batch {args.batch_size}",
    }
    for precision in precisions:
        r = profile_precision(precision, args.width, args.batch_size, args.steps, args.top)
        result[precision] = r
        print(f"== {precision}: {r['images_per_second']:.0f} img/s")
        for group, share in r["groups"].items():
            print(f"  {group:24s} {share:6.1%}")
        for op in r["top_ops"]:
            print(f"    {op['op'][:48]:48s} {op['share']:6.1%} x{op['calls']}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
