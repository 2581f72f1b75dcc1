"""``selfsup quickstart``: a few minutes from nothing to a pretrained encoder judged by kNN.

It pretrains a small ResNet with SimCLR on CIFAR-10 when it can find it (under
``$SELFSUP_DATA`` or ``./data``), otherwise on scikit-learn's bundled digits so that it also runs
offline with no data set up; then it compares the encoder's kNN accuracy with a random encoder
of the same architecture and prints where everything is.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.config import load_config
from selfsup.data import default_data_root, load_source


def _pick_dataset() -> tuple[str, str]:
    try:
        load_source("cifar10", split="train")
        load_source("cifar10", split="test")
        return "cifar10", f"CIFAR-10 found under {default_data_root()}"
    except FileNotFoundError:
        return "digits", (
            f"CIFAR-10 not found under {default_data_root()} (set SELFSUP_DATA); "
            "using scikit-learn's bundled digits instead"
        )


def quickstart_overrides(dataset: str, minutes: float, out_dir: str, device: str) -> list[str]:
    """The settings the quickstart trains with (sized for ~``minutes`` on a 2-core CPU)."""
    common = [
        f"out_dir={out_dir}",
        f"train.device={device}",
        "train.log_every_steps=5",
        "train.checkpoint_every_epochs=1",
        "eval_data.test_subset=2000",
    ]
    if dataset == "cifar10":
        # measured ~125 images/s (two views each) for this backbone on a 2-core AVX2 CPU, fp32
        images = int(minutes * 60 * 120)
        subset = 10_000
        return common + [
            "data.source=cifar10",
            f"data.subset={subset}",
            "eval_data.source=cifar10",
            f"eval_data.train_subset={subset}",
            "backbone.name=resnet18",
            "backbone.width=0.25",
            "train.batch_size=256",
            f"train.epochs={max(1.0, images / subset):.2f}",
            "train.optimizer.base_lr=0.5",
            "train.schedule.warmup_epochs=0.5",
            "method_args.temperature=0.2",
            "method_args.proj_hidden_dim=256",
        ]
    images = int(minutes * 60 * 150)
    return common + [
        "data.source=digits",
        "eval_data.source=digits",
        "backbone.name=resnet_tiny",
        "train.batch_size=128",
        f"train.epochs={max(2.0, images / 1437):.2f}",
        "train.optimizer.base_lr=0.5",
        "method_args.temperature=0.2",
        "method_args.proj_hidden_dim=256",
    ]


def run_quickstart(
    out_dir: str = "runs/quickstart", minutes: float = 3.0, device: str = "auto"
) -> dict:
    from selfsup.evaluate import evaluate_encoder, load_eval_data
    from selfsup.pretraining import pretrain

    dataset, note = _pick_dataset()
    print(f"selfsup quickstart: {note}")
    overrides = quickstart_overrides(dataset, minutes, out_dir, device)
    cfg = load_config("simclr", "simclr_cifar10_cpu", overrides)
    run_dir = cfg.resolved_out_dir()
    resume = (run_dir / "checkpoints").exists()
    print(
        f"pretraining SimCLR ({cfg.backbone.name}) on "
        f"{dataset} for {cfg.train.epochs} epochs" + (" (resuming)" if resume else "")
    )
    result = pretrain(cfg, resume=resume)

    e = cfg.eval_data
    data = load_eval_data(
        dataset, train_subset=e.train_subset, test_subset=e.test_subset, seed=cfg.seed
    )
    print(
        f"kNN evaluation: bank of {len(data.train)} labeled train images, "
        f"{len(data.test)} test images"
    )
    eval_device = "cuda" if str(device).startswith("cuda") else "cpu"
    rows = [
        evaluate_encoder(str(run_dir), data, device=eval_device),
        evaluate_encoder(f"random:{run_dir}", data, device=eval_device),
    ]
    (run_dir / "quickstart.json").write_text(json.dumps(rows, indent=2))
    print()
    print(f"{'encoder':<28}{'kNN@200':>10}{'kNN@20':>10}")
    for r in rows:
        print(f"{r['label'][:27]:<28}{r['knn@200']:>10.3f}{r['knn@20']:>10.3f}")
    print()
    print(f"run directory:   {run_dir}")
    print(f"encoder weights: {result.encoder_path}")
    print(f"metrics:         {Path(run_dir) / 'metrics.jsonl'}")
    print(f"results:         {Path(run_dir) / 'quickstart.json'}")
    print(f"next: selfsup eval linear {run_dir} random:{run_dir} --data {dataset}")
    return {"dataset": dataset, "run_dir": str(run_dir), "results": rows}
