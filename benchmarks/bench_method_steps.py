"""Cost of every method's training step vs its bare backbone; kNN vs lightly; FLOP/s vs a GEMM.

All contenders run in ONE process, on the same uint8 32x32 images (CIFAR-10 train images from
``$SELFSUP_DATA/cifar10/train.npz`` or ``../shared/datasets/cifar10/train.npz`` when present,
else random uint8; labels random in 0..9), ``torch.set_num_threads(--threads)``. Timed
contenders are interleaved within each of ``--rounds`` rounds (their order alternating from
round to round); each warms up ``--warmup`` steps, then times ``--steps`` steps. Best and median
rounds are reported. CPU: fp32, contiguous. CUDA: bf16 autocast and channels_last.

Parts (``--parts``, default all):

* ``steps``: for each method (``--methods``, default every registered one, supervised
  included as the reference), built from its ``<method>_cifar10_cpu`` recipe with
  ``train.batch_size=--batch-size`` (``--width`` overrides the ResNet width; split-brain gets
  half of it per branch, as its recipe does; ViT recipes keep their size), one full training
  step as the Trainer runs it, minus logging and checkpointing: the LR schedule, then the
  Trainer's own ``TrainStep`` (``method(uint8 images, labels, generator, B, 0)`` with the
  augmentation inside, backward, gradient-norm clipping (the norm is always computed), the
  finiteness check, ``before_optimizer_step``, the optimizer step (the recipe's optimizer, built
  by ``build_optimizer``) and ``on_after_step``: EMA teachers/key encoders, MoCo's queue, DINO's
  centre). Steps are numbered from the middle of the recipe's run (past LR warm-up and DINO's
  frozen-last-layer epoch). The method's
  ``bare`` baseline: a copy of that method's own encoder (same architecture, width, input
  channels) doing forward + backward of ``features.sum()`` + an SGD step on pre-made float
  inputs of exactly the shapes the method feeds its trainable encoder per step, one pass per
  call of the method (recorded by wrapping the encoder's ``forward``, ``forward_features``,
  ``embed`` and ``split`` for one probe step; see ``baseline_inputs`` per method: e.g. SimCLR
  2B views of 32 px in one pass, rotation 4B, jigsaw 9B tiles at tile size, DINO 2B global +
  2B local crops in two passes, MoCo v3 two passes of B, MAE the ViT on the B full images).
  No-grad passes of momentum networks are method cost. Throughput is images (uint8 inputs)
  per second; ``ratio`` = method images/s / bare images/s. ``flop_bound`` = bare FLOPs /
  method FLOPs per step (``FlopCounterMode``, forward + backward, the method's no-grad passes
  included): the best ``ratio`` the method can reach if its step runs at the bare step's FLOP/s,
  since its teacher passes, decoders and heads are real work; ``of_flop_bound`` = ratio /
  flop_bound (1 = no overhead beyond the method's own FLOPs). ``--methods name:recipe`` adds
  other recipes (e.g. ``inpainting:inpainting_adv_cifar10_cpu``). ``--precision bf16`` runs
  both sides under bf16 autocast and channels_last (CPUs with native bf16). ``--compile``
  sends both sides through ``torch.compile`` (the method's forward, as ``train.compile`` does,
  and the bare encoder); the compile happens in the first round's warm-up, untimed.
* ``knn``: weighted kNN (k=200, t=0.1, 10 classes) of ``--knn-queries`` queries against a
  ``--knn-bank`` x ``--knn-dim`` bank of random L2-normalised features: selfsup's
  ``evaluate.knn.knn_predict`` (one k) vs lightly's ``utils.benchmarking.knn_predict`` (bank
  pre-transposed to (D, N) outside timing, as lightly keeps it; queries in chunks of
  ``--knn-chunk``, the chunk selfsup uses), with the fraction of identical predictions.
* ``flops``: FLOPs of one SimCLR training step (forward + backward, ``FlopCounterMode``:
  matmuls and convolutions, 2 per multiply-add) at ``--width`` / ``--batch-size``, its time as
  in ``steps``, and a square matmul (``--gemm-size``: 2048 fp32 on CPU, 8192 bf16 on CUDA)
  timed in the same rounds: achieved FLOP/s of each and the step's fraction of the GEMM's.

Usage: python benchmarks/bench_method_steps.py --batch-size 256 --steps 4 --rounds 3 --threads 2
Writes benchmarks/results/method_steps.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_simclr_step  # sibling benchmark: its image loader
import torch
from torch import Tensor, nn

from selfsup.utils.allocator import heap_cache

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
IMAGE_SIZE = 32

# How each method's encoder inputs are counted (the shapes themselves are recorded).
NOTES: dict[str, str] = {
    "simclr": "2 views x B, one pass",
    "byol": "2 views x B, one pass; the EMA target's no-grad pass over the 2B views is method cost",
    "simsiam": "2 views x B, one pass",
    "barlow_twins": "2 views x B, one pass",
    "vicreg": "2 views x B, one pass",
    "moco_v2": "query encoder on view 1 only (B); the momentum key encoder's no-grad pass on "
    "view 2 and the queue are method cost",
    "moco_v3": "two query passes of B (one per view); the momentum key encoder's no-grad "
    "passes over both views are method cost",
    "dino": "student: 2 global crops (2B, full size) in one pass + num_local_crops x B local "
    "crops in another; the EMA teacher's no-grad pass over the global crops is method cost",
    "supervised": "B images, one pass",
    "rotation": "4 rotations x B, one pass",
    "jigsaw": "9 tiles x B at tile size, one pass",
    "relative_location": "2 tiles x B (centre + neighbour) at tile size, one pass",
    "cpc": "G x G overlapping patches per image at patch size, one pass",
    "mae": "the ViT on the B full images (the method's encoder runs on the visible patches "
    "only, then the decoder)",
    "inpainting": "B masked images (the method takes the un-pooled map into its decoder)",
    "colorization": "B L-channel images (1 channel; the un-pooled map feeds the decoder)",
    "split_brain": "B Lab images through the channel-split encoder (L branch 1 channel, ab "
    "branch 2 channels)",
}


# ----------------------------------------------------------------------------- harness


def bf16_run(args: argparse.Namespace, device: torch.device) -> bool:
    """``--precision``: bf16 autocast + channels_last, or fp32 contiguous (default: bf16 on
    CUDA, fp32 on CPU)."""
    if args.precision is None:
        return device.type == "cuda"
    return bool(args.precision == "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step(i)`` after ``warmup`` untimed calls."""
    for s in range(warmup):
        step(s)
    sync(device)
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        step(s)
    sync(device)
    return time.perf_counter() - t0


def interleaved_rounds(
    ways: dict[Any, Callable[[], None]],
    step: Callable[[int], None],
    rounds: int,
    steps: int,
    device: torch.device,
) -> dict[Any, list[float]]:
    """Seconds per call of ``step(i)`` under each way (a callable that sets the way up), in
    ``rounds`` rounds that alternate the order of the ways; each round of each way is one
    untimed warm-up call, then ``steps`` timed ones."""
    times: dict[Any, list[float]] = {way: [] for way in ways}
    for r in range(rounds):
        for way in list(ways) if r % 2 == 0 else list(ways)[::-1]:
            ways[way]()
            times[way].append(timed(step, steps, 1, device) / steps)
    return times


def summary(seconds: list[float], work: float) -> dict[str, Any]:
    """Per-round seconds -> best/median seconds and ``work`` per second (images, FLOPs...)."""
    return {
        "seconds_per_round": seconds,
        "seconds_best": min(seconds),
        "seconds_median": statistics.median(seconds),
        "per_s_best": work / min(seconds),
        "per_s_median": work / statistics.median(seconds),
    }


def load_data(n: int, device: torch.device) -> tuple[Tensor, Tensor, str]:
    """``n`` uint8 images (n, 3, 32, 32) and random labels, on ``device``."""
    env = os.environ.get("SELFSUP_DATA")
    if env and (Path(env) / "cifar10" / "train.npz").exists():
        bench_simclr_step.DATA = Path(env) / "cifar10" / "train.npz"
    images, source = bench_simclr_step.load_images(n)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(1))
    return images.to(device), labels.to(device), source


# ----------------------------------------------------------------------------- part 1: steps


@dataclass
class MethodBench:
    """One method built as the Trainer builds it, its training step and its bare baseline."""

    name: str
    recipe: str
    label: str
    cfg: Any
    method: Any
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: torch.dtype | None
    batches: list[tuple[Tensor, Tensor]]
    total_steps: int
    start_step: int
    lr_schedule: Any
    train_step: Any
    encoder_calls: list[tuple[int, ...]] = field(default_factory=list)
    bare_encoder: nn.Module | None = None
    bare_optimizer: torch.optim.Optimizer | None = None
    bare_inputs: list[Tensor] = field(default_factory=list)
    bare_forward: Callable[[Tensor], Tensor] | None = None
    """What ``bare_step`` calls: ``bare_encoder``, or its compiled form (``--compile``)."""
    nonfinite_steps: int = 0
    steps_run: int = 0
    method_flops: int = 0
    bare_flops: int = 0

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        )

    def step(self, i: int) -> None:
        """One Trainer training step: the LR schedule, then ``selfsup.train.TrainStep``
        (the code ``Trainer.fit`` runs)."""
        from selfsup.train.schedule import Progress

        step = self.start_step + self.steps_run % max(1, self.total_steps - self.start_step)
        self.steps_run += 1
        images, labels = self.batches[i % len(self.batches)]
        self.lr_schedule.apply(self.optimizer, Progress(step, self.total_steps))
        _, _, applied = self.train_step(images, labels, len(images), 0, step)
        if not applied:
            self.nonfinite_steps += 1

    def bare_step(self, i: int) -> None:
        """Bare encoder: forward + backward of ``features.sum()`` + SGD step, same inputs."""
        assert self.bare_forward is not None and self.bare_optimizer is not None
        with self.autocast():
            loss = sum(self.bare_forward(x).float().sum() for x in self.bare_inputs)
        self.bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        self.bare_optimizer.step()

    def probe_encoder_inputs(self) -> None:
        """Record the input shape of each outermost call of the trainable encoder during one
        forward (``forward``, ``forward_features``, a ViT's ``embed`` and a channel-split
        encoder's ``split`` are wrapped: MAE embeds then runs the visible tokens, split-brain
        splits then runs each branch on its own channels)."""
        enc = self.method.encoder
        depth = [0]
        calls: list[tuple[int, ...]] = []
        wrapped = []
        for attr in ("forward", "forward_features", "embed", "split"):
            fn = getattr(enc, attr, None)
            if fn is None:
                continue

            def wrapper(*args: Any, _fn: Callable = fn, **kwargs: Any) -> Any:
                x = args[0] if args else None
                if depth[0] == 0 and isinstance(x, Tensor) and x.ndim == 4:
                    calls.append(tuple(x.shape))
                depth[0] += 1
                try:
                    return _fn(*args, **kwargs)
                finally:
                    depth[0] -= 1

            setattr(enc, attr, wrapper)
            wrapped.append(attr)
        try:
            images, labels = self.batches[0]
            g = torch.Generator(device=self.device).manual_seed(0)
            with torch.no_grad(), self.autocast():
                self.method(images, labels, g, len(images), 0)
        finally:
            for attr in wrapped:
                delattr(enc, attr)  # back to the class's methods
        self.encoder_calls = calls

    def build_bare(self, memory_format: torch.memory_format, compiled: bool = False) -> None:
        self.probe_encoder_inputs()
        if not self.encoder_calls:
            raise RuntimeError(f"{self.name}: no call of the encoder was seen in a step")
        self.bare_encoder = copy.deepcopy(self.method.encoder).train()
        self.bare_forward = torch.compile(self.bare_encoder) if compiled else self.bare_encoder
        self.bare_optimizer = torch.optim.SGD(
            self.bare_encoder.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4
        )
        g = torch.Generator().manual_seed(0)
        self.bare_inputs = [  # shapes are (N, C, H, W): only 4-d inputs are recorded
            torch.randn(shape, generator=g).to(self.device).contiguous(memory_format=memory_format)
            for shape in self.encoder_calls
        ]

    def count_flops(self) -> None:
        """FLOPs (matmuls and convolutions, forward + backward) of one method step and of one
        bare step on the first batch; their ratio bounds ``ratio`` from above when the two run
        at the same FLOP/s (no-grad teacher passes, decoders and heads are in the method's)."""
        from torch.utils.flop_counter import FlopCounterMode

        images, labels = self.batches[0]
        g = torch.Generator(device=self.device).manual_seed(0)
        with FlopCounterMode(display=False) as method_count:
            with self.autocast():
                loss, _ = self.method(images, labels, g, len(images), 0)
            loss.backward()
        with FlopCounterMode(display=False) as bare_count:
            assert self.bare_encoder is not None
            with self.autocast():
                total = sum(self.bare_encoder(x).float().sum() for x in self.bare_inputs)
            total.backward()  # type: ignore[union-attr]
        self.method.zero_grad(set_to_none=True)
        self.bare_encoder.zero_grad(set_to_none=True)
        self.method_flops = int(method_count.get_total_flops())
        self.bare_flops = int(bare_count.get_total_flops())

    def baseline_shapes(self) -> str:
        n = len(self.batches[0][0])
        total = sum(s[0] for s in self.encoder_calls)
        shapes = " + ".join("x".join(map(str, s)) for s in self.encoder_calls)
        passes = len(self.encoder_calls)
        return f"{passes} pass{'es' if passes > 1 else ''}: {shapes} ({total / n:g}B)"


def build_bench(
    name: str,
    recipe: str,
    args: argparse.Namespace,
    device: torch.device,
    images: Tensor,
    labels: Tensor,
) -> MethodBench:
    """The method of ``recipe`` with the benchmark's overrides, as the Trainer builds it."""
    from selfsup.config import load_config
    from selfsup.models import build_method
    from selfsup.train import TrainStep
    from selfsup.train.optim import build_optimizer, peak_lr
    from selfsup.train.schedule import LRSchedule

    B = args.batch_size
    bf16 = bf16_run(args, device)
    overrides = [
        f"train.batch_size={B}",
        f"train.precision={'bf16' if bf16 else 'fp32'}",
        f"train.channels_last={'true' if bf16 else 'false'}",
    ]
    base = load_config(name, recipe, [])
    if args.width is not None and base.backbone.is_resnet:
        width = args.width / 2 if name == "split_brain" else args.width
        overrides.append(f"backbone.width={width}")
    cfg = load_config(name, recipe, overrides)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, IMAGE_SIZE, 3, NUM_CLASSES)
    method.check_global_batch(B)
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    if bf16:
        method = method.to(memory_format=torch.channels_last)
        method.memory_format = torch.channels_last
    method = method.to(device).train()
    optimizer = build_optimizer(method, cfg.train.optimizer, B)
    steps_per_epoch = max(1, (cfg.data.subset or 50_000) // B)
    total_steps = math.ceil(cfg.train.epochs * steps_per_epoch)
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    amp = torch.bfloat16 if bf16 else None
    compiled = bool(getattr(args, "compile", False))  # other benchmarks' args lack --compile
    train_step = TrainStep(  # before on_train_start, as the Trainer builds it
        method=method,
        forward=torch.compile(method) if compiled else method,
        compiled=compiled,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda", enabled=False),
        amp_dtype=amp,
        device=device,
        seed=cfg.seed,
        grad_clip=cfg.train.grad_clip,
        total_steps=total_steps,
    )
    method.on_train_start(steps_per_epoch, total_steps)
    n = len(images) - len(images) % B
    batches = [(images[i : i + B], labels[i : i + B]) for i in range(0, n, B)]
    bench = MethodBench(
        name=name,
        recipe=recipe,
        label=name if recipe == f"{name}_cifar10_cpu" else f"{name}:{recipe}",
        cfg=cfg,
        method=method,
        optimizer=optimizer,
        device=device,
        amp=amp,
        batches=batches,
        total_steps=total_steps,
        start_step=total_steps // 2,
        lr_schedule=LRSchedule(
            cfg.train.schedule,
            peak=peak_lr(cfg.train.optimizer, B),
            warmup=round(cfg.train.schedule.warmup_epochs * steps_per_epoch),
        ),
        train_step=train_step,
    )
    bench.build_bare(memory_format, compiled)
    bench.count_flops()
    return bench


def recipe_bench(recipe: str, batch_size: int, batches: int) -> tuple[MethodBench, str, str]:
    """SimCLR of ``recipe`` on the CPU at the precision ``precision=auto`` picks (bf16 where the
    CPU has native bf16, else fp32), over ``batches`` batches of images: (bench, precision,
    data source). What the speedrun benchmarks time."""
    from selfsup.utils.precision import cpu_has_fast_bf16

    device = torch.device("cpu")
    precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    images, labels, source = load_data(batch_size * batches, device)
    args = argparse.Namespace(batch_size=batch_size, width=None, precision=precision)
    return build_bench("simclr", recipe, args, device, images, labels), precision, source


def describe(bench: MethodBench) -> dict[str, Any]:
    bcfg = bench.cfg.backbone
    return {
        "recipe": bench.recipe,
        "backbone": bcfg.name,
        "width": bcfg.width if bcfg.is_resnet else None,
        "encoder_in_channels": int(getattr(bench.method.encoder, "in_channels", 0)),
        "feature_dim": int(bench.method.encoder.feature_dim),
        "optimizer": bench.cfg.train.optimizer.name,
        "encoder_calls": [list(s) for s in bench.encoder_calls],
        "baseline_inputs": f"{bench.baseline_shapes()}: {NOTES.get(bench.name, '')}".rstrip(": "),
        "method_parameters": sum(p.numel() for p in bench.method.parameters()),
        "encoder_parameters": sum(p.numel() for p in bench.method.encoder.parameters()),
    }


def method_list(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(method, recipe)`` pairs: ``--methods`` entries are ``name`` or ``name:recipe``."""
    from selfsup.methods import list_methods

    names = args.methods or [cls.name for cls in list_methods()]
    out = []
    for entry in names:
        name, _, recipe = entry.partition(":")
        out.append((name, recipe or f"{name}_cifar10_cpu"))
    return out


def run_steps(
    args: argparse.Namespace, device: torch.device, images: Tensor, labels: Tensor
) -> dict[str, Any]:
    benches: list[MethodBench] = []
    failed: dict[str, str] = {}
    for name, recipe in method_list(args):
        try:
            benches.append(build_bench(name, recipe, args, device, images, labels))
        except Exception as err:  # reported; the other methods still run
            label = name if recipe == f"{name}_cifar10_cpu" else f"{name}:{recipe}"
            failed[label] = f"{type(err).__name__}: {err}"
            print(f"  {label}: cannot build ({failed[label]})", flush=True)
    B = args.batch_size
    times: dict[str, dict[str, list[float]]] = {
        b.label: {"method": [], "bare": []} for b in benches
    }
    for rnd in range(args.rounds):
        for b in benches:
            order = ("method", "bare") if rnd % 2 == 0 else ("bare", "method")
            for kind in order:
                fn = b.step if kind == "method" else b.bare_step
                try:
                    sec = timed(fn, args.steps, args.warmup, device)
                except Exception as err:  # reported; the other methods still run
                    failed[b.label] = f"{kind} step: {type(err).__name__}: {err}"
                    print(f"  {b.label}: {kind} step failed ({failed[b.label]})", flush=True)
                    break
                times[b.label][kind].append(sec)
            ts = times[b.label]
            if ts["method"] and ts["bare"] and len(ts["method"]) == len(ts["bare"]) == rnd + 1:
                print(
                    f"  round {rnd}: {b.label:<18s} method {B * args.steps / ts['method'][-1]:8.1f}"
                    f"  bare {B * args.steps / ts['bare'][-1]:8.1f} images/s",
                    flush=True,
                )
        benches = [b for b in benches if b.label not in failed]
    rows: dict[str, Any] = {}
    images_per_round = B * args.steps
    for b in benches:
        m = summary(times[b.label]["method"], images_per_round)
        r = summary(times[b.label]["bare"], images_per_round)
        rows[b.label] = {
            **describe(b),
            "method": _rename(m),
            "bare": _rename(r),
            "ratio_best": m["per_s_best"] / r["per_s_best"],
            "ratio_median": m["per_s_median"] / r["per_s_median"],
            "method_flops_per_step": b.method_flops,
            "bare_flops_per_step": b.bare_flops,
            "flop_bound": b.bare_flops / b.method_flops,
            "of_flop_bound_median": m["per_s_median"]
            / r["per_s_median"]
            / (b.bare_flops / b.method_flops),
            "nonfinite_steps": b.nonfinite_steps,
        }
    return {"methods": rows, "failed": failed}


def _rename(s: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("per_s", "images_per_s"): v for k, v in s.items()}


def print_steps(res: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n### Training step vs bare backbone (batch {args.batch_size} images, "
        f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} rounds)\n"
    )
    print(
        "| method | backbone | optimizer | bare inputs per step | method img/s (best / median) "
        "| bare img/s (best / median) | method / bare (best / median) "
        "| FLOP bound (bare / method GFLOP) | of bound (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in res["methods"].items():
        bb = r["backbone"] + (f" w{r['width']:g}" if r["width"] is not None else "")
        shapes = r["baseline_inputs"].split(":")[1].strip()
        m, b = r["method"], r["bare"]
        flag = f" ({r['nonfinite_steps']} non-finite)" if r["nonfinite_steps"] else ""
        print(
            f"| {name}{flag} | {bb} c{r['encoder_in_channels']} | {r['optimizer']} | {shapes} "
            f"| {m['images_per_s_best']:.1f} / {m['images_per_s_median']:.1f} "
            f"| {b['images_per_s_best']:.1f} / {b['images_per_s_median']:.1f} "
            f"| {r['ratio_best']:.3f} / {r['ratio_median']:.3f} "
            f"| {r['flop_bound']:.3f} ({r['bare_flops_per_step'] / 1e9:.1f} / "
            f"{r['method_flops_per_step'] / 1e9:.1f}) | {r['of_flop_bound_median']:.2f} |"
        )
    for name, why in res["failed"].items():
        print(f"| {name} | failed: {why} | | | | | | | |")


# ----------------------------------------------------------------------------- part 2: kNN


def run_knn(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import torch.nn.functional as F

    from selfsup.evaluate.knn import knn_predict

    g = torch.Generator().manual_seed(0)
    n, q, d, k, t, c = (
        args.knn_bank,
        args.knn_queries,
        args.knn_dim,
        args.knn_k,
        args.knn_t,
        NUM_CLASSES,
    )
    bank = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device)
    bank_labels = torch.randint(0, c, (n,), generator=g).to(device)
    queries = F.normalize(torch.randn(q, d, generator=g), dim=1).to(device)
    chunk = args.knn_chunk
    out: dict[str, Tensor] = {}

    def selfsup_knn(_: int) -> None:
        out["selfsup"] = knn_predict(
            bank, bank_labels, queries, ks=(k,), temperature=t, num_classes=c, chunk_size=chunk
        )[k]

    contenders: dict[str, Callable[[int], None]] = {"selfsup_knn_predict": selfsup_knn}
    lightly_error = None
    try:
        from lightly.utils.benchmarking import knn_predict as lightly_knn_predict

        bank_t = bank.T.contiguous()  # lightly's feature bank layout (D, N), made once

        def lightly_knn(_: int) -> None:
            with torch.no_grad():
                out["lightly"] = torch.cat(
                    [
                        lightly_knn_predict(queries[s : s + chunk], bank_t, bank_labels, c, k, t)[
                            :, 0
                        ]
                        for s in range(0, q, chunk)
                    ]
                )

        contenders["lightly_knn_predict"] = lightly_knn
    except ImportError as err:
        lightly_error = str(err)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rnd in range(args.rounds):
        names = list(contenders) if rnd % 2 == 0 else list(reversed(contenders))
        for name in names:
            times[name].append(timed(contenders[name], 1, 1, device))
    results = {name: _rename_q(summary(ts, q)) for name, ts in times.items()}
    res: dict[str, Any] = {
        "settings": {
            "bank": n,
            "queries": q,
            "dim": d,
            "classes": c,
            "k": k,
            "temperature": t,
            "query_chunk": chunk,
            "features": "random normal, L2-normalised; labels random",
        },
        "results": results,
    }
    if lightly_error:
        res["lightly_unavailable"] = lightly_error
        return res
    a, b = out["selfsup"].cpu(), out["lightly"].cpu()
    disagree = (a != b).nonzero().flatten()
    ties = 0
    if len(disagree):  # are the disagreements ties of the two classes' vote sums?
        qd = queries[disagree.to(device)].double()
        sim, idx = (qd @ bank.double().T).topk(k, dim=1)
        w = (sim / t).exp()
        scores = torch.zeros(len(qd), c, dtype=torch.float64, device=device)
        scores.scatter_add_(1, bank_labels[idx], w)
        sa = scores.gather(1, a[disagree].to(device)[:, None])
        sb = scores.gather(1, b[disagree].to(device)[:, None])
        ties = int(((sa - sb).abs() <= 1e-5 * scores.max(1, keepdim=True).values).sum())
    res["agreement"] = float((a == b).float().mean())
    res["disagreements"] = len(disagree)
    res["disagreements_that_are_ties"] = ties
    res["note"] = (
        "same protocol on both sides (cosine top-k, exp(sim / t) votes, argmax); differences "
        "can only come from ties (equal vote sums or equal similarities at the k-th neighbour) "
        "and float summation order"
        if len(disagree) == ties
        else "some disagreements are not ties: the two classifiers differ systematically"
    )
    return res


def _rename_q(s: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("per_s", "queries_per_s"): v for k, v in s.items()}


def print_knn(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(
        f"\n### kNN classification ({s['queries']} queries, bank {s['bank']} x {s['dim']}, "
        f"k={s['k']}, t={s['temperature']}, {s['classes']} classes, chunks of "
        f"{s['query_chunk']} queries)\n"
    )
    print("| contender | best s | median s | queries/s (best / median) | vs selfsup (median) |")
    print("|---|---|---|---|---|")
    ref = res["results"]["selfsup_knn_predict"]["seconds_median"]
    for name, r in res["results"].items():
        print(
            f"| {name} | {r['seconds_best']:.4f} | {r['seconds_median']:.4f} "
            f"| {r['queries_per_s_best']:.0f} / {r['queries_per_s_median']:.0f} "
            f"| {ref / r['seconds_median']:.3f}x |"
        )
    if "agreement" in res:
        print(
            f"\nsame top-1 prediction: {res['agreement']:.4f} ({res['disagreements']} "
            f"disagreements, {res['disagreements_that_are_ties']} of them ties); {res['note']}"
        )
    else:
        print(f"\nlightly unavailable: {res['lightly_unavailable']}")


# ----------------------------------------------------------------------------- part 3: FLOPs


def run_flops(
    args: argparse.Namespace, device: torch.device, images: Tensor, labels: Tensor
) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    bench = build_bench("simclr", "simclr_cifar10_cpu", args, device, images, labels)
    m = bench.method
    xb, yb = bench.batches[0]
    g = torch.Generator(device=device).manual_seed(0)
    fwd, bwd = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with fwd, bench.autocast():
        loss, _ = m(xb, yb, g, len(xb), 0)
    with bwd:
        loss.backward()
    m.zero_grad(set_to_none=True)
    step_flops = fwd.get_total_flops() + bwd.get_total_flops()
    enc_counter = FlopCounterMode(display=False)
    with enc_counter, torch.no_grad():
        m.encoder.eval()(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device))
    m.encoder.train()

    cuda = device.type == "cuda"
    bf16 = bf16_run(args, device)
    n = args.gemm_size or (8192 if cuda else 2048)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    b = torch.randn(n, n, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    gemm_out: list[Tensor] = []

    def gemm(_: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            gemm_out[:] = [a @ b]

    gemm_reps = args.gemm_reps
    times: dict[str, list[float]] = {"simclr_step": [], "gemm": []}
    for rnd in range(args.rounds):
        order = ("simclr_step", "gemm") if rnd % 2 == 0 else ("gemm", "simclr_step")
        for name in order:
            if name == "gemm":
                times[name].append(timed(gemm, gemm_reps, 1, device))
            else:
                times[name].append(timed(bench.step, args.steps, args.warmup, device))
    step = summary(times["simclr_step"], step_flops * args.steps)
    gemm_flops = 2 * n**3
    mm = summary(times["gemm"], gemm_flops * gemm_reps)
    return {
        "settings": {
            "step": f"SimCLR training step ({bench.cfg.backbone.name} width "
            f"{bench.cfg.backbone.width}, batch {args.batch_size} images = "
            f"{2 * args.batch_size} views of {IMAGE_SIZE} px, "
            f"{'bf16 autocast, channels_last' if bf16 else 'fp32'}); FLOPs of forward + "
            "backward, timed as the whole Trainer step (augmentation, optimizer, hooks)",
            "gemm": f"{n}x{n} @ {n}x{n} {str(dtype).replace('torch.', '')}"
            + (" (bf16 autocast)" if bf16 else ""),
            "timed_steps": args.steps,
            "gemm_reps_per_round": gemm_reps,
        },
        "step_forward_flops": int(fwd.get_total_flops()),
        "step_backward_flops": int(bwd.get_total_flops()),
        "step_flops": int(step_flops),
        "encoder_forward_flops_per_image": int(enc_counter.get_total_flops()),
        "gemm_flops": gemm_flops,
        "simclr_step": _rename_f(step),
        "gemm": _rename_f(mm),
        "fraction_best": step["per_s_best"] / mm["per_s_best"],
        "fraction_median": step["per_s_median"] / mm["per_s_median"],
    }


def _rename_f(s: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("per_s", "flop_per_s"): v for k, v in s.items()}


def print_flops(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(f"\n### Achieved FLOP/s: {s['step']}; vs {s['gemm']}\n")
    print("| what | FLOPs per call | best s per call | GFLOP/s (best / median) | of GEMM (b / m) |")
    print("|---|---|---|---|---|")
    st, mm = res["simclr_step"], res["gemm"]
    per_step, steps, reps = res["step_flops"], s["timed_steps"], s["gemm_reps_per_round"]
    print(
        f"| SimCLR step (fwd {res['step_forward_flops'] / 1e9:.2f} + bwd "
        f"{res['step_backward_flops'] / 1e9:.2f} GFLOP) | {per_step / 1e9:.2f} G "
        f"| {st['seconds_best'] / steps:.4f} "
        f"| {st['flop_per_s_best'] / 1e9:.2f} / {st['flop_per_s_median'] / 1e9:.2f} "
        f"| {res['fraction_best']:.3f} / {res['fraction_median']:.3f} |"
    )
    print(
        f"| GEMM | {res['gemm_flops'] / 1e9:.2f} G | {mm['seconds_best'] / reps:.4f} "
        f"| {mm['flop_per_s_best'] / 1e9:.2f} / {mm['flop_per_s_median'] / 1e9:.2f} | 1 / 1 |"
    )
    print(
        f"\nencoder forward: {res['encoder_forward_flops_per_image'] / 1e6:.1f} MFLOP per image; "
        f"step / GEMM FLOP/s: best {res['fraction_best']:.3f}, median {res['fraction_median']:.3f}"
    )


# ----------------------------------------------------------------------------- main


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "machine": platform.machine(),
    }
    if device.type == "cpu":
        from selfsup.utils.precision import cpu_info

        info["cpu_flags"] = cpu_info()
    try:
        import lightly

        info["lightly"] = lightly.__version__
    except ImportError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=["steps", "knn", "flops"],
                    default=["steps", "knn", "flops"])  # fmt: skip
    ap.add_argument("--methods", nargs="+", default=None,
                    help="method names, or name:recipe (default: every registered method, "
                    "each with its <name>_cifar10_cpu recipe)")  # fmt: skip
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                    help="bf16: autocast + channels_last (default on CUDA); fp32: contiguous "
                    "(default on CPU; use bf16 only where the CPU has native bf16)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per contender and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each timing")
    ap.add_argument("--width", type=float, default=None,
                    help="ResNet width (default: each recipe's; split-brain gets half per "
                    "branch)")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=256, help="images per step")
    ap.add_argument("--images", type=int, default=512, help="distinct images loaded")
    ap.add_argument("--knn-bank", type=int, default=50_000)
    ap.add_argument("--knn-queries", type=int, default=10_000)
    ap.add_argument("--knn-dim", type=int, default=128)
    ap.add_argument("--knn-k", type=int, default=200)
    ap.add_argument("--knn-t", type=float, default=0.1)
    ap.add_argument("--knn-chunk", type=int, default=1024, help="queries per matrix product")
    ap.add_argument("--gemm-size", type=int, default=None, help="default 2048 CPU, 8192 CUDA")
    ap.add_argument("--gemm-reps", type=int, default=4, help="timed GEMMs per round")
    ap.add_argument("--compile", action="store_true",
                    help="steps: each method's forward and its bare encoder through "
                    "torch.compile (inductor), as train.compile=true; compiled in the first "
                    "round's warm-up")  # fmt: skip
    ap.add_argument("--heap-cache", choices=["on", "off"], default="on",
                    help="keep freed memory in the process while timing, as the Trainer "
                    "does on the CPU (train.cpu_heap_cache); for every contender")  # fmt: skip
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "method_steps.json"
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()

    payload: dict[str, Any] = {
        "benchmark": "method training steps vs bare backbone; kNN vs lightly; FLOP/s vs GEMM",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(device, args.threads),
        "settings": {
            "device": args.device,
            "precision": "bf16 autocast + channels_last" if bf16_run(args, device) else "fp32",
            "batch_size_images": args.batch_size,
            "width": args.width,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "rounds": args.rounds,
            "parts": args.parts,
            "heap_cache": args.heap_cache == "on" and device.type == "cpu",
            "compile": args.compile,
        },
        "load_average_before": load_before,
    }
    with heap_cache(enabled=payload["settings"]["heap_cache"]):
        measure(args, device, payload)
    payload["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def measure(args: argparse.Namespace, device: torch.device, payload: dict[str, Any]) -> None:
    """The parts asked for, into ``payload``."""
    images = labels = None
    if "steps" in args.parts or "flops" in args.parts:
        images, labels, source = load_data(max(args.images, args.batch_size), device)
        payload["settings"]["data"] = source
        print(f"data: {source}; threads {args.threads}; device {device}", flush=True)
    if "steps" in args.parts:
        assert images is not None and labels is not None
        payload["steps"] = run_steps(args, device, images, labels)
        print_steps(payload["steps"], args)
    if "knn" in args.parts:
        payload["knn"] = run_knn(args, device)
        print_knn(payload["knn"])
    if "flops" in args.parts:
        assert images is not None and labels is not None
        payload["flops"] = run_flops(args, device, images, labels)
        print_flops(payload["flops"])


if __name__ == "__main__":
    main()
