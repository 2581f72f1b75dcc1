"""MAE step time: encoder on the visible patches only vs the same ViT on the full sequence.

Both contenders are ``selfsup.methods.MAE`` with the same ViT, decoder, mask ratio, batch,
images and initial weights; they differ only in ``encoder_on_visible_only``:

* ``visible``: the encoder runs on the ``int(L * (1 - r))`` visible patches + cls (MAE);
* ``full``: the encoder runs on all ``L`` patches + cls, masked ones replaced by a learnable
  mask token (SimMIM-like); the decoder then sees the same full sequence.

A step is ``loss, _ = method(images_uint8, None, generator)`` (augmentation + masking +
forward) + backward + AdamW step, fp32, ``torch.set_num_threads(--threads)``. In each of
``--rounds`` rounds the contenders are interleaved; each warms up ``--warmup`` steps then times
``--steps`` steps. Best and median (over rounds) seconds per step are reported, and the ratio
full / visible.

Usage: python benchmarks/bench_mae_visible.py --models vit_tiny:128 vit_small:32 --warmup 1 \
    --steps 5 --rounds 3
Writes benchmarks/results/mae_visible.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from selfsup.backbones import build_backbone
from selfsup.methods import MAE

ROOT = Path(__file__).resolve().parents[1]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def make(model: str, visible_only: bool, args: argparse.Namespace) -> MAE:
    torch.manual_seed(0)
    enc = build_backbone(model, image_size=args.image_size, patch_size=args.patch_size)
    cfg = MAE.Config(mask_ratio=args.mask_ratio, encoder_on_visible_only=visible_only)
    return MAE(enc, cfg, image_size=args.image_size, mean=MEAN, std=STD)


def time_steps(method: MAE, opt: torch.optim.Optimizer, images: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        loss, _ = method(images, None, torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / n


def write(args: argparse.Namespace, results: list[dict]) -> None:
    out = {
        "command": "python " + " ".join(["benchmarks/bench_mae_visible.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models", nargs="+", default=["vit_tiny"], help="NAME or NAME:BATCH (batch override)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mae_visible.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    size = args.image_size
    results = []
    for spec in args.models:
        model, _, batch = spec.partition(":")
        batch_size = int(batch) if batch else args.batch_size
        shape = (batch_size, 3, size, size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        contenders = {}
        for name, visible in (("visible", True), ("full", False)):
            m = make(model, visible, args).train()
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
            contenders[name] = (m, opt, [])
        for _ in range(args.rounds):
            for m, opt, times in contenders.values():
                time_steps(m, opt, images, args.warmup)
                times.append(time_steps(m, opt, images, args.steps))
        enc = contenders["visible"][0].encoder
        row = {
            "model": model,
            "batch_size": batch_size,
            "tokens": enc.num_patches,
            "visible_tokens": int(enc.num_patches * (1 - args.mask_ratio)),
            "params_encoder": sum(p.numel() for p in enc.parameters()),
        }
        for name, (_, _, times) in contenders.items():
            row[f"{name}_s_per_step_best"] = min(times)
            row[f"{name}_s_per_step_median"] = statistics.median(times)
            row[f"{name}_s_per_step_rounds"] = times
        row["speedup_best"] = row["full_s_per_step_best"] / row["visible_s_per_step_best"]
        row["speedup_median"] = row["full_s_per_step_median"] / row["visible_s_per_step_median"]
        results.append(row)
        write(args, results)  # after every model, so a cut-short run keeps what it measured
        print(f"{model}: done", file=sys.stderr, flush=True)

    print(
        f"\nMAE step (fwd+bwd+AdamW), batch {args.batch_size}, {size}px, patch "
        f"{args.patch_size}, mask {args.mask_ratio}, fp32, {args.threads} threads"
    )
    print(
        "| model | batch | tokens (visible) | visible s/step best / median "
        "| full s/step best / median "
        "| speedup best / median |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['batch_size']} | {r['tokens']} ({r['visible_tokens']}) "
            f"| {r['visible_s_per_step_best']:.3f} / {r['visible_s_per_step_median']:.3f} "
            f"| {r['full_s_per_step_best']:.3f} / {r['full_s_per_step_median']:.3f} "
            f"| {r['speedup_best']:.2f}x / {r['speedup_median']:.2f}x |"
        )
    write(args, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
