"""SimCLR ResNet-18 on CIFAR-10 on one NVIDIA GPU: a short fixed budget, speed, memory, kNN.

The GPU recipe of issue 8, run through the library itself (``Trainer`` and ``selfsup eval
knn``): the ``simclr_default`` recipe (ResNet-18, CIFAR stem, full width; batch 512; LARS, peak
lr 0.6, cosine; temperature 0.5; the SimCLR CIFAR augmentation done on the GPU) in bf16 with
channels_last and ``torch.compile``, for ``--epochs`` epochs (warm-up shortened to
``--warmup-epochs``), then kNN (k=200/20, t=0.1, the InstDisc protocol) with the training
split as the bank and the test split as queries.

Then, on the same data, the cost of one training step, each for ``--warmup-steps`` untimed +
``--timed-steps`` timed steps through the same ``Trainer``:

* ``tuned``: bf16 + channels_last + compile (the recipe above),
* ``bf16_eager``: bf16 + channels_last, no compile,
* ``fp32_eager``: fp32, contiguous layout, no compile (cuDNN's default TF32 convolutions),

and the bare backbone (the same ResNet-18) forward + backward of ``features.sum()`` on 2 x batch
pre-made views (no augmentation, head, loss or optimizer step), compiled bf16 channels_last and
fp32 eager. One image = two views throughout.

The default budget, 30 epochs of the 50k-image train set at batch 512 (2,910 steps), was sized
from an H100 80GB HBM3 (42 ms per steady training step, so about 2 minutes of training, plus
about 40 s of compilation and 35 s for the step-cost part) to fit well inside a 10-minute slot.

    SELFSUP_DATA=/path/to/datasets python benchmarks/gpu_cifar10.py            # full CIFAR-10
    python benchmarks/gpu_cifar10.py --train-npz sub/train.npz --test-npz sub/test.npz
    python benchmarks/gpu_cifar10.py --device cpu --tiny                       # check the script

Writes ``benchmarks/results/gpu_cifar10.json`` (``--json``) and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from selfsup.cli import main as cli_main
from selfsup.config import load_config
from selfsup.models import build_method
from selfsup.pretraining import pretrain
from selfsup.train.metrics_log import read_metrics
from selfsup.train.trainer import load_training_source, step_seed

ROOT = Path(__file__).resolve().parents[1]
SAVE_TO: tuple[dict[str, Any], Path] | None = None
TUNED = ["train.precision=bf16", "train.channels_last=true", "train.compile=true"]
VARIANTS = {
    "tuned": TUNED,
    "bf16_eager": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "fp32_eager": ["train.precision=fp32", "train.channels_last=false", "train.compile=false"],
}


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            gpu=p.name,
            gpu_memory_gib=gib(p.total_memory),
            multiprocessors=p.multi_processor_count,
            capability=f"{p.major}.{p.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated(device)),
        "peak_reserved_gib": gib(torch.cuda.max_memory_reserved(device)),
    }


def intervals(run_dir: Path, batch_size: int) -> list[tuple[int, float]]:
    """(step, seconds) of each logged interval, from the Trainer's own img/s records (every log
    ends with ``loss.item()``, a device sync, so the intervals are real GPU time)."""
    out, prev = [], 0
    for r in read_metrics(run_dir):
        if "event" in r or "images_per_second" not in r:
            continue
        step = int(r["step"])
        out.append((step, (step - prev) * batch_size / r["images_per_second"]))
        prev = step
    return out


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def base_overrides(args: argparse.Namespace) -> list[str]:
    o = [
        f"train.device={args.device}",
        f"train.batch_size={args.batch_size}",
        "train.progress=false",
        "train.tensorboard=false",
        "train.knn_monitor.every_epochs=0",
        "train.pictures_every_epochs=0",
        f"train.log_every_steps={args.log_every}",
    ]
    if args.train_npz:
        o.append(f"data.source={args.train_npz}")
    else:
        o += ["data.source=cifar10", f"data.root={args.data_root}"]
    if args.subset:
        o.append(f"data.subset={args.subset}")
    if args.tiny:
        o += ["backbone.name=resnet_tiny", "method_args.proj_hidden_dim=64"]
    return o + args.set


def train_budget(args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    run_dir = fresh(out / "simclr")
    overrides = [
        *base_overrides(args),
        f"out_dir={run_dir}",
        f"train.epochs={args.epochs}",
        f"train.schedule.warmup_epochs={args.warmup_epochs}",
        f"train.checkpoint_every_epochs={args.epochs}",
        *(TUNED if not args.no_compile else TUNED[:2]),
    ]
    cfg = load_config("simclr", "simclr_default", overrides)
    reset_peak(device)
    t0 = time.perf_counter()
    result = pretrain(cfg)
    wall = time.perf_counter() - t0
    mem = peak(device)
    summary = json.loads((run_dir / "summary.json").read_text())
    start = next(r for r in read_metrics(run_dir) if r.get("event") == "start")
    spe = int(start["steps_per_epoch"])
    iv = intervals(run_dir, args.batch_size)
    first = [s for st, s in iv if st <= spe]
    later = [(st, s) for st, s in iv if st > spe]
    images_later = (later[-1][0] - spe) * args.batch_size if later else 0
    steady_ips = images_later / sum(s for _, s in later) if later else float("nan")
    return {
        "run_dir": str(run_dir),
        "config": cfg.model_dump(mode="json"),
        "images": int(start["images"]),
        "steps_per_epoch": spe,
        "steps": result.steps,
        "epochs": args.epochs,
        "images_seen": result.steps * args.batch_size,
        "final_loss": result.final_loss,
        "fit_seconds": round(summary["seconds"], 2),
        "fit_wall_seconds_incl_setup": round(wall, 2),
        "first_epoch_seconds_incl_compile": round(sum(first), 2),
        "steady_images_per_second": round(steady_ips, 1),
        "steady_epoch_seconds": round(spe * args.batch_size / steady_ips, 3),
        "mean_images_per_second_incl_compile": round(result.images_per_second, 1),
        **mem,
    }


def knn_eval(args: argparse.Namespace, run_dir: str, out: Path) -> dict[str, Any]:
    path = out / "knn.json"
    if args.train_npz:
        data = ["--data", args.train_npz, "--test-data", args.test_npz or args.train_npz]
    else:
        data = ["--data", "cifar10", "--root", str(args.data_root)]
    if args.eval_train_subset:
        data += ["--train-subset", str(args.eval_train_subset)]
    if args.eval_test_subset:
        data += ["--test-subset", str(args.eval_test_subset)]
    t0 = time.perf_counter()
    rc = cli_main(
        [
            "eval",
            "knn",
            run_dir,
            *data,
            "--device",
            args.device,
            "--k",
            "200",
            "20",
            "--json",
            str(path),
        ]  # fmt: skip
    )
    if rc != 0:
        raise RuntimeError(f"selfsup eval knn exited with {rc}")
    row = json.loads(path.read_text())[0]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def step_cost(
    args: argparse.Namespace, device: torch.device, out: Path, name: str, extra: list[str]
) -> dict[str, Any]:
    """Trainer for warmup + timed steps; throughput of the timed ones from its interval logs."""
    run_dir = fresh(out / f"step_{name}")
    total = args.warmup_steps + args.timed_steps
    cfg = load_config(
        "simclr",
        "simclr_default",
        [
            *base_overrides(args),
            f"out_dir={run_dir}",
            f"train.max_steps={total}",
            "train.epochs=100",
            "train.schedule.warmup_epochs=0",
            *extra,
        ],  # fmt: skip
    )
    reset_peak(device)
    t0 = time.perf_counter()
    pretrain(cfg)
    wall = time.perf_counter() - t0
    timed = [(st, s) for st, s in intervals(run_dir, args.batch_size) if st > args.warmup_steps]
    steps = timed[-1][0] - args.warmup_steps
    seconds = sum(s for _, s in timed)
    per_interval = [s / (args.log_every) for _, s in timed]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "overrides": extra,
        "timed_steps": steps,
        "seconds_per_step": round(seconds / steps, 5),
        "seconds_per_step_intervals": [round(x, 5) for x in per_interval],
        "images_per_second": round(steps * args.batch_size / seconds, 1),
        "wall_seconds_incl_warmup_and_compile": round(wall, 2),
        **peak(device),
    }


def bare_backbone(args: argparse.Namespace, device: torch.device, tuned: bool) -> dict[str, Any]:
    """Forward + backward of the bare encoder on 2 x batch pre-made augmented views."""
    extra = VARIANTS["tuned" if tuned else "fp32_eager"]
    if args.no_compile:
        extra = extra[:2]
    cfg = load_config("simclr", "simclr_default", [*base_overrides(args), *extra])
    source = load_training_source(cfg)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, source.image_size, source.num_channels, None).to(device)
    fmt = torch.channels_last if tuned else torch.contiguous_format
    method.memory_format = fmt
    encoder = method.encoder.to(memory_format=fmt).train()
    b = args.batch_size
    images = source.as_tensor_chw(torch.arange(b).numpy()).to(device)
    g = torch.Generator(device=device).manual_seed(step_seed(0, 0))
    with torch.no_grad():
        views = torch.cat([method.views(images, g, None, 0), method.views(images, g, None, 0)])
    fn = torch.compile(encoder) if tuned and not args.no_compile else encoder
    dtype = torch.bfloat16 if tuned else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = fn(views).float().sum()
        for p in encoder.parameters():
            p.grad = None
        loss.backward()

    reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup_steps):
        step()
    sync(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(args.timed_steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    # per-step sync is what the Trainer's logging costs too; the median is the step time
    med = statistics.median(times)
    return {
        "overrides": extra,
        "timed_steps": len(times),
        "seconds_per_step": round(med, 5),
        "images_per_second": round(b / med, 1),
        "warmup_seconds_incl_compile": round(warm, 2),
        **peak(device),
    }


def parts(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median time of the step's pieces outside the network, in the tuned setting: the
    augmentation of both views (uint8 batch in, normalised channels_last views out) and one
    optimizer step of the recipe's optimizer over the method's parameters."""
    from selfsup.train.optim import build_optimizer

    cfg = load_config("simclr", "simclr_default", [*base_overrides(args), *TUNED])
    source = load_training_source(cfg)
    method = build_method(cfg, source.image_size, source.num_channels, None).to(device)
    method.memory_format = torch.channels_last
    b = args.batch_size
    images = source.as_tensor_chw(torch.arange(b).numpy()).to(device)
    optimizer = build_optimizer(method, cfg.train.optimizer, b)
    for p in method.parameters():
        p.grad = torch.randn_like(p) * 1e-3

    def augment(i: int) -> None:
        g = torch.Generator(device=device).manual_seed(step_seed(0, i))
        with torch.no_grad():
            method.views(images, g, b, 0), method.views(images, g, b, 0)

    def optimize(i: int) -> None:
        optimizer.step()

    out: dict[str, Any] = {"optimizer": cfg.train.optimizer.name}
    for name, fn in (("augment_two_views", augment), ("optimizer_step", optimize)):
        for i in range(5):
            fn(i)
        times = []
        for i in range(args.timed_steps):
            sync(device)
            t = time.perf_counter()
            fn(i)
            sync(device)
            times.append(time.perf_counter() - t)
        out[f"{name}_ms"] = round(statistics.median(times) * 1e3, 3)
    return out


def guarded(results: dict[str, Any], key: str, fn: Any, *a: Any) -> Any:
    t0 = time.perf_counter()
    try:
        results[key] = fn(*a)
    except Exception as err:  # noqa: BLE001 - report and go on with the other parts
        results[key] = {
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
        print(f"[{key}] FAILED: {type(err).__name__}: {err}", flush=True)
        traceback.print_exc()
    print(f"[{key}] {time.perf_counter() - t0:.1f}s: {json.dumps(results[key])[:600]}", flush=True)
    if SAVE_TO is not None:  # keep what is done if the job is cut short
        SAVE_TO[1].parent.mkdir(parents=True, exist_ok=True)
        SAVE_TO[1].write_text(json.dumps(SAVE_TO[0], indent=2, default=str))
    return results[key]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=30, help="training budget (epochs)")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--data-root", default=os.environ.get("SELFSUP_DATA", "data"))
    ap.add_argument("--subset", type=int, help="train on a seeded random subset of N images")
    ap.add_argument("--train-npz", help="a labeled .npz to train on (and the kNN bank)")
    ap.add_argument("--test-npz", help="a labeled .npz of kNN queries (with --train-npz)")
    ap.add_argument("--eval-train-subset", type=int, help="kNN bank subset")
    ap.add_argument("--eval-test-subset", type=int, help="kNN query subset")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup-steps", type=int, default=20)
    ap.add_argument("--timed-steps", type=int, default=30)
    ap.add_argument("--log-every", type=int, default=10, help="Trainer log interval (steps)")
    ap.add_argument("--skip-train", action="store_true", help="only the step-cost comparison")
    ap.add_argument("--skip-steps", action="store_true", help="only the training budget + kNN")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="resnet_tiny: check the script quickly")
    ap.add_argument("--set", action="append", default=[], help="extra key=value override")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "runs" / "gpu_cifar10")
    ap.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_cifar10.json"
    )
    args = ap.parse_args()
    if args.timed_steps % args.log_every or args.warmup_steps % args.log_every:
        ap.error("--warmup-steps and --timed-steps must be multiples of --log-every")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device (use --device cpu --tiny to check the script)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "gpu_cifar10",
        "command": " ".join(["python", *sys.argv]),
        "machine": device_info(device),
        "data": (
            {"train": args.train_npz, "test": args.test_npz}
            if args.train_npz
            else {"source": "cifar10", "root": str(args.data_root), "subset": args.subset}
        ),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(json.dumps(results["machine"]), flush=True)
    global SAVE_TO
    SAVE_TO = (results, args.json)

    if not args.skip_train:
        train = guarded(results, "train", train_budget, args, device, args.out_dir)
        if "error" not in train:
            guarded(results, "knn", knn_eval, args, train["run_dir"], args.out_dir)
    if not args.skip_steps:
        steps: dict[str, Any] = {}
        results["step_cost"] = steps
        for name, extra in VARIANTS.items():
            if args.no_compile and name == "tuned":
                extra = extra[:2]
            guarded(steps, name, step_cost, args, device, args.out_dir, name, extra)
        guarded(steps, "bare_backbone_tuned", bare_backbone, args, device, True)
        guarded(steps, "bare_backbone_fp32_eager", bare_backbone, args, device, False)
        guarded(results, "step_parts", parts, args, device)
        ips = {k: v.get("images_per_second") for k, v in steps.items()}
        if ips.get("tuned") and ips.get("fp32_eager"):
            results["tuned_vs_fp32_eager"] = round(ips["tuned"] / ips["fp32_eager"], 3)
        if ips.get("tuned") and ips.get("bf16_eager"):
            results["tuned_vs_bf16_eager"] = round(ips["tuned"] / ips["bf16_eager"], 3)
        if ips.get("tuned") and ips.get("bare_backbone_tuned"):
            results["tuned_step_vs_bare_backbone"] = round(
                ips["tuned"] / ips["bare_backbone_tuned"], 3
            )
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))

    print(f"\n== gpu_cifar10 on {results['machine'].get('gpu', args.device)} ==")
    tr, kn = results.get("train", {}), results.get("knn", {})
    if "steady_epoch_seconds" in tr:
        print(
            f"budget: {tr['epochs']} epochs x {tr['images']} images, batch {args.batch_size}: "
            f"steady epoch {tr['steady_epoch_seconds']:.2f}s, "
            f"{tr['steady_images_per_second']:.0f} img/s, first epoch (incl. compile) "
            f"{tr['first_epoch_seconds_incl_compile']:.1f}s, fit {tr['fit_seconds']:.1f}s, "
            f"peak mem {tr.get('peak_allocated_gib', 'n/a')} GiB allocated / "
            f"{tr.get('peak_reserved_gib', 'n/a')} GiB reserved, final loss {tr['final_loss']:.4f}"
        )
    if "knn@200" in kn:
        print(
            f"kNN@200 {kn['knn@200']:.4f}  kNN@20 {kn['knn@20']:.4f} "
            f"(bank {kn['train_images']}, queries {kn['test_images']})"
        )
    for name, row in results.get("step_cost", {}).items():
        if "images_per_second" in row:
            print(
                f"  {name:<26} {row['images_per_second']:>10.0f} img/s  "
                f"{row['seconds_per_step'] * 1e3:8.1f} ms/step  "
                f"peak {row.get('peak_allocated_gib', 'n/a')} GiB"
            )
        else:
            print(f"  {name:<26} FAILED {row.get('error', '')[:200]}")
    for key in ("tuned_vs_fp32_eager", "tuned_vs_bf16_eager", "tuned_step_vs_bare_backbone"):
        if key in results:
            print(f"{key}: {results[key]:.3f}x")
    if "augment_two_views_ms" in results.get("step_parts", {}):
        sp = results["step_parts"]
        print(
            f"step parts: augmentation of 2 views {sp['augment_two_views_ms']:.2f} ms, "
            f"{sp['optimizer']} step {sp['optimizer_step_ms']:.2f} ms"
        )
    print(f"total {results['total_seconds']:.0f}s; wrote {args.json}")
    failed = [k for k in ("train", "knn") if "error" in results.get(k, {})]
    failed += [k for k, v in results.get("step_cost", {}).items() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
