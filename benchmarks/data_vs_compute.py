"""Data vs compute: kNN of one method as the unlabeled set grows at a fixed number of images seen,
and as the images seen grow on the full set, in one plot.

Cells (CPU-budget protocol otherwise, BENCHMARKS.md): the method's ``<method>_cifar10_cpu``
recipe trained on seeded random subsets of 5k / 10k / 25k / 50k CIFAR-10 train images
(``data.subset``) for the same 60k images seen (epochs = 60k / N; LR warm-up over the first 10k
images in every cell), and on all 50k for 1x / 2x / 4x that (60k / 120k / 240k images seen).
kNN (k=200/20, t=0.1) on all 50k train / 10k test features.

    SELFSUP_DATA=../shared/datasets python benchmarks/data_vs_compute.py --method moco_v2

Resumable (finished cells are skipped; a killed run resumes from its checkpoint); writes
``benchmarks/results/data_vs_compute.json`` and ``benchmarks/results/data_vs_compute.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from budget_common import add_budget_args, read_rows, train, train_fields, write_rows

from selfsup.evaluate.protocols import evaluate_encoder, load_eval_data

SUBSETS = (5000, 10000, 25000, 50000)
MULTIPLES = (1, 2, 4)
WARMUP_IMAGES = 10_000


def cells(base_seen: int) -> list[tuple[str, int, int]]:
    """(name, unlabeled images, images seen): the data sweep, then the compute sweep."""
    out = [(f"data{n // 1000}k", n, base_seen) for n in SUBSETS]
    out += [(f"seen{m}x", SUBSETS[-1], base_seen * m) for m in MULTIPLES if m > 1]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="moco_v2")
    p.add_argument("--images-seen", type=int, default=60000, help="the 1x budget")
    add_budget_args(p, "data_vs_compute", "cell names (data5k ... data50k, seen2x, seen4x)")
    p.add_argument("--data", default="cifar10", help="labeled dataset for kNN")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    rows = read_rows(results)
    budget = {"method": args.method, "recipe": f"{args.method}_cifar10_cpu",
              "images_seen_1x": args.images_seen,
              "subset": "a seeded random subset of N train images",
              "eval": "kNN k=200/20 t=0.1, all 50k train / 10k test"}  # fmt: skip
    if not args.plot_only:
        data = load_eval_data(args.data)
        threads = [f"train.num_threads={args.threads}"] if args.threads else []
        for name, n, seen in cells(args.images_seen):
            if args.only and name not in args.only:
                continue
            run = Path(args.out) / args.method / name
            # warm-up fixed in images (the recipe's 0.5 epoch of its 20k subset), not in epochs,
            # so every cell has the same LR schedule over the images it sees
            warmup = f"train.schedule.warmup_epochs={WARMUP_IMAGES / n}"
            overrides = [f"data.subset={n}", f"train.epochs={seen / n}", warmup, *threads,
                         *args.overrides]  # fmt: skip
            summary = train(args.method, f"{args.method}_cifar10_cpu", run, overrides)
            if rows.get(name, {}).get("checkpoint_step") == summary.get("steps"):
                print(f"{name}: done already")
                continue
            r = evaluate_encoder(str(run), data, protocols=("knn",))
            row = {
                "name": name,
                "unlabeled_images": n,
                "images_seen_target": seen,
                "knn@200": r["knn@200"],
                "knn@20": r["knn@20"],
                **train_fields(summary),
            }
            rows[name] = row
            print(json.dumps(row), flush=True)
            write_rows(results, rows, budget)
            rows.update(read_rows(results))
    plot(read_rows(results), results.with_suffix(".png"), args.method)


def plot(rows: dict[str, dict[str, Any]], path: Path, method: str) -> None:
    """Two panels sharing the y axis: kNN@200 vs unlabeled images, vs images seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = sorted((r for r in rows.values() if r["name"].startswith("data")),
                  key=lambda r: r["unlabeled_images"])  # fmt: skip
    seen = sorted((r for r in rows.values() if r["unlabeled_images"] == SUBSETS[-1]),
                  key=lambda r: r["images_seen"])  # fmt: skip
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, rs, x, label in (
        (a, data, "unlabeled_images", "unlabeled images (fixed images seen)"),
        (b, seen, "images_seen", "images seen (all 50k unlabeled)"),
    ):
        for k, style in (("knn@200", "o-"), ("knn@20", "s--")):
            ax.plot([r[x] for r in rs], [r[k] for r in rs], style, label=k)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    a.set_ylabel("kNN top-1 (CIFAR-10 test)")
    a.legend()
    fig.suptitle(f"{method}: data vs compute at a CPU budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
