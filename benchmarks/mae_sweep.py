"""MAE at a CPU budget on CIFAR-10: mask ratio sweep (0.25/0.5/0.75/0.9, random masking) and
random vs block masking at 0.75, each beside a random-init encoder of the same architecture.

Every cell trains the ``mae_cifar10_cpu`` recipe (vit_micro, patch 4, 1-block 64-d decoder,
norm-pix loss, AdamW) for the same number of images, then evaluates kNN (k=200/20, t=0.1) and a
linear probe (BatchNorm without affine + linear, the MAE protocol) on frozen features, and the
masked-patch PSNR on held-out images. Resumable: finished cells are reused.

    SELFSUP_DATA=../shared/datasets python benchmarks/mae_sweep.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from selfsup.config import load_config
from selfsup.data import load_source, random_subset_indices
from selfsup.evaluate import evaluate_encoder, load_eval_data
from selfsup.evaluate.pretext import evaluate_pretext
from selfsup.models import load_method
from selfsup.pretraining import pretrain
from selfsup.utils.io import latest_checkpoint

CELLS = [
    ("random", 0.25),
    ("random", 0.5),
    ("random", 0.75),
    ("random", 0.9),
    ("block", 0.75),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/runs/mae_sweep")
    p.add_argument("--results", default="benchmarks/results/mae_sweep.json")
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--eval-train", type=int, default=10000)
    p.add_argument("--eval-test", type=int, default=2000)
    p.add_argument("--linear-epochs", type=int, default=50)
    args = p.parse_args()
    out = Path(args.out)
    data = load_eval_data("cifar10", train_subset=args.eval_train, test_subset=args.eval_test)
    held_out = load_source("cifar10", split="test")
    held_out = held_out.subset(random_subset_indices(len(held_out), 1000, 7))
    rows = []
    for masking, ratio in CELLS:
        run = out / f"{masking}_{ratio}"
        cfg = load_config(
            "mae",
            "mae_cifar10_cpu",
            [
                f"out_dir={run}",
                f"data.subset={args.subset}",
                f"train.epochs={args.epochs}",
                f"method_args.mask_ratio={ratio}",
                f"method_args.masking={masking}",
                "train.progress=false",
                "train.knn_monitor.every_epochs=0",
            ],
        )
        if not (run / "summary.json").exists():
            pretrain(cfg, resume=latest_checkpoint(run) is not None)
        summary = json.loads((run / "summary.json").read_text())
        t0 = time.perf_counter()
        r = evaluate_encoder(
            str(run), data, protocols=("knn", "linear"), linear_epochs=args.linear_epochs
        )
        r.update(evaluate_pretext(load_method(run), held_out))
        r.update(
            masking=masking,
            mask_ratio=ratio,
            train_minutes=summary["seconds"] / 60,
            eval_minutes=(time.perf_counter() - t0) / 60,
        )
        rows.append(r)
        print(json.dumps(r), flush=True)
    baseline = evaluate_encoder(
        f"random:{out / 'random_0.75'}",
        data,
        protocols=("knn", "linear"),
        linear_epochs=args.linear_epochs,
    )
    baseline.update(masking="-", mask_ratio=None)
    rows.append(baseline)
    result = {
        "command": "python benchmarks/mae_sweep.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in {"out", "results"}
        ),
        "budget": {
            "backbone": "vit_micro (dim 64, depth 2, patch 4)",
            "subset": args.subset,
            "epochs": args.epochs,
            "batch": 256,
            "eval": f"kNN + linear (BN, {args.linear_epochs} epochs) on "
            f"{args.eval_train} train / {args.eval_test} test images; PSNR on "
            "1000 held-out test images",
        },
        "rows": rows,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2))
    print("\n| masking | ratio | masked PSNR | kNN@200 | kNN@20 | linear | train min |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        psnr = f"{r['masked_psnr']:.2f}" if "masked_psnr" in r else "-"
        minutes = f"{r['train_minutes']:.1f}" if "train_minutes" in r else "-"
        name = "random init" if r["mask_ratio"] is None else r["masking"]
        print(
            f"| {name} | {r['mask_ratio'] or '-'} | {psnr} | {r['knn@200']:.3f} | "
            f"{r['knn@20']:.3f} | {r['linear_top1']:.3f} | {minutes} |"
        )


if __name__ == "__main__":
    main()
