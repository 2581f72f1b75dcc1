"""CIFAR-10 at a CPU budget: the transformation pretexts beside random init and SimCLR.

Trains every transformation-pretext method with its ``<name>_cifar10_cpu`` recipe (ResNet-18
CIFAR stem at width 0.25, a 20k-image CIFAR-10 subset), then measures, per method: its pretext
metric on 2,000 held-out test images (``selfsup eval pretext``), kNN (k=200 and 20, t=0.1) over
the full 50k train bank for the 10k test images, and a linear probe on frozen features — the
same protocol as ``cifar10_budget.py``, whose SimCLR and random-init rows are quoted beside
(same backbone, subset and evaluation; run it first). Random-init encoders are evaluated for
each input space used (RGB, and the L channel for colorization).

Resumable: a finished run is reused and a finished evaluation is read back from the results
file. Writes ``benchmarks/results/pretext_budget.json`` and prints a Markdown table.

    SELFSUP_DATA=../shared/datasets python benchmarks/pretext_budget.py
    SELFSUP_DATA=../shared/datasets python benchmarks/pretext_budget.py --only rotation jigsaw
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from budget_common import read_rows, train, train_fields, write_rows

from selfsup.data import load_source
from selfsup.evaluate import evaluate_encoder, load_eval_data
from selfsup.evaluate.pretext import evaluate_pretext
from selfsup.models import load_method

# (row label, method, recipe, extra overrides)
RUNS: list[tuple[str, str, str, list[str]]] = [
    ("rotation", "rotation", "rotation_cifar10_cpu", []),
    ("jigsaw", "jigsaw", "jigsaw_cifar10_cpu", []),
    ("relative_location", "relative_location", "relative_location_cifar10_cpu", []),
    ("colorization", "colorization", "colorization_cifar10_cpu", []),
    ("split_brain", "split_brain", "split_brain_cifar10_cpu", []),
    ("inpainting", "inpainting", "inpainting_cifar10_cpu", []),
    ("inpainting_adv", "inpainting", "inpainting_adv_cifar10_cpu", []),
    # a 50x stronger adversarial term with the discriminator at the full learning rate
    (
        "inpainting_adv_strong",
        "inpainting",
        "inpainting_adv_cifar10_cpu",
        ["method_args.adversarial_weight=0.05", "method_args.disc_lr_scale=1.0"],
    ),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/runs/pretext_budget")
    p.add_argument("--results", default="benchmarks/results/pretext_budget.json")
    p.add_argument("--baseline", default="benchmarks/results/cifar10_budget.json")
    p.add_argument(
        "--only",
        nargs="*",
        help="row labels to run, 'random' for the random-init rows (default: all)",
    )
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--pretext-images", type=int, default=2000)
    p.add_argument("--overrides", nargs="*", default=[], help="key=value for every run")
    args = p.parse_args()
    out, results_path = Path(args.out), Path(args.results)
    rows = read_rows(results_path)

    data = load_eval_data("cifar10")
    held_out = load_source("cifar10", split="test").subset(list(range(args.pretext_images)))
    for label, method, recipe, extra in RUNS:
        if args.only and label not in args.only:
            continue
        run_dir = out / label
        summary = train(method, recipe, run_dir, [*extra, *args.overrides])
        if label in rows and rows[label].get("checkpoint_step") == summary.get("steps"):
            print(f"{label}: evaluated already")
            continue
        t0 = time.perf_counter()
        r = evaluate_encoder(
            str(run_dir), data, protocols=("knn", "linear"), linear_epochs=args.linear_epochs
        )
        r["pretext"] = evaluate_pretext(load_method(run_dir), held_out)
        r.update(
            name=label,
            method=method,
            recipe=recipe,
            overrides=extra + args.overrides,
            **train_fields(summary),
            eval_minutes=(time.perf_counter() - t0) / 60,
        )
        rows[label] = r
        print(json.dumps(r))
        _write(results_path, rows, args)

    # The RGB random-init row is cifar10_budget.json's (same architecture and protocol).
    for label, spec in [
        ("random init (L channel)", f"random:{out / 'colorization'}"),
        ("random init (Lab, two branches)", f"random:{out / 'split_brain'}"),
    ]:
        if args.only and "random" not in args.only:
            continue
        if label in rows or not Path(spec.removeprefix("random:")).exists():
            continue
        r = evaluate_encoder(
            spec, data, protocols=("knn", "linear"), linear_epochs=args.linear_epochs
        )
        r["name"] = label
        rows[label] = r
        _write(results_path, rows, args)

    baseline = json.loads(Path(args.baseline).read_text()) if Path(args.baseline).exists() else None
    _table(rows, baseline)


def _write(path: Path, rows: dict[str, dict], args: argparse.Namespace) -> None:
    write_rows(
        path,
        rows,
        {
            "backbone": "resnet18 (CIFAR stem), width 0.25",
            "subset": 20000,
            "recipes": "<method>_cifar10_cpu",
            "precision": "auto (fp32 here)",
            "eval": "kNN (k=200/20, t=0.1) and linear probe (BN, SGD, "
            f"{args.linear_epochs} epochs) on all 50k train / 10k test; pretext "
            f"metrics on the first {args.pretext_images} test images",
        },
    )


PRETEXT_KEYS = {  # the headline pretext metric(s) of each method, in the table
    "rotation": ["rotation_accuracy"],
    "jigsaw": ["permutation_accuracy", "permutation_min_hamming"],
    "relative_location": ["location_accuracy"],
    "colorization": ["ab_l2_error", "grey_ab_l2_error", "psnr", "grey_psnr"],
    "split_brain": ["ab_l2_error", "l_abs_error"],
    "inpainting": ["masked_psnr", "mean_fill_psnr", "sharpness"],
}
RANDOM_FOR = {
    "colorization": "random init (L channel)",
    "split_brain": "random init (Lab, two branches)",
}


def _pretext_text(method: str, pretext: dict[str, float]) -> str:
    keys = [k for k in PRETEXT_KEYS.get(method, []) if k in pretext] or list(pretext)[:2]
    return ", ".join(f"{k} {pretext[k]:.3g}" for k in keys)


def _table(rows: dict[str, dict], baseline: dict | None) -> None:
    """Markdown table; each method beside the random-init encoder of its input space."""
    quoted = {r["name"]: r for r in (baseline or {"rows": []})["rows"]}
    randoms = {"random init (RGB)": quoted.get("random init")}
    randoms.update({k: v for k, v in rows.items() if k.startswith("random")})
    print(
        "\n| encoder | pretext metric (2,000 held-out test images) | kNN@200 | kNN@20 | linear "
        "| vs random init (kNN@200 / linear) | images seen | train minutes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    lines = [("random init (RGB)", randoms["random init (RGB)"], None)]
    if "SimCLR" in quoted:
        lines.append(("SimCLR", quoted["SimCLR"], "random init (RGB)"))
    order = [label for label, *_ in RUNS]
    ranked = sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    for name, r in ranked:
        if name.startswith("random"):
            lines.append((name, r, None))
        else:
            lines.append((name, r, RANDOM_FOR.get(r.get("method", ""), "random init (RGB)")))
    for name, r, ref_name in lines:
        if r is None:
            continue
        pretext = _pretext_text(r.get("method", ""), r["pretext"]) if r.get("pretext") else "-"
        seen = (
            f"{r['images_seen']:,}"
            if r.get("images_seen")
            else ("100,000" if name == "SimCLR" else "-")
        )
        minutes = f"{r['train_minutes']:.1f}" if "train_minutes" in r else "-"
        ref = randoms.get(ref_name) if ref_name else None
        if ref:
            dk, dl = r["knn@200"] - ref["knn@200"], r["linear_top1"] - ref["linear_top1"]
            verdict = (
                "beats"
                if dk > 0.01 and dl > 0.01
                else ("below" if dk < -0.01 and dl < -0.01 else "mixed/tied")
            )
            delta = f"{dk:+.3f} / {dl:+.3f} ({verdict})"
        else:
            delta = "-"
        print(
            f"| {name} | {pretext} | {r['knn@200']:.3f} | {r['knn@20']:.3f} | "
            f"{r['linear_top1']:.3f} | {delta} | {seen} | {minutes} |"
        )


if __name__ == "__main__":
    main()
