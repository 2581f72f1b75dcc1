"""The method x evaluation table on CIFAR-10 under the CPU-budget protocol (BENCHMARKS.md).

Every registered method trains with its ``<method>_cifar10_cpu`` recipe (ResNet-18 CIFAR stem
at width 0.25, or MAE's micro ViT; the 20k-image CIFAR-10 subset; fp32 here), the joint-
embedding family at 3 epochs (60k images seen), beside a random-init encoder and a supervised
encoder trained on the same budget. Each cell is evaluated by ``evaluate.suite.evaluate_all``:
kNN (k=200 and 20, t=0.1) and a linear probe on all 50k train / 10k test images, the method's
pretext metric on the first 2000 test images, mean corruption accuracy of the linear probe on
12 corruptions x 5 severities of 2000 test images, parameters and FLOPs, and the pictures
(t-SNE, retrieval grid, confusion matrix).

Resumable: a cell whose run finished and whose row is in the results file is skipped; a run that
was killed resumes from its last checkpoint. ``--reuse DIR`` adopts finished runs from another
benchmark's run directory when their config is the cell's (e.g. ``methods_budget.py``'s runs,
same protocol). Several processes may run disjoint ``--only`` cells at once.

    python benchmarks/run_table.py --threads 1 --only simclr rotation random
    python benchmarks/run_table.py --table          # print the Markdown table of what is done

Writes ``benchmarks/results/table.json``, ``benchmarks/results/table.md`` and one
``eval all`` JSON per cell under ``<out>/eval/`` (so ``selfsup report <out>/* --eval <out>/eval``
shows the runs side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from budget_common import add_budget_args, read_rows, train, train_fields, write_rows

from selfsup.config import dump_config, load_config
from selfsup.evaluate.protocols import load_eval_data
from selfsup.evaluate.suite import SuiteOptions, evaluate_all, write_result
from selfsup.methods import list_methods

JOINT_EMBEDDING = {
    "simclr",
    "moco_v2",
    "moco_v3",
    "dino",
    "byol",
    "simsiam",
    "barlow_twins",
    "vicreg",
}
JOINT_EPOCHS = 3
"""Epochs over the 20k subset for the joint-embedding family (60k images seen, as in
``methods_budget.py``); every other method keeps its recipe's budget."""
SUPERVISED_RECIPE = "supervised_cifar10_cpu"
PRETEXT_KEY = {
    # the headline pretext number per method (others stay in the JSON)
    "simclr": "positive_retrieval_top1", "moco_v2": "positive_retrieval_top1",
    "moco_v3": "positive_retrieval_top1", "byol": "positive_retrieval_top1",
    "simsiam": "positive_retrieval_top1", "barlow_twins": "positive_retrieval_top1",
    "vicreg": "positive_retrieval_top1", "dino": "teacher_view_agreement",
    "cpc": "prediction_accuracy", "rotation": "rotation_accuracy",
    "jigsaw": "permutation_accuracy", "relative_location": "location_accuracy",
    "colorization": "psnr", "split_brain": "psnr", "inpainting": "masked_psnr",
    "mae": "masked_psnr",
}  # fmt: skip
IGNORED_KEYS = {"out_dir", ("train", "num_threads"), ("train", "progress")}


FAMILY_ORDER = [
    "contrastive",
    "self-distillation",
    "redundancy reduction",
    "masked reconstruction",
    "transformation",
    "baseline",
]


def cells() -> list[tuple[str, str, str, list[str]]]:
    """(row name, method, recipe, overrides) for every registered method, by family."""
    out = []
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    for cls in sorted(list_methods(), key=lambda c: (rank.get(c.family, len(rank)), c.name)):
        name = cls.name
        recipe = SUPERVISED_RECIPE if name == "supervised" else f"{name}_cifar10_cpu"
        extra = [f"train.epochs={JOINT_EPOCHS}"] if name in JOINT_EMBEDDING else []
        out.append((name, name, recipe, extra))
    return out


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    config["train"] = {k: v for k, v in config.get("train", {}).items()
                       if ("train", k) not in IGNORED_KEYS}  # fmt: skip
    return config


def adopt(run_dir: Path, reuse_dirs: list[Path], method: str, recipe: str,
          overrides: list[str]) -> Path | None:  # fmt: skip
    """Link ``run_dir`` to a finished run of the same config in one of ``reuse_dirs``."""
    if run_dir.exists():
        return None
    want = _comparable(yaml.safe_load(dump_config(load_config(method, recipe, overrides))))
    for base in reuse_dirs:
        cand = base / run_dir.name
        if (cand / "summary.json").exists() and (cand / "config.yaml").exists():
            have = _comparable(yaml.safe_load((cand / "config.yaml").read_text()))
            if have == want:
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                run_dir.symlink_to(os.path.relpath(cand.resolve(), run_dir.parent.resolve()))
                return cand
    return None


def row_of(result: dict[str, Any], name: str, method: str) -> dict[str, Any]:
    """The table's fields from an ``evaluate_all`` result."""
    pretext = result.get("pretext") or {}
    key = PRETEXT_KEY.get(method)
    rob = (result.get("robustness") or {}).get("linear") or {}
    return {
        "name": name,
        "method": method,
        "knn@200": result.get("knn@200"),
        "knn@20": result.get("knn@20"),
        "linear_top1": result.get("linear_top1"),
        "pretext_metric": key if key in pretext else None,
        "pretext_value": pretext.get(key) if key in pretext else None,
        "clean_top1": rob.get("clean"),
        "mean_corruption_top1": rob.get("mean_corruption_accuracy"),
        "relative_drop": rob.get("relative_drop"),
        "params": (result.get("cost") or {}).get("parameters"),
        "flops_per_image": (result.get("cost") or {}).get("forward_flops_per_image"),
        "eval_seconds": result.get("seconds"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_budget_args(p, "table", "cells to run (method names, 'random')")
    p.add_argument("--markdown", default="benchmarks/results/table.md")
    p.add_argument(
        "--reuse",
        nargs="*",
        default=["benchmarks/runs/methods_budget"],
        help="run directories whose finished runs of the same config are adopted",
    )
    p.add_argument("--data", default="cifar10", help="labeled dataset for evaluation")
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--robustness-images", type=int, default=2000)
    p.add_argument("--pretext-images", type=int, default=2000)
    p.add_argument("--table", action="store_true", help="only print (and write) the table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out, results_path = Path(args.out), Path(args.results)
    rows = read_rows(results_path)
    if args.table:
        _write_table(rows, Path(args.markdown))
        return
    wanted = lambda name: not args.only or name in args.only  # noqa: E731
    todo = [c[0] for c in cells() if wanted(c[0]) and c[0] not in rows] + (
        ["random"] if wanted("random") and "random" not in rows else []
    )
    if len(todo) > 1:
        # one process per cell: peak memory (the process's maximum RSS) is then the cell's own
        for name in todo:
            cmd = [sys.executable, __file__, *_without_only(sys.argv[1:]), "--only", name]
            print(f"== {name}: {' '.join(cmd)}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                print(f"{name}: failed (see above); going on", flush=True)
        _write_table(read_rows(results_path), Path(args.markdown))
        return
    threads = [f"train.num_threads={args.threads}"] if args.threads else []
    data = load_eval_data(args.data)
    opts = SuiteOptions(linear_epochs=args.linear_epochs, pretext_images=args.pretext_images,
                        robustness_test_images=args.robustness_images,
                        pictures_dir=out / "eval" / "pictures")  # fmt: skip
    axes = ("knn", "linear", "pretext", "robustness", "cost", "pictures")
    budget = {
        "protocol": "BENCHMARKS.md#the-cpu-budget-protocol",
        "recipes": "<method>_cifar10_cpu (supervised: supervised_cifar10_cpu)",
        "joint_embedding_epochs": JOINT_EPOCHS,
        "eval": f"kNN k=200/20 t=0.1 and linear probe ({args.linear_epochs} epochs) on "
                f"{args.data} train/test; pretext on the first {args.pretext_images} test "
                f"images; robustness on {args.robustness_images} test images",
        "overrides": args.overrides,
    }  # fmt: skip

    def save(name: str, r: dict[str, Any]) -> None:
        rows[name] = r
        print(json.dumps(r), flush=True)
        write_rows(results_path, rows, budget)
        rows.update(read_rows(results_path))

    for name, method, recipe, extra in cells():
        if not wanted(name):
            continue
        overrides = [*extra, *threads, *args.overrides]
        run_dir = out / name
        reused = adopt(run_dir, [Path(d) for d in args.reuse], method, recipe,
                       [f"out_dir={run_dir}", *overrides])  # fmt: skip
        if reused:
            print(f"{name}: adopted the finished run {reused}")
        summary = train(method, recipe, run_dir, overrides)
        if rows.get(name, {}).get("checkpoint_step") == summary.get("steps"):
            print(f"{name}: done already")
            continue
        t0 = time.perf_counter()
        result = evaluate_all(str(run_dir), data, axes=axes, options=opts)
        write_result(result, out / "eval")
        row = row_of(result, name, method)
        row.update(recipe=recipe, overrides=extra, **train_fields(summary),
                   peak_rss_mib=summary.get("peak_rss_mib"),
                   eval_minutes=(time.perf_counter() - t0) / 60)  # fmt: skip
        save(name, row)

    if wanted("random") and (out / "simclr" / "summary.json").exists():
        spec = f"random:{out / 'simclr'}"
        if "random" not in rows:
            result = evaluate_all(spec, data, axes=axes, options=opts)
            write_result(result, out / "eval")
            save("random", row_of(result, "random", "random"))
    _write_table(read_rows(results_path), Path(args.markdown))


def _without_only(argv: list[str]) -> list[str]:
    """``argv`` without ``--only`` and its values."""
    out, skipping = [], False
    for a in argv:
        if a == "--only":
            skipping = True
        elif skipping and a.startswith("--"):
            skipping = False
            out.append(a)
        elif not skipping:
            out.append(a)
    return out


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _write_table(rows: dict[str, dict[str, Any]], path: Path) -> None:
    """One Markdown row per cell (registry order, random last): the issue's columns."""
    order = [name for name, *_ in cells()] + ["random"]
    lines = [
        "| method | pretext metric | kNN@200 | kNN@20 | linear | mCA (linear) | images seen "
        "| train min | images/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = {k: max((r[k] for r in rows.values() if r.get(k) is not None), default=None)
            for k in ("knn@200", "knn@20", "linear_top1", "mean_corruption_top1")}  # fmt: skip
    for name in order:
        r = rows.get(name)
        if r is None:
            continue

        def cell(k: str, r: dict[str, Any] = r) -> str:
            s = _fmt(r.get(k))
            return f"**{s}**" if r.get(k) is not None and r.get(k) == best[k] else s

        pretext = (f"{r['pretext_metric']} {r['pretext_value']:.3f}"
                   if r.get("pretext_value") is not None else "–")  # fmt: skip
        lines.append(
            f"| {name} | {pretext} | {cell('knn@200')} | {cell('knn@20')} "
            f"| {cell('linear_top1')} | {cell('mean_corruption_top1')} "
            f"| {_fmt(r.get('images_seen'), ',')} "
            f"| {_fmt(r.get('train_minutes'), '.1f')} "
            f"| {_fmt(r.get('train_images_per_second'), '.0f')} "
            f"| {_fmt(r.get('peak_rss_mib'), ',.0f')} |"
        )
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
