"""Every method earns its row: each method trained for a wall-clock budget on CIFAR-10, then
kNN@200 and a linear probe beside the same architecture at random init (BENCHMARKS.md).

Protocol (issue 18): every method trains with its own ``<method>_cifar10_cpu`` recipe (the
supervised reference with ``supervised_cifar10_cpu``) for at most ``--minutes`` wall-clock
minutes (``train.time_budget_minutes``: the schedule is a function of elapsed time, so the run
completes it when the time is up) on the 45,000 CIFAR-10 training images left after holding out
a class-balanced 5,000 (``data.holdout=5000``). One run at a time, threads stated.

Two evaluation modes, so that hyper-parameters never see the test set:

- ``--split val`` (the search): kNN@200/20 with the 45k images as the bank and the 5k held-out
  images as queries; appends one row per run to ``method_quality_search.json`` (a log of every
  configuration tried, its budget and its validation kNN).
- ``--split test`` (once per final recipe): kNN@200/20 with the full 50k train set as the bank
  and the 10k test images as queries, a linear probe (train 50k / test 10k, features cached),
  the same for the architecture at random init, the method's pretext metric on 2,000 test
  images and the effective rank of its embeddings at the end of training; writes the row into
  ``method_quality.json``.

A run directory is reused when it holds a finished run of the same configuration, so the test
evaluation of the chosen configuration reads the very run that was validated.

    python benchmarks/method_quality.py --methods simclr byol --minutes 20 --split val
    python benchmarks/method_quality.py --methods simclr byol --minutes 20 --split test
    python benchmarks/method_quality.py --table      # print the Markdown table of the results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from selfsup.config import dump_config, load_config
from selfsup.data import load_source
from selfsup.evaluate.pretext import evaluate_pretext
from selfsup.evaluate.protocols import evaluate_encoder, load_eval_data
from selfsup.methods import list_methods
from selfsup.models import load_method
from selfsup.train import Trainer
from selfsup.utils.precision import cpu_info

HOLDOUT = 5000
FAMILY_ORDER = ["contrastive", "self-distillation", "redundancy reduction",
                "masked reconstruction", "transformation", "baseline"]  # fmt: skip
PRETEXT_KEY = {
    "simclr": "positive_retrieval_top1", "moco_v2": "positive_retrieval_top1",
    "moco_v3": "positive_retrieval_top1", "byol": "positive_retrieval_top1",
    "simsiam": "positive_retrieval_top1", "barlow_twins": "positive_retrieval_top1",
    "vicreg": "positive_retrieval_top1", "dino": "teacher_view_agreement",
    "cpc": "prediction_accuracy", "rotation": "rotation_accuracy",
    "jigsaw": "permutation_accuracy", "relative_location": "location_accuracy",
    "colorization": "psnr", "split_brain": "psnr", "inpainting": "masked_psnr",
    "mae": "masked_psnr", "supervised": None,
}  # fmt: skip


def ordered_methods() -> list[str]:
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return [c.name for c in sorted(list_methods(), key=lambda c: (rank.get(c.family, 99), c.name))]


def recipe_of(method: str) -> str:
    return f"{method}_cifar10_cpu"


def run_config(method: str, recipe: str, minutes: float, seed: int, extra: list[str],
               threads: int | None) -> list[str]:  # fmt: skip
    """The overrides of a benchmark run (on top of the recipe)."""
    out = [
        "data.source=cifar10", f"data.holdout={HOLDOUT}", "data.subset=null",
        f"train.time_budget_minutes={minutes}", "train.progress=false",
        "train.knn_monitor.every_epochs=0", f"seed={seed}", *extra,
    ]  # fmt: skip
    if threads:
        out.append(f"train.num_threads={threads}")
    return out


def run_dir_of(root: Path, method: str, minutes: float, seed: int, extra: list[str],
               threads: int | None) -> Path:  # fmt: skip
    tag = f"{method}_{minutes:g}min_s{seed}" + (f"_t{threads}" if threads else "")
    if extra:
        tag += "_" + hashlib.sha1(" ".join(sorted(extra)).encode()).hexdigest()[:8]
    return root / tag


ADDED_OPTIONS = {
    ("method_args", "fix_predictor_lr"): False,  # SimSiam: the predictor followed the schedule
    ("method_args", "directions"): 1,  # CPC: predictions downwards only
}
"""Options added since some runs were made, each with the value those runs behaved as."""


def train_or_reuse(method: str, recipe: str, run_dir: Path, overrides: list[str]) -> dict:
    """Train the run (or resume it); a finished run of the same config is reused."""
    cfg = load_config(method, recipe, [f"out_dir={run_dir}", *overrides])
    summary = run_dir / "summary.json"
    if summary.exists():
        have = yaml.safe_load((run_dir / "config.yaml").read_text())
        want = yaml.safe_load(dump_config(cfg))
        have.pop("out_dir", None), want.pop("out_dir", None)  # the same place, spelt two ways
        # an option added since the run was made matches when it is at its unset default (None)
        # or at the value that reproduces what the run did (ADDED_OPTIONS)
        for (section, key), before in ADDED_OPTIONS.items():
            if key in want.get(section, {}) and key not in have.get(section, {}):
                have.setdefault(section, {})[key] = before
        if _drop_none(have) != _drop_none(want):
            raise SystemExit(f"{run_dir} holds a finished run of another configuration")
        return json.loads(summary.read_text())
    resume = (run_dir / "checkpoints").exists()
    Trainer(cfg, resume=resume).fit()
    return json.loads(summary.read_text())


def _drop_none(value: Any) -> Any:
    """A config mapping without its None-valued keys, recursively."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def last_logged(run_dir: Path, key: str) -> float | None:
    value = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record and isinstance(record[key], (int, float)):
            value = float(record[key])
    return value


def pretext_value(run_dir: Path, method: str, images: int = 2000) -> tuple[str | None, Any]:
    key = PRETEXT_KEY.get(method)
    if key is None:
        return None, None
    loaded = load_method(str(run_dir))
    test = load_source("cifar10", split="test")
    test = test.subset(list(range(min(images, len(test)))))
    metrics = evaluate_pretext(loaded, test, seed=0)
    return key, metrics.get(key)


def evaluate(
    run_dir: Path, split: str, linear_epochs: int, global_pool: str | None = None
) -> dict[str, Any]:
    """kNN (and, on the test split, the linear probe) of the run and its random init, a ViT's
    feature read as ``global_pool`` when given (both alike)."""
    if split == "val":
        data = load_eval_data("cifar10", holdout=HOLDOUT)
        r = evaluate_encoder(str(run_dir), data, protocols=("knn",), global_pool=global_pool)
        rnd = evaluate_encoder(f"random:{run_dir}", data, protocols=("knn",),
                               global_pool=global_pool)  # fmt: skip
        return {"val_knn_top1": r["knn@200"], "val_knn20_top1": r["knn@20"],
                "val_random_knn_top1": rnd["knn@200"]}  # fmt: skip
    data = load_eval_data("cifar10")
    out: dict[str, Any] = {}
    for prefix, spec in (("", str(run_dir)), ("random_", f"random:{run_dir}")):
        r = evaluate_encoder(spec, data, protocols=("knn", "linear"), linear_epochs=linear_epochs,
                             global_pool=global_pool)  # fmt: skip
        out[f"{prefix}knn_top1"] = r["knn@200"]
        out[f"{prefix}knn20_top1"] = r["knn@20"]
        out[f"{prefix}linear_top1"] = r["linear_top1"]
    return out


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| method | backbone | budget (min) | images seen | kNN@200 | random | Δ kNN | "
            "linear | random | pretext metric | eff. rank |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    order = {m: i for i, m in enumerate(ordered_methods())}
    for r in sorted(rows, key=lambda r: (order.get(r["method"], 99), r["budget_minutes"])):
        pm = f"{r['pretext_metric']} {r['pretext_value']:.3f}" if r.get("pretext_metric") else "–"
        er = f"{r['effective_rank']:.1f}" if r.get("effective_rank") is not None else "–"
        lines.append(
            f"| {r['method']} | {r['backbone']} | {r['train_minutes']:.1f} | "
            f"{r['images_seen']:,} | {r['knn_top1']:.3f} | {r['random_knn_top1']:.3f} | "
            f"{r['knn_top1'] - r['random_knn_top1']:+.3f} | {r['linear_top1']:.3f} | "
            f"{r['random_linear_top1']:.3f} | {pm} | {er} |"
        )
    return "\n".join(lines)


MEASURED = re.compile(r"<!-- measured-row: (\w+) -->.*?(?=\n## |\Z)", re.S)


def overrides_flag(r: dict[str, Any]) -> str:
    """The ``--overrides`` a result row was run with, as command-line text ("" when none)."""
    overrides = [f"{r['method']}:{o}" for o in r.get("overrides") or []]
    return " --overrides " + " ".join(overrides) if overrides else ""


def measured_line(r: dict[str, Any]) -> str:
    """One result row as a sentence of the docs page's "Measured" paragraph."""
    gain = r["knn_top1"] - r["random_knn_top1"]
    verdict = "clears" if gain >= 0.10 else "does not clear"
    pm = (f"; pretext {r['pretext_metric']} {r['pretext_value']:.3f}"
          if r.get("pretext_metric") and r.get("pretext_value") is not None else "")  # fmt: skip
    return (
        f"`python benchmarks/method_quality.py --split test --minutes {r['budget_minutes']:g} "
        f"--threads {r['threads']} --methods {r['method']}"
        + (f" --readout {r['method']}={r['readout']}" if r.get("readout") else "")
        + overrides_flag(r)
        + f"` (recipe `{r['recipe']}`, "
        f"{r['backbone']}, seed {r['seed']}, {r['images_seen']:,} images in "
        f"{r['train_minutes']:.1f} min, {r['precision']}): CIFAR-10 test kNN@200 "
        f"**{r['knn_top1']:.3f}** vs {r['random_knn_top1']:.3f} at random init ({gain:+.3f}, "
        f"{verdict} the +0.10 bar); linear probe {r['linear_top1']:.3f} vs "
        f"{r['random_linear_top1']:.3f}{pm}."
    )


def measured_text(rows: list[dict[str, Any]]) -> str:
    """The docs page's "Measured" paragraph: every budget measured for one method, shortest
    first."""
    rows = sorted(rows, key=lambda r: r["budget_minutes"])
    lines = [f"<!-- measured-row: {rows[0]['method']} -->"]
    lines += [("- " if len(rows) > 1 else "") + measured_line(r) for r in rows]
    lines.append('The whole table: BENCHMARKS.md, "Every method earns its row".')
    return "\n".join(lines) + "\n"


def write_docs(rows: list[dict[str, Any]], docs: Path = Path("docs/methods")) -> list[str]:
    """Put each method's measured paragraph (all its budgets) in ``docs/methods/<method>.md``
    (replacing the one there: rerunning after new results keeps the pages current). Returns the
    pages written."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    written = []
    for method, method_rows in by_method.items():
        page = docs / f"{method}.md"
        if not page.exists():
            continue
        text = page.read_text()
        new = MEASURED.sub(lambda _m, rs=method_rows: measured_text(rs), text, count=1)
        if new != text:
            page.write_text(new)
            written.append(str(page))
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="*", help="default: every registered method")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--runs", default="benchmarks/runs/method_quality")
    p.add_argument("--out", default=None, help="results file (default by --split)")
    p.add_argument("--recipe", nargs="*", default=[], help="METHOD=RECIPE replacements")
    p.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="METHOD:key=value for one method, or key=value for all",
    )
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--readout", nargs="*", default=[],
                   help="METHOD=cls|avg: how to pool a ViT method's features for evaluation "
                        "(choose it on --split val)")  # fmt: skip
    p.add_argument("--table", action="store_true", help="print the Markdown table and stop")
    p.add_argument("--docs", action="store_true",
                   help="write the measured rows into docs/methods/*.md, stop")  # fmt: skip
    args = p.parse_args()
    reports = args.table or args.docs  # these read the test rows, whatever --split says
    results = Path(args.out or (
        "benchmarks/results/method_quality.json" if args.split == "test" or reports
        else "benchmarks/results/method_quality_search.json"))  # fmt: skip
    if args.table:
        print(markdown_table(read_json(results, {"rows": []})["rows"]))
        return
    if args.docs:
        print("\n".join(write_docs(read_json(results, {"rows": []})["rows"])))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    recipes = dict(item.split("=", 1) for item in args.recipe)
    readouts = dict(item.split("=", 1) for item in args.readout)
    machine = {"cpu": cpu_info(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": sys.version.split()[0]}  # fmt: skip
    for method in args.methods or ordered_methods():
        recipe = recipes.get(method, recipe_of(method))
        extra = [o.split(":", 1)[1] if ":" in o.split("=", 1)[0] else o for o in args.overrides
                 if ":" not in o.split("=", 1)[0] or o.startswith(f"{method}:")]  # fmt: skip
        run_dir = run_dir_of(Path(args.runs), method, args.minutes, args.seed, extra, args.threads)
        overrides = run_config(method, recipe, args.minutes, args.seed, extra, args.threads)
        print(f"== {method}: {recipe} {' '.join(extra)} -> {run_dir}", flush=True)
        summary = train_or_reuse(method, recipe, run_dir, overrides)
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        t0 = time.perf_counter()
        row: dict[str, Any] = {
            "method": method, "backbone": _backbone_label(cfg["backbone"]), "recipe": recipe,
            "overrides": extra, "budget_minutes": args.minutes, "seed": args.seed,
            "images_seen": summary["images_seen"], "train_minutes": summary["seconds"] / 60,
            "images_per_second": summary["images_per_second"],
            "precision": _precision(run_dir), "run_dir": str(run_dir),
            "threads": args.threads or torch.get_num_threads(),
        }  # fmt: skip
        pool = readouts.get(method)
        if pool:
            row["readout"] = pool
        row.update(evaluate(run_dir, args.split, args.linear_epochs, pool))
        if args.split == "test":
            key, value = pretext_value(run_dir, method)
            row.update(
                pretext_metric=key,
                pretext_value=value,
                effective_rank=last_logged(run_dir, "effective_rank"),
            )
        row["eval_minutes"] = (time.perf_counter() - t0) / 60
        print(json.dumps(row), flush=True)
        data = read_json(results, {"rows": []})
        if args.split == "test":  # one row per method and budget (the final recipe and readout)
            same = (method, args.minutes)
            data["rows"] = [r for r in data["rows"] if (r["method"], r["budget_minutes"]) != same]
        data["rows"].append(row)
        data["machine"] = machine
        data["protocol"] = (f"train on CIFAR-10 train minus a class-balanced holdout of {HOLDOUT}"
                            f" for --minutes wall-clock; split {args.split}")  # fmt: skip
        write_json(results, data)


def _backbone_label(b: dict[str, Any]) -> str:
    name = b["name"]
    if name.startswith("resnet") and b.get("width") not in (None, 1, 1.0):
        name += f"/w{b['width']:g}"
    return name


def _precision(run_dir: Path) -> str | None:
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "start":
            return record.get("precision")
    return None


if __name__ == "__main__":
    main()
