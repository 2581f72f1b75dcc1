"""``train.compile`` on the CPU: the compiled training step vs the eager one, compile time and
break-even (issue 19: "train.compile measured on CPU (inductor); on by default where it pays for
itself within the run; state the break-even in steps").

For each ``--methods`` entry (default SimCLR) and each ``--configs`` entry
``precision:width:batch`` (the method's ``<method>_cifar10_cpu`` recipe, ResNet-18 with the CIFAR
stem at ``width`` (split-brain: half per branch, as its recipe; ViT recipes keep their size),
32 px views; SimCLR with projection 2048 -> 128, ``torch.set_num_threads(--threads)``): two
:class:`~selfsup.train.trainer.TrainStep` objects built from the same initial weights, one
running the method eagerly and one through ``torch.compile`` (inductor), exactly as the Trainer
builds them. fp32 runs contiguous tensors, bf16 autocast + channels_last (what
``precision=auto`` and ``channels_last=auto`` pick on CPUs without and with native bf16).

* ``compile_seconds``: the first two compiled steps (tracing, inductor's code generation and
  C++ compilation, then the second call's guards) minus two eager steps, with inductor's
  on-disk caches off (``--warm-cache`` leaves them on: a later run of the same network then
  compiles in a few seconds, which this number does not count on);
* ``eager`` / ``compiled``: images per second, ``--rounds`` interleaved rounds of ``--steps``
  steps in one process (the order alternates), median;
* ``break_even_steps``: ``compile_seconds / (eager step seconds - compiled step seconds)``,
  the run length from which compiling has saved more time than it cost (None where the compiled
  step is not faster);
* with ``--view-sizes`` (e.g. ``12 16 24``): the compiled step's extra time at each new view size
  (what a ``train.view_size_schedule`` costs: one recompilation per size), after the rounds.

    python benchmarks/bench_compile.py --threads 2
    python benchmarks/bench_compile.py --threads 2 --configs fp32:0.25:128 --view-sizes \
        --methods moco_v2 byol inpainting ... --out benchmarks/results/compile_cpu_methods.json

Writes ``benchmarks/results/compile_cpu.json``. Run alone on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def build_steps(name: str, precision: str, width: float, batch: int) -> dict[str, Any]:
    """Eager and compiled TrainSteps of method ``name`` from the same initial weights."""
    from selfsup.config import load_config
    from selfsup.models import build_method
    from selfsup.train.optim import build_optimizer
    from selfsup.train.trainer import TrainStep

    bf16 = precision == "bf16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    recipe = f"{name}_cifar10_cpu"
    overrides = [f"train.batch_size={batch}", f"train.precision={precision}"]
    if load_config(name, recipe, []).backbone.is_resnet:
        overrides.append(f"backbone.width={width / 2 if name == 'split_brain' else width}")
    if name == "simclr":
        overrides += ["method_args.proj_hidden_dim=2048", "method_args.proj_out_dim=128"]
    cfg = load_config(name, recipe, overrides)
    steps = {}
    for way in ("eager", "compiled"):
        torch.manual_seed(0)
        method = build_method(cfg, 32, 3, 10).to(memory_format=fmt)
        method.memory_format = fmt
        method.train()
        method.on_train_start(1000, 10**6)
        steps[way] = TrainStep(
            method=method,
            forward=torch.compile(method) if way == "compiled" else method,
            compiled=way == "compiled",
            optimizer=build_optimizer(method, cfg.train.optimizer, batch),
            scaler=torch.amp.GradScaler("cuda", enabled=False),
            amp_dtype=torch.bfloat16 if bf16 else None,
            device=torch.device("cpu"),
            seed=0,
            grad_clip=None,
            total_steps=10**6,
        )
    return steps


def measure(
    args: argparse.Namespace, name: str, precision: str, width: float, batch: int
) -> dict[str, Any]:
    from selfsup.utils.allocator import heap_cache

    torch._dynamo.reset()  # every configuration compiles from scratch
    steps = build_steps(name, precision, width, batch)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    counter = {"eager": 0, "compiled": 0}

    def run(way: str, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            steps[way](images, labels, batch, 0, counter[way])
            counter[way] += 1
        return time.perf_counter() - t0

    with heap_cache():  # as the Trainer runs on the CPU
        first_compiled = run("compiled", 2)
        first_eager = run("eager", 2)
        seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
        for rnd in range(args.rounds):
            for way in ("eager", "compiled") if rnd % 2 == 0 else ("compiled", "eager"):
                seconds[way].append(run(way, args.steps) / args.steps)
        step_s = {k: statistics.median(v) for k, v in seconds.items()}
        compile_s = first_compiled - first_eager
        saved = step_s["eager"] - step_s["compiled"]
        out: dict[str, Any] = {
            "method": name,
            "precision": precision,
            "width": width,
            "batch_size": batch,
            "images_per_second": {k: batch / v for k, v in step_s.items()},
            "seconds_per_step_rounds": seconds,
            "compiled_vs_eager": step_s["eager"] / step_s["compiled"],
            "compile_seconds": compile_s,
            "break_even_steps": compile_s / saved if saved > 0 else None,
        }
        if args.view_sizes:
            extra = {}
            for size in args.view_sizes:
                for step in steps.values():
                    step.method.set_view_size(size)
                first = run("compiled", 1)
                again = statistics.median(run("compiled", 1) for _ in range(3))
                extra[str(size)] = {"first_step_seconds": first, "step_seconds": again,
                                    "recompile_seconds": first - again}  # fmt: skip
            out["view_size_recompile"] = extra
    return out


def main() -> None:
    from selfsup.utils.io import write_json
    from selfsup.utils.precision import cpu_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["simclr"],
                    help="methods, each with its <method>_cifar10_cpu recipe")  # fmt: skip
    ap.add_argument("--configs", nargs="+",
                    default=["fp32:0.25:256", "bf16:0.25:256", "fp32:1.0:128", "bf16:1.0:128"],
                    help="precision:width:batch")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per contender and round")
    ap.add_argument("--view-sizes", type=int, nargs="*", default=[12, 16, 24],
                    help="new view sizes after the rounds (recompilation cost)")  # fmt: skip
    ap.add_argument("--warm-cache", action="store_true",
                    help="reuse inductor's code cached on disk (default: cold)")  # fmt: skip
    ap.add_argument("--force-bf16", action="store_true", help="bf16 even without native bf16")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compile_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.warm_cache:
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
    cpu = cpu_info()
    rows = []
    for name, spec in ((n, c) for n in args.methods for c in args.configs):
        precision, width, batch = spec.split(":")
        if precision == "bf16" and not (cpu["native_bf16"] or args.force_bf16):
            print(f"skip {spec}: no native bf16 on this CPU", flush=True)
            continue
        row = measure(args, name, precision, float(width), int(batch))
        rows.append(row)
        ips = row["images_per_second"]
        print(
            f"{name} {spec}: eager {ips['eager']:.1f} img/s, compiled {ips['compiled']:.1f} img/s "
            f"({row['compiled_vs_eager']:.2f}x), compile {row['compile_seconds']:.1f} s, "
            f"break-even {row['break_even_steps']} steps",
            flush=True,
        )
    payload = {
        "benchmark": "train.compile on the CPU: compiled vs eager training step (issue 19)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args) | {"out": str(args.out)},
        "machine": {"cpu": cpu, "torch": torch.__version__, "threads": args.threads},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
