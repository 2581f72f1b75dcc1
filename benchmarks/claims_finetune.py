"""The fine-tuning claims at a CPU budget: linear probe vs partial vs full fine-tuning, few labels
vs training from scratch, and fine-tuning convergence of a pretrained vs a random encoder.

Encoders (defaults: the runs of ``run_table.py``): SimCLR and rotation pretrained under the
CPU-budget protocol, and the same architecture at random init (fine-tuning it is training from
scratch). Labeled data: class-balanced 10% (5,000 images) and 1% (500 images) of the CIFAR-10
train split (seed 0), test on a fixed 2,000-image subset of the test split. Each cell is one
of: ``linear`` (probe on frozen features), ``partial`` (stem + layer1 frozen, the rest and a new
head trained), ``finetune`` (everything trained); fine-tuning records test top-1 after every
epoch (the convergence curve).

    SELFSUP_DATA=../shared/datasets python benchmarks/claims_finetune.py --threads 1

Resumable: finished cells in ``benchmarks/results/claims_finetune.json`` are skipped; several
processes may run disjoint ``--only`` encoders at once.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from budget_common import read_rows, write_rows

from selfsup.evaluate.finetune import FinetuneConfig, class_balanced_subset, finetune
from selfsup.evaluate.protocols import EvalData, evaluate_encoder, load_eval_data
from selfsup.models import load_encoder

FRACTIONS = (0.1, 0.01)
PARTIAL_FREEZE = 2  # stem + layer1 of the ResNet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", nargs="*", default=[
        "simclr=benchmarks/runs/table/simclr", "rotation=benchmarks/runs/table/rotation",
        "random=random:benchmarks/runs/table/simclr"], help="name=spec pairs")  # fmt: skip
    p.add_argument("--only", nargs="*", help="encoder names to run")
    p.add_argument("--results", default="benchmarks/results/claims_finetune.json")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs")
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    rows = read_rows(results)
    data = load_eval_data(args.data, test_subset=args.test_images)
    assert data.train.labels is not None
    ft = FinetuneConfig(epochs=args.epochs)
    budget = {"data": data.key, "fractions": FRACTIONS, "label_seed": 0,
              "finetune": {"epochs": ft.epochs, "lr": ft.lr, "batch_size": ft.batch_size,
                           "crop_scale": ft.crop_scale, "warmup_epochs": ft.warmup_epochs},
              "partial_freeze_stages": PARTIAL_FREEZE,
              "linear_epochs": args.linear_epochs}  # fmt: skip

    for pair in args.encoders:
        name, spec = pair.split("=", 1)
        if args.only and name not in args.only:
            continue
        loaded = None
        for fraction in FRACTIONS:
            idx = class_balanced_subset(data.train.labels, fraction=fraction, seed=0)
            labeled = EvalData(data.train.subset(idx), data.test, f"{data.key}|labels{fraction}")
            protocols = ["linear", "finetune"] + (["partial"] if fraction == 0.1 else [])
            for protocol in protocols:
                key = f"{name}|{fraction}|{protocol}"
                if key in rows:
                    print(f"{key}: done already")
                    continue
                t0 = time.perf_counter()
                if protocol == "linear":
                    r = evaluate_encoder(spec, labeled, protocols=("linear",),
                                         linear_epochs=args.linear_epochs)  # fmt: skip
                    out: dict[str, Any] = {"top1": r["linear_top1"]}
                else:
                    loaded = loaded or load_encoder(spec)
                    freeze = PARTIAL_FREEZE if protocol == "partial" else 0
                    cfg = FinetuneConfig(epochs=args.epochs, freeze_stages=freeze)
                    r = finetune(loaded, labeled.train, labeled.test, cfg,
                                 num_classes=data.num_classes)  # fmt: skip
                    out = {k: r[k] for k in ("top1", "best_top1", "curve", "freeze_stages",
                                             "trainable_params")}  # fmt: skip
                row = {"name": key, "encoder": name, "spec": spec, "fraction": fraction,
                       "labeled_images": len(idx), "protocol": protocol, **out,
                       "minutes": (time.perf_counter() - t0) / 60}  # fmt: skip
                rows[key] = row
                print(json.dumps(row), flush=True)
                write_rows(results, rows, budget)
                rows.update(read_rows(results))
    table(read_rows(results))


def table(rows: dict[str, dict[str, Any]]) -> None:
    """Print the Markdown tables (top-1 per encoder x protocol x labels; epochs to a level)."""
    names = list(dict.fromkeys(r["encoder"] for r in rows.values()))
    print("\n| encoder | labels | linear | partial (stem+layer1 frozen) | full fine-tune |")
    print("|---|---|---|---|---|")
    for name in names:
        for fraction in FRACTIONS:

            def cell(protocol: str, name: str = name, fraction: float = fraction) -> str:
                r = rows.get(f"{name}|{fraction}|{protocol}")
                return "–" if r is None else f"{r['top1']:.3f}"

            done = [r for r in rows.values() if r["encoder"] == name and r["fraction"] == fraction]
            n = done[0]["labeled_images"] if done else 0
            print(
                f"| {name} | {fraction:.0%} ({n:,}) | {cell('linear')} | {cell('partial')} "
                f"| {cell('finetune')} |"
            )
    print("\n| encoder | labels | test top-1 after epoch 1, 2, 3, 5, 10, last |")
    print("|---|---|---|")
    for name in names:
        for fraction in FRACTIONS:
            r = rows.get(f"{name}|{fraction}|finetune")
            if r is None:
                continue
            curve = {c["epoch"]: c["test_top1"] for c in r["curve"]}
            last = max(curve)
            picks = [e for e in (1, 2, 3, 5, 10) if e in curve and e < last] + [last]
            print(
                f"| {name} | {fraction:.0%} | " + ", ".join(f"{curve[e]:.3f}" for e in picks) + " |"
            )


if __name__ == "__main__":
    main()
