"""CIFAR-10 at a CPU budget: contrastive and self-distillation methods beside random init.

Trains SimCLR, MoCo v2/v3, DINO, CPC, BYOL, SimSiam, Barlow Twins and VICReg, each with its
``<name>_cifar10_cpu`` recipe (ResNet-18 CIFAR stem at width 0.25, a 20k-image CIFAR-10 subset,
batch 256) for 3 epochs, 60k images seen (``--epochs``; CPC: its recipe's one epoch, 20k
images, as its patch grid costs ~3x per image) — shorter than the recipes' 5 epochs so that the
whole benchmark fits a session on 2 cores (BYOL and DINO run ~45-55 images/s on one core). Then it
measures kNN (k=200 and 20, t=0.1) over the full 50k train bank for the 10k test images, a
linear probe on frozen features, and the method's pretext metric (where it has one) on 2,000
held-out test images. Three more experiments share the runs:

- ``negatives``: SimCLR at batch 64/128/256/512 and MoCo v2 with a queue of 256/1024/4096/16384
  keys at batch 256, kNN after the same 60k images seen (the batch-256 SimCLR and 4096-queue
  MoCo v2 cells are the method rows);
- ``heads``: linear probe and kNN on the outputs of the projection head (SimCLR, MoCo v2) and of
  MoCo v3's projector, beside the encoder features of the same run;
- the random-init encoder of the same architecture.

Resumable (finished runs and evaluations are reused) and safe to run as several processes on
disjoint ``--only`` lists (each merges its rows into the results file). On a 2-core CPU, run two
processes pinned one per core with one thread each: ``OMP_NUM_THREADS=1 taskset -c 0 python
benchmarks/methods_budget.py --threads 1 --only simclr byol ...``.

    SELFSUP_DATA=../shared/datasets python benchmarks/methods_budget.py
    SELFSUP_DATA=../shared/datasets python benchmarks/methods_budget.py --table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from budget_common import add_budget_args, read_rows, train, train_fields, write_rows

from selfsup.data import load_source
from selfsup.evaluate import evaluate_encoder, load_eval_data
from selfsup.evaluate.pretext import evaluate_pretext
from selfsup.models import load_method

METHODS = [
    "simclr",
    "moco_v2",
    "moco_v3",
    "dino",
    "cpc",
    "byol",
    "simsiam",
    "barlow_twins",
    "vicreg",
]
# (row label, method, recipe, overrides): the negatives sweep
NEGATIVES: list[tuple[str, str, str, list[str]]] = [
    *[
        (f"simclr_bs{b}", "simclr", "simclr_cifar10_cpu", [f"train.batch_size={b}"])
        for b in (64, 128, 512)
    ],
    *[
        (f"moco_v2_q{k}", "moco_v2", "moco_v2_cifar10_cpu", [f"method_args.queue_size={k}"])
        for k in (256, 1024, 16384)
    ],
]
HEADS = [("simclr", "projector"), ("moco_v2", "projector"), ("moco_v3", "projector")]
PRETEXT_KEYS = {
    "simclr": "positive_retrieval_top1",
    "moco_v2": "positive_retrieval_top1",
    "moco_v3": "positive_retrieval_top1",
    "dino": "teacher_view_agreement",
    "cpc": "prediction_accuracy",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_budget_args(
        p,
        "methods_budget",
        "row labels to run (method names, negatives labels such "
        "as simclr_bs64 or moco_v2_q256, '<method>+projector', 'random')",
    )
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--pretext-images", type=int, default=2000)
    p.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs over the 20k subset for every run but CPC (its recipe's 1)",
    )
    p.add_argument("--table", action="store_true", help="only print the tables")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out, results_path = Path(args.out), Path(args.results)
    rows = read_rows(results_path)
    if args.table:
        _tables(rows)
        return
    wanted = lambda label: not args.only or label in args.only  # noqa: E731
    threads = [f"train.num_threads={args.threads}"] if args.threads else []
    data = load_eval_data("cifar10")
    held_out = load_source("cifar10", split="test").subset(list(range(args.pretext_images)))

    def save(label: str, r: dict) -> None:
        rows[label] = r
        print(json.dumps(r), flush=True)
        write_rows(results_path, rows, _budget(args))
        rows.update(read_rows(results_path))

    runs = [(m, m, f"{m}_cifar10_cpu", [], "methods") for m in METHODS]
    runs += [(*n, "negatives") for n in NEGATIVES]
    for label, method, recipe, extra, group in runs:
        if not wanted(label):
            continue
        epochs = [] if method == "cpc" else [f"train.epochs={args.epochs}"]
        summary = train(method, recipe, out / label, [*epochs, *extra, *threads, *args.overrides])
        if rows.get(label, {}).get("checkpoint_step") == summary.get("steps"):
            if group == "methods" and not rows[label].get("pretext"):  # metric added since
                pretext = evaluate_pretext(load_method(out / label), held_out)
                save(label, {**rows[label], "pretext": pretext})
            print(f"{label}: evaluated already")
            continue
        t0 = time.perf_counter()
        protocols = ("knn", "linear") if group == "methods" else ("knn",)
        r = evaluate_encoder(
            str(out / label), data, protocols=protocols, linear_epochs=args.linear_epochs
        )
        if group == "methods":
            r["pretext"] = evaluate_pretext(load_method(out / label), held_out)
        r.update(
            name=label,
            group=group,
            method=method,
            recipe=recipe,
            overrides=extra,
            **train_fields(summary),
            eval_minutes=(time.perf_counter() - t0) / 60,
        )
        save(label, r)

    for method, head in HEADS:
        label = f"{method}+{head}"
        if not wanted(label) or label in rows or not (out / method / "summary.json").exists():
            continue
        r = evaluate_encoder(
            str(out / method),
            data,
            protocols=("knn", "linear"),
            linear_epochs=args.linear_epochs,
            head=head,
        )
        save(label, {**r, "name": label, "group": "heads", "method": method})

    if wanted("random") and "random" not in rows and (out / "simclr").exists():
        r = evaluate_encoder(
            f"random:{out / 'simclr'}",
            data,
            protocols=("knn", "linear"),
            linear_epochs=args.linear_epochs,
        )
        save("random", {**r, "name": "random", "group": "baseline"})
    _tables(rows)


def _budget(args: argparse.Namespace) -> dict:
    return {
        "backbone": "resnet18 (CIFAR stem), width 0.25",
        "subset": 20000,
        "recipes": f"<method>_cifar10_cpu for {args.epochs} epochs ({args.epochs * 20}k "
        "images seen; CPC its recipe's 1 epoch, 20k)",
        "batch": 256,
        "precision": "auto (fp32 here)",
        "threads_per_run": args.threads,
        "eval": "kNN (k=200/20, t=0.1) and linear probe (BN, SGD, "
        f"{args.linear_epochs} epochs) on all 50k train / 10k test; pretext metrics "
        f"on the first {args.pretext_images} test images",
    }


def _pretext(r: dict) -> str:
    pre = r.get("pretext") or {}
    key = PRETEXT_KEYS.get(r.get("method", ""))
    if key in pre:
        return f"{key} {pre[key]:.3f}"
    return ", ".join(f"{k} {v:.3g}" for k, v in list(pre.items())[:1]) or "-"


def _tables(rows: dict[str, dict]) -> None:
    """Print the three Markdown tables (methods, negatives, heads)."""
    rnd = rows.get("random")
    print(
        "\n| encoder | kNN@200 | kNN@20 | linear | vs random (kNN@200 / linear) | pretext metric "
        "| images seen | train min | train img/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    if rnd:
        print(
            f"| random init | {rnd['knn@200']:.3f} | {rnd['knn@20']:.3f} | "
            f"{rnd['linear_top1']:.3f} | - | - | - | - | - |"
        )
    for m in METHODS:
        r = rows.get(m)
        if not r:
            continue
        dk = r["knn@200"] - rnd["knn@200"] if rnd else None
        delta = f"{dk:+.3f} / {r['linear_top1'] - rnd['linear_top1']:+.3f}" if rnd else "-"
        print(
            f"| {m} | {r['knn@200']:.3f} | {r['knn@20']:.3f} | {r['linear_top1']:.3f} | {delta} "
            f"| {_pretext(r)} | {r['images_seen']:,} | {r['train_minutes']:.1f} "
            f"| {r['train_images_per_second']:.0f} |"
        )

    print("\n| run | negatives per query | kNN@200 | kNN@20 | images seen | train min |")
    print("|---|---|---|---|---|---|")
    cells = [
        ("simclr_bs64", 2 * 64 - 2),
        ("simclr_bs128", 2 * 128 - 2),
        ("simclr", 2 * 256 - 2),
        ("simclr_bs512", 2 * 512 - 2),
        ("moco_v2_q256", 256),
        ("moco_v2_q1024", 1024),
        ("moco_v2", 4096),
        ("moco_v2_q16384", 16384),
    ]
    for label, negatives in cells:
        r = rows.get(label)
        if r:
            name = {"simclr": "simclr_bs256", "moco_v2": "moco_v2_q4096"}.get(label, label)
            print(
                f"| {name} | {negatives} | {r['knn@200']:.3f} | {r['knn@20']:.3f} "
                f"| {r['images_seen']:,} | {r['train_minutes']:.1f} |"
            )

    print("\n| run | features | dim | kNN@200 | linear |")
    print("|---|---|---|---|---|")
    for method, head in HEADS:
        for r, what in ((rows.get(method), "encoder"), (rows.get(f"{method}+{head}"), head)):
            if r:
                print(
                    f"| {method} | {what} | {r['feature_dim']} | {r['knn@200']:.3f} "
                    f"| {r['linear_top1']:.3f} |"
                )


if __name__ == "__main__":
    main()
