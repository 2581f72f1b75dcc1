"""SimCLR training throughput: selfsup vs lightly 1.6 at matched model, batch and precision,
and selfsup's full step vs its bare backbone (issue 19: S1-S4, S7, S9).

Everything timed runs in ONE process, interleaved within each of ``--rounds`` rounds (the order
alternates from round to round), each contender warming up ``WARMUP`` steps, then timing
``--steps`` steps; the median round is the result. Throughput is images per second (one image =
two views). Same ResNet-18 (CIFAR stem, ``--width``), same initial weights, batch ``--batch-size``
images, SimCLR head 512 -> 2048 -> 128, ``torch.set_num_threads(--threads)``.

For each precision (``--precisions``; bf16 only where the CPU has native bf16 unless
``--force-bf16``): fp32 runs contiguous tensors, bf16 runs autocast + channels_last for every
contender (both libraries' models), as a user of either would.

* ``bare``: the backbone's forward + backward of ``features.sum()`` + an SGD step on the 2B
  pre-made views (made by selfsup's pipeline outside the timed loop).
* ``selfsup``: what ``selfsup train`` runs per step, with freed memory kept in the process as
  the Trainer keeps it on the CPU (``train.cpu_heap_cache``, :mod:`selfsup.utils.allocator`;
  ``--heap-cache off`` times it without, and ``bare`` follows the same setting): the next
  uint8 batch from the :class:`~selfsup.data.BatchLoader` (in-memory CIFAR images), then the
  Trainer's own :class:`~selfsup.train.trainer.TrainStep` (batched augmentation of both views
  on the training device, backbone on the 2B views, projection head, NT-Xent in fp32,
  backward, gradient norm, finiteness check, SGD step, hooks).
* ``lightly``: lightly's documented path: a torch ``DataLoader`` with ``--workers`` workers over
  PIL images with ``SimCLRTransform`` (matched to selfsup's ``simclr_cifar`` view), the lightly
  SimCLR model (the same backbone + ``SimCLRProjectionHead``), two forwards (one per view) and
  ``NTXentLoss``, SGD. Fresh loader per round (pipeline fill included).
* ``lightly_main_1thread``: the same with 1 torch thread in the main process (lightly's best
  case on 2 cores: the workers then have a core of their own).
* ``lightly_heap_cache`` (with ``--heap-cache on``, the default): ``lightly`` with the same
  allocator setting as selfsup, to show how much of the difference is the allocator. In one
  process the contenders cannot all see glibc's start-up behaviour: once the first cached
  block has ended, the thresholds stay fixed where glibc's own adjustment settles (32 MiB
  mmap, 64 MiB trim; :mod:`selfsup.utils.allocator`), so ``lightly`` then differs from
  ``lightly_heap_cache`` only by trimming. ``bench_heap_cache.py`` measures the cache against
  glibc's defaults, one fresh process per mode; the ``--memory`` children are fresh processes
  too.
* ``selfsup_compiled``, ``bare_compiled``, ``lightly_compiled`` (with ``--compile``): the
  same three through ``torch.compile`` (inductor). selfsup's is what ``train.compile`` runs
  (``auto`` picks it for fp32 runs on the CPU that are long enough to repay the compile time:
  :func:`selfsup.utils.precision.use_compile`); lightly's is its model compiled by hand, as a
  lightly user could (lightly's documented path does not), shown so that a reader sees how much
  of selfsup's lead is the compiler. Compiling happens in the first round's warm-up steps.
* ``selfsup_separate`` (with ``--separate``): ``selfsup`` with ``method_args.encode_views=
  separate``, one encoder pass per view as lightly runs it (per-view BatchNorm statistics),
  from the same initial weights.

Rows reported: S1/S2 ``selfsup / max(lightly, lightly_main_1thread)`` per precision; S3 selfsup at
``precision=auto`` vs lightly at fp32 (its documented default); S4 ``selfsup / bare``; S7 the
FLOP/s of the selfsup step (``FlopCounterMode``: convolutions and matmuls of forward + backward)
vs a same-precision 2048x2048 GEMM timed in the same rounds. With ``--memory``, S9: the peak
resident set while a fresh process runs ``--steps`` steps of each of selfsup and lightly per
precision (the peak is reset after the set-up: :func:`memory_child`).

    python benchmarks/bench_vs_lightly.py --width 1.0 --batch-size 256 --rounds 5 --memory

Writes ``benchmarks/results/vs_lightly.json``. Run alone on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_simclr_step import LightlySimCLR, PILDataset, lightly_transform, load_images

from selfsup.utils.allocator import heap_cache

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2


def timed(step: Callable[[], None], steps: int) -> float:
    """Seconds of ``steps`` calls of ``step`` after :data:`WARMUP` untimed ones."""
    for _ in range(WARMUP):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def build(args: argparse.Namespace, precision: str, only: str | None = None) -> dict[str, Any]:
    """The contenders of one precision, as zero-argument callables returning seconds (with
    ``only``, just that one is built: a memory child holds nothing else)."""
    from selfsup.config import load_config
    from selfsup.data import BatchLoader, ImageSource
    from selfsup.models import build_method
    from selfsup.train.optim import build_optimizer
    from selfsup.train.trainer import TrainStep

    B = args.batch_size
    bf16 = precision == "bf16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    amp = torch.bfloat16 if bf16 else None
    images, _ = load_images(max(args.images, (WARMUP + args.steps) * B))
    cfg = load_config("simclr", "simclr_cifar10_cpu", [
        f"backbone.width={args.width}", f"train.batch_size={B}", f"train.precision={precision}",
        "method_args.proj_hidden_dim=2048", "method_args.proj_out_dim=128",
    ])  # fmt: skip
    torch.manual_seed(0)
    method = build_method(cfg, 32, 3, None).to(memory_format=fmt)
    method.memory_format = fmt
    method.train()
    lightly_backbone = copy.deepcopy(method.encoder)
    bare_backbone = copy.deepcopy(method.encoder)
    feature_dim = method.encoder.feature_dim

    def train_step_of(m: Any, compiled: bool = False) -> TrainStep:
        """The Trainer's step for ``m`` on the CPU, eager or through ``torch.compile``."""
        return TrainStep(method=m, forward=torch.compile(m) if compiled else m,
                         compiled=compiled, optimizer=build_optimizer(m, cfg.train.optimizer, B),
                         scaler=torch.amp.GradScaler("cuda", enabled=False), amp_dtype=amp,
                         device=torch.device("cpu"), seed=0, grad_clip=None,
                         total_steps=10**6)  # fmt: skip

    train_step = train_step_of(method)
    source = ImageSource(images=images.permute(0, 2, 3, 1).numpy(), name="cifar10")
    loader = BatchLoader(source, B, seed=0, device=torch.device("cpu"), drop_last=True)

    def autocast() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def selfsup_run(train_step: TrainStep = train_step) -> float:
        with heap_cache(enabled=args.heap_cache == "on"):  # as the Trainer runs on the CPU
            return _selfsup_run(train_step)

    def _selfsup_run(train_step: TrainStep) -> float:
        batches = loader.iterate(0)
        step = 0

        def one() -> None:
            nonlocal step
            batch = next(batches)
            train_step(batch.images, batch.labels, batch.global_size, batch.offset, step)
            step += 1

        return timed(one, args.steps)

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = images[:B]
        premade = torch.cat([method.views(x, g, None, 0), method.views(x, g, None, 0)])

    def bare_runner(backbone: torch.nn.Module, compiled: bool = False) -> Callable[[], float]:
        opt_ = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(backbone) if compiled else backbone

        def bare_step() -> None:
            with autocast():
                loss = forward(premade).float().sum()
            opt_.zero_grad(set_to_none=True)
            loss.backward()
            opt_.step()

        def bare_run() -> float:
            with heap_cache(enabled=args.heap_cache == "on"):  # the same allocator as selfsup
                return timed(bare_step, args.steps)

        return bare_run

    bare_run = bare_runner(bare_backbone)

    if only == "selfsup":
        del bare_backbone, lightly_backbone
        return {"selfsup": selfsup_run}
    if only == "lightly":
        del method, bare_backbone, train_step
    else:
        out: dict[str, Any] = {"bare": bare_run, "selfsup": selfsup_run,
                               "_step_flops": step_flops(method, premade, autocast)}  # fmt: skip
        if args.separate:
            separate = copy.deepcopy(method)
            separate.cfg = separate.cfg.model_copy(update={"encode_views": "separate"})
            step_separate = train_step_of(separate)
            out["selfsup_separate"] = lambda: selfsup_run(step_separate)
        if args.compile:  # what train.compile does (train.compile=auto: fp32 CPU runs)
            step_compiled = train_step_of(copy.deepcopy(method), compiled=True)
            out["selfsup_compiled"] = lambda: selfsup_run(step_compiled)
            out["bare_compiled"] = bare_runner(copy.deepcopy(method.encoder), compiled=True)
    if only == "lightly" or not args.skip_lightly:
        from lightly.loss import NTXentLoss

        lmodel = LightlySimCLR(lightly_backbone, feature_dim, 2048, 128)
        lmodel = lmodel.to(memory_format=fmt).train()
        criterion = NTXentLoss(temperature=0.2)
        lopt = torch.optim.SGD(lmodel.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
        dataset = PILDataset(images, lightly_transform(), (WARMUP + args.steps) * B)

        lightly_compiled = None
        if args.compile:  # by hand, as a lightly user could: the model through torch.compile
            lmodel_c = copy.deepcopy(lmodel)
            lopt_c = torch.optim.SGD(lmodel_c.parameters(), lr=0.06, momentum=0.9,
                                     weight_decay=5e-4)  # fmt: skip
            lightly_compiled = (torch.compile(lmodel_c), lopt_c)

        def lightly_step(x0: torch.Tensor, x1: torch.Tensor, compiled: bool = False) -> None:
            model, opt_ = lightly_compiled if compiled else (lmodel, lopt)  # type: ignore[misc]
            x0, x1 = x0.contiguous(memory_format=fmt), x1.contiguous(memory_format=fmt)
            with autocast():
                z0, z1 = model(x0), model(x1)
                loss = criterion(z0, z1)
            loss.backward()
            opt_.step()
            opt_.zero_grad()

        def lightly_run(main_threads: int, compiled: bool = False) -> float:
            loader_ = torch.utils.data.DataLoader(
                dataset, batch_size=B, shuffle=True, num_workers=args.workers, drop_last=True
            )
            torch.set_num_threads(main_threads)
            try:
                it = iter(loader_)
                t0 = 0.0
                for i in range(WARMUP + args.steps):
                    if i == WARMUP:
                        t0 = time.perf_counter()
                    (x0, x1), _ = next(it)
                    lightly_step(x0, x1, compiled)
                return time.perf_counter() - t0
            finally:
                torch.set_num_threads(args.threads)

        if only == "lightly":
            return {"lightly": lambda: lightly_run(args.threads)}
        out["lightly"] = lambda: lightly_run(args.threads)
        if args.threads > 1:
            out["lightly_main_1thread"] = lambda: lightly_run(1)
        if args.compile:
            out["lightly_compiled"] = lambda: lightly_run(args.threads, compiled=True)
        if args.heap_cache == "on" and not args.no_heap_cache_lightly:

            def lightly_heap_cache_run() -> float:
                with heap_cache():
                    return lightly_run(args.threads)

            out["lightly_heap_cache"] = lightly_heap_cache_run
    return out


def step_flops(method: Any, views: torch.Tensor, autocast: Callable) -> float:
    """FLOPs (2 per multiply-add) of the model's forward + backward on the 2B views."""
    from torch.utils.flop_counter import FlopCounterMode

    from selfsup.losses import nt_xent

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            z = method.projector(method.encoder(views)).float()
        n = len(views) // 2
        nt_xent(z[:n], z[n:], 0.2).backward()
    method.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def gemm_seconds(precision: str, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    if precision == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t0) / reps


def _proc_status_mib(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_child(args: argparse.Namespace) -> None:
    """One contender in a fresh process; prints its memory as JSON.

    Building the contenders (loading every image, the model copies, the pre-made views) peaks
    higher than either training loop, so a process-lifetime peak (``ru_maxrss``) reads the same
    for both (what an earlier run recorded). So the peak is reset (``/proc/self/clear_refs``)
    after the set-up and read again after the timed steps: ``peak_rss_mib`` is the main process's
    peak while training, ``rss_before_mib`` its resident set before; ``worker_peak_rss_mib`` the
    largest exited child (lightly's DataLoader workers, forked during its run)."""
    import gc

    contenders = build(args, args.precision_child, only=args.memory_child)
    gc.collect()
    before = _proc_status_mib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        reset = True
    except OSError:
        reset = False
    contenders[args.memory_child]()
    peak = _proc_status_mib("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "peak_rss_mib": peak,
                "rss_before_mib": before,
                "peak_reset_after_setup": reset,
                "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                / 1024,
            }
        )
    )


def main() -> None:
    from selfsup.utils.precision import cpu_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per contender and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="lightly DataLoader workers")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--force-bf16", action="store_true", help="bf16 even without native bf16")
    ap.add_argument("--skip-lightly", action="store_true")
    cache_help = ("selfsup and bare keep freed memory in the process as the Trainer does on "
                  "the CPU (train.cpu_heap_cache); 'on' also times lightly so, once")  # fmt: skip
    ap.add_argument("--heap-cache", choices=["on", "off"], default="on", help=cache_help)
    ap.add_argument(
        "--separate",
        action="store_true",
        help="also time selfsup with method_args.encode_views=separate",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time selfsup, the bare backbone and lightly's model through torch.compile",
    )
    ap.add_argument("--no-heap-cache-lightly", action="store_true",
                    help="skip the lightly_heap_cache contender")  # fmt: skip
    ap.add_argument("--memory", action="store_true", help="also peak RSS per contender (S9)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only S9 (no timing rounds); pair with --out")  # fmt: skip
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--precision-child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vs_lightly.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    cpu = cpu_info()
    precisions = [p for p in args.precisions
                  if p == "fp32" or cpu["native_bf16"] or args.force_bf16]  # fmt: skip
    results: dict[str, Any] = {}
    for precision in precisions if not args.memory_only else ():
        contenders = build(args, precision)
        flops = contenders.pop("_step_flops")
        times: dict[str, list[float]] = {name: [] for name in contenders}
        times["gemm"] = []
        for rnd in range(args.rounds):
            names = list(times) if rnd % 2 == 0 else list(reversed(times))
            for name in names:
                sec = gemm_seconds(precision) if name == "gemm" else contenders[name]()
                times[name].append(sec)
                if name != "gemm":
                    ips = args.steps * args.batch_size / sec
                    print(f"{precision} round {rnd}: {name:<22s} {ips:8.1f} img/s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        ips = {k: args.steps * args.batch_size / v for k, v in med.items() if k != "gemm"}
        best_lightly = max((ips[k] for k in ("lightly", "lightly_main_1thread") if k in ips),
                           default=None)  # fmt: skip
        step_flops_per_s = flops / (med["selfsup"] / args.steps)
        gemm_flops_per_s = 2 * 2048**3 / med["gemm"]
        results[precision] = {
            "images_per_second_median": ips,
            "seconds_per_round": times,
            "selfsup_vs_lightly": ips["selfsup"] / best_lightly if best_lightly else None,
            "selfsup_vs_bare": ips["selfsup"] / ips["bare"],
            **(
                {"selfsup_vs_lightly_heap_cache": ips["selfsup"] / ips["lightly_heap_cache"]}
                if "lightly_heap_cache" in ips
                else {}
            ),
            **(
                {"selfsup_separate_vs_lightly": ips["selfsup_separate"] / best_lightly}
                if "selfsup_separate" in ips and best_lightly
                else {}
            ),
            **(
                {
                    "selfsup_compiled_vs_lightly": ips["selfsup_compiled"] / best_lightly,
                    "selfsup_compiled_vs_lightly_compiled": ips["selfsup_compiled"]
                    / ips["lightly_compiled"],
                    "selfsup_compiled_vs_bare_compiled": ips["selfsup_compiled"]
                    / ips["bare_compiled"],
                    "compiled_vs_eager_selfsup": ips["selfsup_compiled"] / ips["selfsup"],
                }
                if "selfsup_compiled" in ips and "lightly_compiled" in ips and best_lightly
                else {}
            ),
            "step_flops": flops,
            "step_flop_per_s": step_flops_per_s,
            "gemm_flop_per_s": gemm_flops_per_s,
            "step_vs_gemm_flop_per_s": step_flops_per_s / gemm_flops_per_s,
        }
        r = results[precision]
        print(
            f"{precision}: selfsup/lightly {r['selfsup_vs_lightly']}, selfsup/bare "
            f"{r['selfsup_vs_bare']:.3f}, step FLOP/s / GEMM {r['step_vs_gemm_flop_per_s']:.3f}"
        )
    auto = "bf16" if cpu["native_bf16"] else "fp32"
    if auto in results and "fp32" in results and not args.skip_lightly:
        lightly_fp32 = max(results["fp32"]["images_per_second_median"][k]
                           for k in ("lightly", "lightly_main_1thread")
                           if k in results["fp32"]["images_per_second_median"])  # fmt: skip
        results["defaults"] = {
            "selfsup_precision": auto,
            "selfsup_images_per_second": results[auto]["images_per_second_median"]["selfsup"],
            "lightly_fp32_images_per_second": lightly_fp32,
            "ratio": results[auto]["images_per_second_median"]["selfsup"] / lightly_fp32,
        }
        print(f"defaults: selfsup ({auto}) / lightly (fp32) = {results['defaults']['ratio']:.2f}")
    if args.memory or args.memory_only:
        results["peak_rss_mib"] = {}
        for precision in precisions:
            for name in ("selfsup", "lightly"):
                cmd = [sys.executable, __file__, "--memory-child", name, "--precision-child",
                       precision, "--width", str(args.width), "--batch-size",
                       str(args.batch_size), "--steps", str(args.steps), "--threads",
                       str(args.threads), "--workers", str(args.workers),
                       "--heap-cache", args.heap_cache]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rss = json.loads(out.strip().splitlines()[-1])
                # the main process plus every DataLoader worker (each at most the largest;
                # an upper bound: pages a forked worker shares with the main count twice)
                total = (
                    rss["peak_rss_mib"]
                    + (args.workers if name == "lightly" else 0) * rss["worker_peak_rss_mib"]
                )
                results["peak_rss_mib"][f"{name}_{precision}"] = {**rss, "total_mib": total}
                print(
                    f"peak RSS while training {name} {precision}: {total:.0f} MiB (main "
                    f"{rss['peak_rss_mib']:.0f}, before training {rss['rss_before_mib']:.0f})",
                    flush=True,
                )
    payload = {
        "benchmark": "SimCLR training throughput, selfsup vs lightly (issue 19)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args) | {"warmup": WARMUP},
        "cpu": cpu,
        "torch": torch.__version__,
        "results": results,
    }
    try:
        import lightly

        payload["lightly"] = lightly.__version__
    except ImportError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
