"""The last two families at a CPU budget: video colorization by attention copying and RGB-D
cross-modal prediction, each beside its baselines.

Trains ``video_colorization`` and ``rgbd_crossmodal`` with their ``<name>_cifar10_cpu`` recipes
(synthetic clips / procedurally rendered RGB-D scenes made from CIFAR-10 train images; at most
20 minutes each on the 2-core development machine), then measures:

* video_colorization: label propagation mIoU on held-out synthetic clips (made from CIFAR-10
  *test* images, another seed) beside copying the first frame's masks (identity) and the same
  propagation with a random-init method; its pretext metrics (copy accuracy, colourisation PSNR
  beside copying colours in place);
* rgbd_crossmodal: a depth probe (a small decoder trained on the frozen encoder; RMSE and
  delta<1.25 on held-out scenes) beside the same probe on a random-init encoder and predicting
  the training set's mean depth; its pretext metrics;
* both: kNN (k = 200 / 20, t = 0.1) and a linear probe on CIFAR-10 (all 50k train / 10k test
  images) for the trained and the random-init encoder of the same architecture and input.

Resumable: a finished run is reused (an interrupted one resumes), a finished evaluation is read
back from the results file. Writes ``benchmarks/results/seed_rows.json`` and prints a summary.

    SELFSUP_DATA=../shared/datasets python benchmarks/seed_rows.py
    SELFSUP_DATA=../shared/datasets python benchmarks/seed_rows.py --only rgbd_crossmodal
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from budget_common import train, train_fields

from selfsup.config import load_config
from selfsup.data import load_source
from selfsup.evaluate import evaluate_encoder, load_eval_data
from selfsup.evaluate.depth_probe import DepthProbeConfig, run_depth_probe
from selfsup.evaluate.pretext import evaluate_pretext, load_method
from selfsup.evaluate.propagation import PropagationConfig, run_propagation
from selfsup.train import Trainer
from selfsup.train.trainer import load_training_source

ROWS = ("video_colorization", "rgbd_crossmodal")
TARGET_MARGIN = 0.05
"""Propagation mIoU must beat identity and the random-init method by this much."""
TARGET_RATIO = 0.9
"""Depth RMSE must be at most this fraction of the random encoder's and the mean depth's."""


def transfer(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """kNN and linear probe on CIFAR-10, trained and random-init encoder."""
    data = load_eval_data(
        "cifar10", train_subset=args.eval_train_subset, test_subset=args.eval_test_subset
    )
    out = {}
    for name, spec in (("trained", str(run)), ("random_encoder", f"random:{run}")):
        r = evaluate_encoder(
            spec, data, protocols=("knn", "linear"), linear_epochs=args.linear_epochs
        )
        out[name] = {
            k: r[k]
            for k in (
                "knn@200",
                "knn@20",
                "linear_top1",
                "input_space",
                "feature_dim",
                "train_images",
                "test_images",
            )
        }
    return out


def video_row(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    # each embedding at its best setting on validation clips (the headline numbers) ...
    prop = run_propagation(run, clips=args.clips, tune_clips=args.tune_clips)
    # ... and both at one fixed setting (raw dot products, T = 0.5, top-10), for comparison
    fixed = run_propagation(run, clips=args.clips, cfg=PropagationConfig(), write=False)
    method = load_method(run)
    run_cfg = load_config(None, str(run / "config.yaml"))
    options = {**run_cfg.data.options}
    options["synthetic_video"] = {**options.get("synthetic_video", {}), "clips": args.clips}
    held_out = load_source(
        run_cfg.data.source, split="test", image_size=method.image_size, options=options
    )
    pretext = evaluate_pretext(method, held_out, batch_size=64)
    row = {
        "propagation_miou": prop["propagation_miou"],
        "identity_miou": prop["identity_miou"],
        "random_encoder_miou": prop["random_encoder_miou"],
        "propagation_miou_by_frame": prop["trained"]["miou_by_frame"],
        "identity_miou_by_frame": prop["identity"]["miou_by_frame"],
        "random_encoder_miou_by_frame": prop["random_encoder"]["miou_by_frame"],
        "propagation": {
            "clips": prop["clips"],
            "frames": prop["frames"],
            "data": prop["data"],
            "trained_config": prop["trained"]["config"],
            "random_encoder_config": prop["random_encoder"]["config"],
            "tuning": prop.get("tuning"),
        },
        "fixed_setting": {
            "config": fixed["trained"]["config"],
            "propagation_miou": fixed["propagation_miou"],
            "random_encoder_miou": fixed["random_encoder_miou"],
        },
        "pretext": pretext,
        "pictures": prop.get("pictures", {}),
    }
    row["meets_target"] = bool(
        row["propagation_miou"] >= row["identity_miou"] + TARGET_MARGIN
        and row["propagation_miou"] >= row["random_encoder_miou"] + TARGET_MARGIN
    )
    return row


def rgbd_row(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    probe = run_depth_probe(
        run,
        train_items=args.depth_train,
        test_items=args.depth_test,
        cfg=DepthProbeConfig(epochs=args.probe_epochs),
    )
    method = load_method(run)
    run_cfg = load_config(None, str(run / "config.yaml"))
    options = {**run_cfg.data.options}
    options["synthetic_rgbd"] = {**options.get("synthetic_rgbd", {}), "scenes": args.depth_test}
    held_out = load_source(
        run_cfg.data.source, split="test", image_size=method.image_size, options=options
    )
    pretext = evaluate_pretext(method, held_out, batch_size=64)
    row = {
        "depth_rmse": probe["depth_rmse"],
        "depth_delta1": probe["depth_delta1"],
        "depth_abs_rel": probe["depth_abs_rel"],
        "random_encoder_depth_rmse": probe["random_encoder_depth_rmse"],
        "random_encoder_depth_delta1": probe["random_encoder_depth_delta1"],
        "mean_depth_rmse": probe["mean_depth_depth_rmse"],
        "mean_depth_delta1": probe["mean_depth_depth_delta1"],
        "mean_depth_map_rmse": probe["mean_depth_map_depth_rmse"],
        "mean_depth_map_delta1": probe["mean_depth_map_depth_delta1"],
        "probe": {k: probe[k] for k in ("data", "train_items", "test_items", "config")},
        "pretext": pretext,
        "pictures": probe.get("pictures", {}),
    }
    row["meets_target"] = bool(
        row["depth_rmse"] <= TARGET_RATIO * row["random_encoder_depth_rmse"]
        and row["depth_rmse"] <= TARGET_RATIO * row["mean_depth_rmse"]
    )
    return row


def budget_steps(name: str, out: Path, args: argparse.Namespace) -> int:
    """Training steps that fit ``--minutes`` of the whole machine (all its torch threads busy),
    from the CPU time of a short calibration run, capped by the recipe's own length.

    CPU time rather than wall time, so that the budget means the same on a machine that other
    jobs share (the steps then take longer in wall time; both are in the results). The
    difference of two calibration runs (16 and 4 steps) is the steps' own cost. Remembered in
    ``OUT/<name>_budget.json`` so a resumed benchmark trains the same run."""
    record = out / f"{name}_budget.json"
    if record.exists():
        return int(json.loads(record.read_text())["steps"])
    recipe = f"{name}_cifar10_cpu"
    calib = out / f"{name}_calibration"

    def fit_cpu_seconds(steps: int) -> float:
        shutil.rmtree(calib, ignore_errors=True)
        cfg = load_config(
            name,
            recipe,
            [
                f"out_dir={calib}",
                "train.progress=false",
                f"train.max_steps={steps}",
                "train.log_every_steps=4",
                "train.pictures_every_epochs=0",
                *args.overrides,
            ],
        )
        cpu0 = time.process_time()
        Trainer(cfg).fit()
        return time.process_time() - cpu0

    # The steps' own cost is the difference between a long and a short calibration run, so the
    # data set-up (and whatever a source caches in memory after its first build, which a
    # single run minus a separately timed set-up got wrong) cancels out.
    fit_cpu_seconds(2)  # warm-up: builds and caches the source, first-call kernels
    short, long = 4, 16
    cpu_per_step = max(fit_cpu_seconds(long) - fit_cpu_seconds(short), 1e-3) / (long - short)
    threads = torch.get_num_threads()
    full = load_config(name, recipe, args.overrides)
    n = len(load_training_source(full))
    recipe_steps = math.ceil(full.train.epochs * (n // full.train.batch_size))
    steps = min(recipe_steps, int(0.9 * args.minutes * 60 * threads / cpu_per_step))
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({
        "steps": steps, "cpu_seconds_per_step": cpu_per_step, "threads": threads,
        "recipe_steps": recipe_steps, "minutes": args.minutes,
    }))  # fmt: skip
    shutil.rmtree(calib, ignore_errors=True)
    print(
        f"{name}: {cpu_per_step:.2f} CPU s/step in calibration ({threads} threads) -> "
        f"{steps} steps (recipe: {recipe_steps})",
        flush=True,
    )
    return steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/runs/seed_rows")
    p.add_argument("--results", default="benchmarks/results/seed_rows.json")
    p.add_argument("--only", nargs="*", choices=ROWS, help="rows to run (default: both)")
    p.add_argument("--overrides", nargs="*", default=[], help="key=value for every run")
    p.add_argument("--clips", type=int, default=256, help="held-out clips for propagation")
    p.add_argument(
        "--tune-clips",
        type=int,
        default=64,
        help="validation clips that pick each embedding's propagation setting",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=20.0,
        help="training budget per run in minutes of the whole machine (CPU time / threads)",
    )
    p.add_argument("--depth-train", type=int, default=2000, help="depth probe training scenes")
    p.add_argument("--depth-test", type=int, default=500, help="held-out scenes")
    p.add_argument("--probe-epochs", type=int, default=40)
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--eval-train-subset", type=int, default=None)
    p.add_argument("--eval-test-subset", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out, path = Path(args.out), Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.only or ROWS:
        run = out / name
        steps = budget_steps(name, out, args)
        cpu0, trained_now = time.process_time(), not (run / "summary.json").exists()
        summary = train(
            name, f"{name}_cifar10_cpu", run, [*args.overrides, f"train.max_steps={steps}"]
        )
        if results.get(name, {}).get("checkpoint_step") == summary.get("steps"):
            print(f"{name}: evaluated already")
            continue
        if trained_now:  # CPU time of this process's training (with its data set-up)
            cpu = time.process_time() - cpu0
            (run / "cpu_time.json").write_text(json.dumps({"seconds": cpu}))
        cpu_file = run / "cpu_time.json"
        train_cpu = json.loads(cpu_file.read_text())["seconds"] if cpu_file.exists() else None
        t0 = time.perf_counter()
        row = video_row(run, args) if name == "video_colorization" else rgbd_row(run, args)
        row["cifar10_transfer"] = transfer(run, args)
        row.update(recipe=f"{name}_cifar10_cpu", overrides=args.overrides, **train_fields(summary))
        row["eval_minutes"] = (time.perf_counter() - t0) / 60
        if train_cpu is not None:
            row["train_cpu_minutes"] = train_cpu / 60
            row["train_machine_minutes"] = train_cpu / 60 / torch.get_num_threads()
        row["budget"] = json.loads((out / f"{name}_budget.json").read_text())
        row["machine"] = {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        row["command"] = " ".join(["python", *sys.argv])
        # re-read before writing: a second process may have run the other row meanwhile
        results = {**(json.loads(path.read_text()) if path.exists() else {}), name: row}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)
    summarise(results)


def summarise(results: dict[str, Any]) -> None:
    v, r = results.get("video_colorization"), results.get("rgbd_crossmodal")
    if v:
        print(
            f"video_colorization: propagation mIoU {v['propagation_miou']:.3f} | identity "
            f"{v['identity_miou']:.3f} | random-init {v['random_encoder_miou']:.3f} | target "
            f"{'met' if v['meets_target'] else 'NOT met'} | {v['train_minutes']:.1f} min wall"
        )
    if r:
        print(
            f"rgbd_crossmodal: depth RMSE {r['depth_rmse']:.3f} m (delta<1.25 "
            f"{r['depth_delta1']:.3f}) | random-init {r['random_encoder_depth_rmse']:.3f} | "
            f"mean depth {r['mean_depth_rmse']:.3f} | target "
            f"{'met' if r['meets_target'] else 'NOT met'} | {r['train_minutes']:.1f} min wall"
        )
    for name, row in results.items():
        t = row.get("cifar10_transfer", {})
        if t:
            print(
                f"{name} CIFAR-10: kNN@200 {t['trained']['knn@200']:.3f} vs random "
                f"{t['random_encoder']['knn@200']:.3f}; linear {t['trained']['linear_top1']:.3f}"
                f" vs random {t['random_encoder']['linear_top1']:.3f}"
            )


if __name__ == "__main__":
    main()
