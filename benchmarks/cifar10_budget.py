"""CIFAR-10 at a CPU budget: SimCLR vs a random-init encoder vs a supervised encoder.

Trains SimCLR with the ``simclr_cifar10_cpu`` recipe and the supervised baseline with the same
backbone, subset and number of images seen, then evaluates all three (kNN k=200/20, t=0.1, and a
linear probe on frozen features) on the full CIFAR-10 train bank and test set. Resumable: a
finished run is reused. Writes ``benchmarks/results/cifar10_budget.json`` and prints a Markdown
table for BENCHMARKS.md.

    SELFSUP_DATA=../shared/datasets python benchmarks/cifar10_budget.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.evaluate import evaluate_encoder, load_eval_data
from selfsup.pretraining import pretrain
from selfsup.utils.io import latest_checkpoint


def train(method: str, recipe: str | None, out_dir: Path, overrides: list[str]) -> dict:
    cfg = load_config(method, recipe, [f"out_dir={out_dir}", "train.progress=false", *overrides])
    summary = out_dir / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    pretrain(cfg, resume=latest_checkpoint(out_dir) is not None)
    return json.loads(summary.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/runs/cifar10_budget")
    p.add_argument("--results", default="benchmarks/results/cifar10_budget.json")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--subset", type=int, default=20000)
    p.add_argument("--linear-epochs", type=int, default=100)
    args = p.parse_args()
    out = Path(args.out)
    budget = [f"train.epochs={args.epochs}", f"data.subset={args.subset}"]
    simclr = train("simclr", "simclr_cifar10_cpu", out / "simclr", budget)
    supervised = train(
        "supervised",
        None,
        out / "supervised",
        budget
        + [
            "backbone.name=resnet18",
            "backbone.width=0.25",
            "train.batch_size=256",
            "train.optimizer.base_lr=0.2",
            "train.schedule.warmup_epochs=0.5",
        ],
    )
    t0 = time.perf_counter()
    data = load_eval_data("cifar10")
    rows = []
    for name, spec, summary in [
        ("random init", f"random:{out / 'simclr'}", None),
        ("SimCLR", str(out / "simclr"), simclr),
        ("supervised", str(out / "supervised"), supervised),
    ]:
        r = evaluate_encoder(
            spec, data, protocols=("knn", "linear"), linear_epochs=args.linear_epochs
        )
        r["name"] = name
        if summary:
            r["train_minutes"] = summary["seconds"] / 60
            r["train_images_per_second"] = summary["images_per_second"]
        rows.append(r)
        print(json.dumps(r))
    result = {
        "budget": {
            "backbone": "resnet18 (CIFAR stem), width 0.25",
            "images": args.subset,
            "epochs": args.epochs,
            "batch": 256,
            "precision": "auto",
            "eval": "kNN (k=200/20, t=0.1) and linear probe (BN, SGD, "
            f"{args.linear_epochs} epochs) on all 50k train / 10k test",
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "eval_minutes": (time.perf_counter() - t0) / 60,
        "rows": rows,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2))
    print("\n| encoder | kNN@200 | kNN@20 | linear | train minutes |")
    print("|---|---|---|---|---|")
    for r in rows:
        minutes = f"{r['train_minutes']:.1f}" if "train_minutes" in r else "-"
        print(
            f"| {r['name']} | {r['knn@200']:.3f} | {r['knn@20']:.3f} | "
            f"{r['linear_top1']:.3f} | {minutes} |"
        )


if __name__ == "__main__":
    main()
