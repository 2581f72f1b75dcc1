"""The CPU speedrun benchmark: what `selfsup speedrun --minutes N` reaches, and the search
that chose its recipes (BENCHMARKS.md "CPU speedrun").

Two modes, so that the recipes never see the test set:

- ``search``: one configuration (a recipe plus ``key=value`` overrides) trained for
  ``--minutes`` on CIFAR-10 train minus a class-balanced 5,000-image holdout, kNN@200/20 with
  the held-out images as queries (``selfsup speedrun --holdout 5000``). Appends a row to
  ``benchmarks/results/speedrun_search.json`` (the search log: every configuration tried, its
  budget, images seen and validation kNN).
- ``final``: the tuned recipe of each budget, ``selfsup speedrun --minutes N`` as a user runs
  it (all 50k training images; the 10k test images as queries, once per recipe), for each
  seed; writes ``benchmarks/results/speedrun.json`` with every run and the mean ± sample std
  per budget.

    python benchmarks/speedrun.py search --minutes 5 --tag bs128 train.batch_size=128
    python benchmarks/speedrun.py final --minutes 5 15 30 --seeds 0 1 2 --linear

Run alone on an idle machine: the budget is wall-clock time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfsup.config import load_config, resolve_recipe
from selfsup.speedrun import run_speedrun, speedrun_recipe
from selfsup.utils.locks import exclusive_lock

HOLDOUT = 5000
SEARCH_PROTOCOL = (f"CIFAR-10 train minus a class-balanced holdout of {HOLDOUT} images, "
                   "kNN@200/20 (t=0.1) with the held-out images as queries")  # fmt: skip
RESULTS = Path("benchmarks/results")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON log at ``path``, read under an exclusive lock (``path`` + ``.lock``) and saved
    when the block ends. A search runs its rows in pairs, side by side: two processes that
    finish together must each add their row to what the other wrote, not to the log as it was
    when they started."""
    with exclusive_lock(path.with_name(path.name + ".lock")):
        data = _load(path)
        yield data
        _save(path, data)


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("knn_top1", "knn20_top1", "linear_top1", "online_knn_top1", "online_knn20_top1",
            "online_linear_top1", "train_seconds", "eval_seconds", "images_seen", "recipe",
            "precision", "threads", "seed", "evaluation")  # fmt: skip
    return {k: record[k] for k in keep if k in record}


def search(args: argparse.Namespace) -> None:
    path = RESULTS / "speedrun_search.json"
    data = _load(path)
    if any(r["tag"] == args.tag and r["minutes"] == args.minutes for r in data["rows"]):
        print(f"{args.tag} at {args.minutes} min is in {path} already")
        return
    out = Path(args.runs) / f"search_{args.minutes:g}min_{args.tag}"
    if out.exists():
        raise SystemExit(f"{out} exists (an interrupted search run?): remove it first")
    record = run_speedrun(args.minutes, out, holdout=HOLDOUT, seed=args.seed,
                          recipe=args.recipe, overrides=args.overrides)  # fmt: skip
    row = {"tag": args.tag, "minutes": args.minutes, "recipe": record["recipe"],
           "overrides": args.overrides, **_fields(record),
           "when": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    row["val_knn_top1"], row["val_knn20_top1"] = row.pop("knn_top1"), row.pop("knn20_top1")
    if "online_knn_top1" in row:  # train.encoder_ema: the same run's trained weights
        row["val_online_knn_top1"] = row.pop("online_knn_top1")
        row["val_online_knn20_top1"] = row.pop("online_knn20_top1")
    with _locked(path) as data:  # as it is now: the row run beside this one may be in it
        data["rows"].append(row)
        data["protocol"] = SEARCH_PROTOCOL
        data["machine"] = {"cpu": record["cpu"], "torch": record["torch"]}
    print(json.dumps(row))


def recipe_digest(minutes: float) -> str:
    """First 12 hex digits of the SHA-256 of the budget's recipe as the trainer *resolves* it:
    the whole :class:`~selfsup.config.RunConfig` with every code default filled in, its
    ``method_args`` expanded to the method's full config. A comment edit keeps it; a changed
    value in the YAML, or a changed default the recipe relies on (say the projector's depth),
    changes it."""
    cfg = load_config(None, str(resolve_recipe(speedrun_recipe(minutes))))
    content = {**cfg.model_dump(mode="json"),
               "method_args": cfg.method_config().model_dump(mode="json")}  # fmt: skip
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def stale_rows(rows: list[dict[str, Any]], minutes: float, digest: str) -> list[str]:
    """Names of the finals of budget ``minutes`` not run with the recipe of ``digest`` (or
    with no digest recorded): they must not be summarised with new runs."""
    return [r["name"] for r in rows
            if r["minutes"] == minutes and r.get("recipe_digest") != digest]  # fmt: skip


def final(args: argparse.Namespace) -> None:
    path = RESULTS / "speedrun.json"
    data = _load(path)
    if args.supersede:  # a new recipe: earlier finals of these budgets move to "superseded"
        old = [r for r in data["rows"] if r["minutes"] in args.minutes]
        for r in old:
            r["superseded_because"] = args.supersede
        data.setdefault("superseded", []).extend(old)
        data["rows"] = [r for r in data["rows"] if r["minutes"] not in args.minutes]
        _save(path, data)
    for minutes in args.minutes:
        digest = recipe_digest(minutes)
        if stale := stale_rows(data["rows"], minutes, digest):
            raise SystemExit(f"{path}: {stale} ran with another {speedrun_recipe(minutes)} "
                             f"than today's ({digest}): rerun with --supersede WHY")  # fmt: skip
        for seed in args.seeds:
            name = f"{minutes:g}min_s{seed}"
            if any(r["name"] == name for r in data["rows"]):
                print(f"{name}: done already")
                continue
            out = Path(args.runs) / f"final_{name}"
            record = run_speedrun(minutes, out, seed=seed, linear=args.linear)
            with _locked(path) as data:  # another final may have added rows meanwhile
                data["rows"].append({"name": name, "minutes": minutes, "recipe_digest": digest,
                                     **_fields(record)})  # fmt: skip
                data["machine"] = {"cpu": record["cpu"], "torch": record["torch"]}
                data["summary"] = summarize(data["rows"])
            print(json.dumps(data["rows"][-1]))
    with _locked(path) as data:
        data["summary"] = summarize(data["rows"])
    for s in data["summary"]:
        print(s)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std per budget of every accuracy, over its seeds."""
    out = []
    for minutes in sorted({r["minutes"] for r in rows}):
        group = [r for r in rows if r["minutes"] == minutes]
        entry: dict[str, Any] = {"minutes": minutes, "recipe": speedrun_recipe(minutes),
                                 "seeds": [r["seed"] for r in group]}  # fmt: skip
        for key in ("knn_top1", "knn20_top1", "linear_top1", "images_seen", "train_seconds"):
            values = [r[key] for r in group if key in r]
            if values:
                entry[f"{key}_mean"] = statistics.fmean(values)
                entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("search", help="one configuration on the validation split")
    s.add_argument("--minutes", type=float, required=True)
    s.add_argument("--tag", required=True)
    s.add_argument("--recipe", help="default: the recipe tuned for --minutes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--runs", default="benchmarks/runs/speedrun")
    s.add_argument("overrides", nargs="*")
    f = sub.add_parser("final", help="the tuned recipes on the test set")
    f.add_argument("--minutes", type=float, nargs="+", default=[5, 15, 30])
    f.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    f.add_argument("--linear", action="store_true")
    f.add_argument("--supersede", metavar="WHY",
                   help="the budgets' recipe changed: move their earlier finals to "
                   "'superseded' (with WHY) and run them again")  # fmt: skip
    f.add_argument("--runs", default="benchmarks/runs/speedrun")
    args = p.parse_args()
    search(args) if args.mode == "search" else final(args)


if __name__ == "__main__":
    main()
