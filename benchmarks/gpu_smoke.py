"""GPU smoke test of every registered method: train a few steps, resume, evaluate.

For each method of ``selfsup.methods.list_methods()`` (methods added later are picked up), in
its own process so that a failure or a hang in one never stops the others, through the
``selfsup`` command line (``train`` / ``train --resume`` / ``eval knn``) with the method's
default recipe (``<method>_default`` when there is one) on a small CIFAR-10 subset:

* ``bf16``: bf16 autocast, channels_last; the online kNN monitor and the method's pictures
  run at each epoch end (2 epochs);
* ``fp16``: fp16 autocast with the GradScaler, channels_last; stopped half-way with
  ``--stop-at-step`` and continued with ``--resume`` (scaler, optimizer and RNG state restored);
* ``compile``: bf16, channels_last and ``train.compile=true``;
* ``compile_fp32``: fp32, contiguous and ``train.compile=true`` (what ``train.compile=auto``
  picks on a CPU: ``--device cpu``);

each followed by ``selfsup eval knn`` of the result on the device. A configuration passes when
every command exits 0, the run reaches its step count with a finite loss and kNN@200 is a
number in [0, 1]. Prints a PASS/FAIL table and writes ``benchmarks/results/gpu_smoke.json``.

    SELFSUP_DATA=/path/to/datasets python benchmarks/gpu_smoke.py
    python benchmarks/gpu_smoke.py --device cpu --tiny --configs bf16 fp16   # check the script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "bf16": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "fp16": ["train.precision=fp16", "train.channels_last=true", "train.compile=false"],
    "compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
    "compile_fp32": ["train.precision=fp32", "train.channels_last=false", "train.compile=true"],
}


# ----------------------------------------------------------------------------- child


def run_config(args: argparse.Namespace, method: str, name: str) -> dict[str, Any]:
    import torch

    from selfsup.cli import main as cli_main
    from selfsup.config import load_config

    device = torch.device(args.device)
    run_dir = args.work / method / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    spe = 10  # steps per epoch: the subset is 10 batches, so `steps` steps = steps/10 epochs
    overrides = [
        f"out_dir={run_dir}",
        "data.source=cifar10",
        f"data.root={args.data_root}",
        f"data.subset={args.batch_size * spe}",
        "eval_data.source=cifar10",
        f"eval_data.train_subset={args.eval_train_subset}",
        f"eval_data.test_subset={args.eval_test_subset}",
        f"train.device={args.device}",
        f"train.batch_size={args.batch_size}",
        f"train.epochs={args.steps / spe}",
        "train.schedule.warmup_epochs=0.5",
        f"train.checkpoint_every_steps={spe}",
        "train.log_every_steps=5",
        "train.progress=false",
        f"train.knn_monitor.every_epochs={1 if name == 'bf16' else 0}",
        f"train.pictures_every_epochs={1 if name == 'bf16' else 0}",
        *CONFIGS[name],
    ]
    if args.tiny:
        backbone = load_config(method).backbone.name
        overrides.append(
            "backbone.name=" + ("vit_micro" if backbone.startswith("vit") else "resnet_tiny")
        )
    for item in args.set:
        target, _, kv = item.rpartition(":")
        if not target or target == method:
            overrides.append(kv)
    row: dict[str, Any] = {"overrides": overrides[1:]}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    if name == "fp16":
        half = args.steps // 2
        rc = cli_main(["train", method, "--stop-at-step", str(half), *overrides])
        if rc != 0:
            raise RuntimeError(f"selfsup train --stop-at-step {half} exited with {rc}")
        rc = cli_main(["train", method, "--resume", *overrides])
        if rc != 0:
            raise RuntimeError(f"selfsup train --resume exited with {rc}")
        state = torch.load(
            run_dir / "checkpoints" / f"step_{half:08d}" / "train_state.pt",
            weights_only=True,
            map_location="cpu",
        )
        row["scaler_scale_at_stop"] = state["scaler"].get("scale")
        if device.type == "cuda" and not state["scaler"].get("scale"):
            raise RuntimeError("fp16 on CUDA but the checkpoint holds no GradScaler state")
    else:
        rc = cli_main(["train", method, *overrides])
        if rc != 0:
            raise RuntimeError(f"selfsup train exited with {rc}")
    row["train_seconds"] = round(time.perf_counter() - t0, 2)
    if device.type == "cuda":
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r.get("event") == "start")
    row.update(
        steps=summary["steps"],
        final_loss=summary["final_loss"],
        images_per_second=round(summary["images_per_second"], 1),
        skipped_steps=summary.get("skipped_steps", 0),
        device=start["device"],
        precision=start["precision"],
    )
    monitor = [r for r in rows if any(k.startswith("online_knn") for k in r)]
    if monitor:
        row["online_knn@200"] = monitor[-1].get("online_knn@200")
    pictures = sorted(p.name for p in (run_dir / "pictures").glob("*.png"))
    if pictures:
        row["pictures"] = len(pictures)
    problems = []
    if row["steps"] != args.steps:
        problems.append(f"ran {row['steps']} of {args.steps} steps")
    if not isinstance(row["final_loss"], float) or not math.isfinite(row["final_loss"]):
        problems.append(f"final loss {row['final_loss']}")
    if not row["device"].startswith(device.type):
        problems.append(f"trained on {row['device']}")
    t1 = time.perf_counter()
    out = run_dir / "knn.json"
    rc = cli_main(
        [
            "eval",
            "knn",
            str(run_dir),
            "--data",
            "cifar10",
            "--root",
            str(args.data_root),
            "--train-subset",
            str(args.eval_train_subset),
            "--test-subset",
            str(args.eval_test_subset),
            "--device",
            args.device,
            "--json",
            str(out),
        ]  # fmt: skip
    )
    if rc != 0:
        raise RuntimeError(f"selfsup eval knn exited with {rc}")
    knn = json.loads(out.read_text())[0]
    row["knn@200"] = knn["knn@200"]
    row["eval_seconds"] = round(time.perf_counter() - t1, 2)
    if not 0.0 <= row["knn@200"] <= 1.0:
        problems.append(f"knn@200 {row['knn@200']}")
    row["status"] = "FAIL" if problems else "PASS"
    if problems:
        row["error"] = "; ".join(problems)
    if not args.keep:
        for sub in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    return row


def child(args: argparse.Namespace) -> int:
    method = args.child
    path = args.work / method / "smoke.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in args.configs:
        results[name] = {"status": "RUNNING"}
        path.write_text(json.dumps(results, indent=2))
        print(f"--- {method} / {name}", flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = run_config(args, method, name)
        except BaseException as err:  # noqa: BLE001 - report, then go on
            results[name] = {
                "status": "FAIL",
                "error": f"{type(err).__name__}: {err}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
            }
            traceback.print_exc()
            if isinstance(err, KeyboardInterrupt):
                break
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"--- {method} / {name}: {json.dumps(results[name])[:800]}", flush=True)
        path.write_text(json.dumps(results, indent=2))
    return 0


# ----------------------------------------------------------------------------- parent


def method_names() -> list[str]:
    from selfsup.methods import list_methods

    return [cls.name for cls in list_methods()]


def run_child(
    args: argparse.Namespace, method: str, configs: list[str], timeout: float
) -> dict[str, Any]:
    """One process for ``configs`` of ``method``; what it finished even if it died or hung."""
    passthrough = [
        "--device", args.device, "--data-root", str(args.data_root), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--work", str(args.work),
        "--eval-train-subset", str(args.eval_train_subset),
        "--eval-test-subset", str(args.eval_test_subset),
        "--configs", *configs,
    ]  # fmt: skip
    passthrough += ["--tiny"] * args.tiny + ["--keep"] * args.keep
    for item in args.set:
        passthrough += ["--set", item]
    path = args.work / method / "smoke.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", method, *passthrough]
    log = args.work / method / f"{'_'.join(configs)}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc: int | str = subprocess.run(
                cmd, timeout=timeout, stdout=f, stderr=subprocess.STDOUT
            ).returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout:.0f}s"
    tail = log.read_text(errors="replace")[-3000:]
    print(
        f"=== {method} {configs}: rc {rc}, {time.perf_counter() - t0:.0f}s; log {log}", flush=True
    )
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for name in configs:
        row = results.setdefault(name, {"status": "RUNNING"})
        if row.get("status") == "RUNNING":
            row.update(status="FAIL", error=f"the process ended before it finished: rc {rc}")
            row["log_tail"] = tail
    return results


def parent(args: argparse.Namespace) -> int:
    import torch

    names = args.methods or method_names()
    compile_names = names if args.compile_methods is None else args.compile_methods
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    deadline = time.monotonic() + args.budget_s
    report: dict[str, Any] = {
        "benchmark": "gpu_smoke",
        "command": " ".join(["python", *sys.argv]),
        "device": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "configs": {k: CONFIGS[k] for k in args.configs},
        "methods": {m: {} for m in names},
    }
    # Phase 1: the eager configurations of every method; phase 2: torch.compile (slow to
    # start), so a short budget loses compile coverage first.
    eager = [c for c in args.configs if c != "compile"]
    phases = [(eager, names)]
    if "compile" in args.configs:
        phases.append((["compile"], [m for m in names if m in compile_names]))
    for configs, todo in phases:
        if not configs:
            continue
        for i, method in enumerate(todo):
            left = deadline - time.monotonic()
            if left < 30:
                break
            # share what is left among the methods still to run (at least 45 s each)
            timeout = max(min(left, 45.0), left / (len(todo) - i))
            report["methods"][method].update(run_child(args, method, configs, timeout))
    for method, res in report["methods"].items():
        for name in args.configs:
            if name == "compile" and method not in compile_names:
                res.setdefault(name, {"status": "SKIP", "error": "not in --compile-methods"})
            res.setdefault(name, {"status": "SKIP", "error": "time budget used up"})

    rows = [row for res in report["methods"].values() for row in res.values()]
    report["passed"] = all(row["status"] in ("PASS", "SKIP") for row in rows)
    statuses = ("PASS", "FAIL", "SKIP")
    report["counts"] = {s: sum(row["status"] == s for row in rows) for s in statuses}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\n== gpu_smoke on {gpu}: {args.steps} steps, batch {args.batch_size} ==")
    print(f"{'method':<18}" + "".join(f"{c:>28}" for c in args.configs))
    for method, res in report["methods"].items():
        cells = []
        for c in args.configs:
            row = res.get(c, {})
            cell = row.get("status", "?")
            if cell == "PASS":
                cell += f" loss {row['final_loss']:.3f} knn {row['knn@200']:.3f}"
            cells.append(f"{cell:>28}")
        print(f"{method:<18}" + "".join(cells))
    for method, res in report["methods"].items():
        for c, row in res.items():
            if row.get("status") == "FAIL":
                print(f"{method}/{c}: FAIL: {str(row.get('error'))[:300]}")
    print(f"{report['counts']}; wrote {args.json}")
    return 0 if report["passed"] else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", help="default: every registered method")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument(
        "--compile-methods", nargs="*", help="methods that get the compile config (default: all)"
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-root", type=Path, default=os.environ.get("SELFSUP_DATA", "data"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-train-subset", type=int, default=5000)
    ap.add_argument("--eval-test-subset", type=int, default=1000)
    ap.add_argument("--budget-s", type=float, default=1800, help="stop starting methods after")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="extra override key=value, or METHOD:key=value for one method",
    )
    ap.add_argument("--tiny", action="store_true", help="tiny backbones: check the script on CPU")
    ap.add_argument("--keep", action="store_true", help="keep checkpoints of the smoke runs")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "runs" / "gpu_smoke")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_smoke.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 2 or args.steps % 2:
        ap.error("--steps must be an even number >= 2")
    args.work = args.work.resolve()
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
