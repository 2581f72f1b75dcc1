"""The Lab pretexts' soft cross-entropy over the ab bins, forward + backward, by chunk size.

:class:`selfsup.methods.lab_pretext._SoftCrossEntropy` goes through the pixels ``CHUNK`` rows
at a time so that its float32 temporaries stay in cache; this times it on colorization's
logits at batch 128 (``(128, 261, 16, 16)``, channels-last, as the method's decoder writes
them) for each ``--chunks`` entry, bf16 logits under autocast and fp32 ones, with
``train.cpu_heap_cache`` on as in training. A chunk of at least the batch's 32,768 pixel rows
is one pass over the whole batch. Interleaved rounds (the order alternates), median.

    python benchmarks/bench_lab_loss.py --threads 2

Writes ``benchmarks/results/lab_loss_chunks.json``. Run alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from selfsup.methods.lab_pretext import _SoftCrossEntropy, soft_cross_entropy_and_hits
from selfsup.utils.allocator import heap_cache
from selfsup.utils.precision import cpu_info

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10, help="timed calls per round")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/lab_loss_chunks.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(128, 261, 16, 16, generator=g) * 3
    idx = torch.randint(0, 261, (128, 5, 16, 16), generator=g)
    weights = torch.rand(128, 5, 16, 16, generator=g)
    pixel_weights = torch.rand(128, 16, 16, generator=g)
    results: dict[str, dict[str, float]] = {}
    with heap_cache(enabled=True):
        for precision in args.precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            x = logits.to(dtype).contiguous(memory_format=torch.channels_last)

            def call(x: torch.Tensor = x, dtype: torch.dtype = dtype) -> None:
                a = x.detach().requires_grad_(True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
                    loss, _ = soft_cross_entropy_and_hits(a, idx, weights, pixel_weights)
                loss.backward()

            times: dict[int, list[float]] = {c: [] for c in args.chunks}
            for r in range(args.rounds + 1):  # round 0 warms up
                for chunk in args.chunks if r % 2 else list(reversed(args.chunks)):
                    _SoftCrossEntropy.CHUNK = chunk
                    started = time.perf_counter()
                    for _ in range(args.calls):
                        call()
                    if r:
                        times[chunk].append((time.perf_counter() - started) / args.calls * 1e3)
            results[precision] = {str(c): statistics.median(t) for c, t in times.items()}
            for c, t in times.items():
                print(f"{precision} chunk {c:>6}: {statistics.median(t):6.1f} ms "
                      f"(rounds {', '.join(f'{v:.1f}' for v in t)})")  # fmt: skip
    payload = {
        "benchmark": "Lab soft cross-entropy forward + backward by chunk size (ms, median)",
        "command": "python benchmarks/bench_lab_loss.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "out"
        ),  # fmt: skip
        "machine": {
            "cpu": cpu_info(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
        },  # fmt: skip
        "shape": [128, 261, 16, 16],
        "ms": results,
    }
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
