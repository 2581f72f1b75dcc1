"""Cost of one SimCLR training step on CPU: selfsup vs the bare backbone vs lightly.

All contenders run in ONE process on the same uint8 CIFAR-10 images, the same ResNet-18
(CIFAR stem, ``--width``) backbone architecture and initial weights, batch ``--batch-size``
images (2 x batch views), fp32, SGD, ``torch.set_num_threads(--threads)``. Contenders are
interleaved within each of ``--rounds`` rounds; each warms up 2 steps then times ``--steps``
steps. Best and median rounds are reported. Throughput is always *images* per second (one image
= two views).

Contenders:

* ``bare``: backbone forward + backward of ``features.sum()`` + SGD step on the 2B pre-made
  float views (made once by selfsup's own pipeline, outside the timed loop).
* ``selfsup_augment_only``: selfsup's batched ``simclr_cifar`` augmentation of both views
  (uint8 in, normalised float out), no model.
* ``selfsup_step_premade``: backbone + projection head + NT-Xent + backward + SGD step on the
  pre-made views (the full step minus augmentation).
* ``selfsup_full``: ``loss, _ = method(images_uint8, None, generator, None, 0)`` + backward + SGD
  step: batched augmentation of both views, backbone on the 2B concatenated views, head, NT-Xent.
* ``lightly_step_premade``: lightly's SimCLR as its docs build it (the selfsup backbone module,
  ``SimCLRProjectionHead``, ``NTXentLoss``; two forward passes, one per view, as in lightly's
  examples) + backward + SGD step on the same pre-made views.
* ``lightly_end_to_end``: the same model step fed by lightly's standard input path: a torch
  DataLoader (``--workers`` worker processes) over PIL images with ``SimCLRTransform`` applied
  per image. Timed from creating the DataLoader iterator (fresh workers each round, so nothing
  is prefetched before the clock starts) to the last optimizer step.

Usage: python benchmarks/bench_simclr_step.py --width 0.25 --batch-size 256 --steps 8 --rounds 3
Writes benchmarks/results/simclr_step.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cifar10" / "train.npz"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
WARMUP = 2


def load_images(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``(n, 3, 32, 32)`` uint8: CIFAR-10 train images (seeded subset) if present, else random."""
    rng = np.random.default_rng(seed)
    if DATA.exists():
        imgs = np.load(DATA)["images"]
        idx = rng.choice(len(imgs), size=min(n, len(imgs)), replace=False)
        arr, source = imgs[np.resize(idx, n)], f"cifar10 train ({DATA})"
    else:
        arr, source = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), "random uint8"
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous(), source


# ----------------------------------------------------------------------------- lightly side


class LightlySimCLR(nn.Module):
    """lightly's documented SimCLR module: backbone -> flatten -> SimCLRProjectionHead."""

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden: int, out: int) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feat_dim, hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


class PILDataset(torch.utils.data.Dataset):
    """``length`` items cycling over the images, as PIL images through ``transform``."""

    def __init__(self, images: torch.Tensor, transform: Callable, length: int) -> None:
        from PIL import Image

        hwc = images.permute(0, 2, 3, 1).numpy()
        self.pil = [Image.fromarray(a) for a in hwc]
        self.transform, self.length = transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        return self.transform(self.pil[i % len(self.pil)]), 0


def lightly_transform():  # type: ignore[no-untyped-def]
    """SimCLRTransform at 32 px matching selfsup's simclr_cifar view (no blur, jitter
    0.4/0.4/0.4/0.1 via cj_strength=0.5 on lightly's 0.8/0.8/0.8/0.2 defaults, p=0.8)."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(
        input_size=32,
        cj_prob=0.8,
        cj_strength=0.5,
        min_scale=0.08,
        random_gray_scale=0.2,
        gaussian_blur=0.0,
        hf_prob=0.5,
        normalize={"mean": list(MEAN), "std": list(STD)},
    )


# ----------------------------------------------------------------------------- harness


def timed(step: Callable[[int], None], steps: int) -> float:
    for s in range(WARMUP):
        step(s)
    t0 = time.perf_counter()
    for s in range(WARMUP, WARMUP + steps):
        step(s)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per contender and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (main process)")
    ap.add_argument("--workers", type=int, default=2, help="lightly DataLoader workers")
    ap.add_argument("--images", type=int, default=512, help="distinct images loaded")
    ap.add_argument("--skip-lightly", action="store_true")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "simclr_step.json"
    )
    args = ap.parse_args()

    from selfsup.config import load_config
    from selfsup.losses import nt_xent
    from selfsup.models import build_method
    from selfsup.train.optim import build_optimizer
    from selfsup.train.trainer import step_seed

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B = args.batch_size
    images, source = load_images(max(args.images, B))
    batches = [images[i : i + B] for i in range(0, len(images) - B + 1, B)]

    cfg = load_config(
        "simclr",
        "simclr_cifar10_cpu",
        [
            f"backbone.width={args.width}",
            f"train.batch_size={B}",
            "train.precision=fp32",
            "method_args.proj_hidden_dim=512",
            "method_args.proj_out_dim=128",
        ],
    )
    method = build_method(cfg, 32, 3, None)
    method.train()
    temperature = float(method.cfg.temperature)
    hidden, out_dim = method.cfg.proj_hidden_dim, method.cfg.proj_out_dim
    feat_dim = method.encoder.feature_dim
    lightly_backbone = copy.deepcopy(method.encoder)  # same module class and initial weights
    opt = build_optimizer(method, cfg.train.optimizer, B)

    def gen(step: int) -> torch.Generator:
        return torch.Generator().manual_seed(step_seed(cfg.seed, step))

    # Pre-made views: exactly what SimCLR.forward would build, made once, outside timing.
    with torch.no_grad():
        premade = []
        for s, xb in enumerate(batches):
            g = gen(s)
            premade.append((method.views(xb, g, None, 0), method.views(xb, g, None, 0)))

    def bare(step: int) -> None:
        v1, v2 = premade[step % len(premade)]
        loss = method.encoder(torch.cat([v1, v2])).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def augment_only(step: int) -> None:
        xb, g = batches[step % len(batches)], gen(step)
        with torch.no_grad():
            method.views(xb, g, None, 0), method.views(xb, g, None, 0)

    def step_premade(step: int) -> None:
        v1, v2 = premade[step % len(premade)]
        z = method.projector(method.encoder(torch.cat([v1, v2]))).float()
        loss = nt_xent(z[:B], z[B:], temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def full(step: int) -> None:
        loss, _ = method(batches[step % len(batches)], None, gen(step), None, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    contenders: dict[str, Callable[[], float]] = {
        "bare": lambda: timed(bare, args.steps),
        "selfsup_augment_only": lambda: timed(augment_only, args.steps),
        "selfsup_step_premade": lambda: timed(step_premade, args.steps),
        "selfsup_full": lambda: timed(full, args.steps),
    }

    if not args.skip_lightly:
        from lightly.loss import NTXentLoss

        lmodel = LightlySimCLR(lightly_backbone, feat_dim, hidden, out_dim)
        lmodel.train()
        criterion = NTXentLoss(temperature=temperature)
        lopt = torch.optim.SGD(lmodel.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)

        def lightly_step(x0: torch.Tensor, x1: torch.Tensor) -> None:
            z0, z1 = lmodel(x0), lmodel(x1)  # lightly's examples: one forward per view
            loss = criterion(z0, z1)
            loss.backward()
            lopt.step()
            lopt.zero_grad()

        def lightly_premade(step: int) -> None:
            lightly_step(*premade[step % len(premade)])

        dataset = PILDataset(images, lightly_transform(), (WARMUP + args.steps) * B)

        def lightly_e2e(main_threads: int = args.threads) -> float:
            # warm the model on pre-made views (the loader's own warm-up would prefetch
            # batches before the clock starts); then time a fresh loader end to end.
            for s in range(WARMUP):
                lightly_premade(s)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(dataset, range(args.steps * B)),
                batch_size=B,
                shuffle=True,
                num_workers=args.workers,
                drop_last=True,
            )
            torch.set_num_threads(main_threads)
            t0 = time.perf_counter()
            n = 0
            for (x0, x1), _ in loader:
                lightly_step(x0, x1)
                n += 1
            assert n == args.steps, n
            sec = time.perf_counter() - t0
            torch.set_num_threads(args.threads)
            return sec

        contenders["lightly_step_premade"] = lambda: timed(lightly_premade, args.steps)
        contenders["lightly_end_to_end"] = lightly_e2e
        if args.threads > 1:
            # With workers busy, main-process threads oversubscribe the cores; give lightly
            # its best case too: 1 torch thread in the main process while the loader runs.
            contenders["lightly_e2e_main_1thread"] = lambda: lightly_e2e(1)

    images_per_round = args.steps * B
    print(
        f"resnet18 cifar stem width {args.width} (feature {feat_dim}), head {feat_dim}->"
        f"{hidden}->{out_dim}, batch {B} images ({2 * B} views), fp32, threads {args.threads}, "
        f"{args.steps} timed steps after {WARMUP} warm-up, {args.rounds} rounds; data: {source}",
        flush=True,
    )
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rnd in range(args.rounds):
        for name, fn in contenders.items():
            sec = fn()
            times[name].append(sec)
            print(f"  round {rnd}: {name:<24s} {images_per_round / sec:9.1f} images/s", flush=True)

    results: dict[str, dict[str, object]] = {}
    for name, ts in times.items():
        results[name] = {
            "seconds_per_round": ts,
            "images_per_s_per_round": [images_per_round / t for t in ts],
            "images_per_s_best": images_per_round / min(ts),
            "images_per_s_median": images_per_round / statistics.median(ts),
        }
    for key in ("best", "median"):
        bare_ips = results["bare"][f"images_per_s_{key}"]
        ref = results.get("lightly_end_to_end", {}).get(f"images_per_s_{key}")
        for r in results.values():
            ips = r[f"images_per_s_{key}"]
            r[f"ratio_vs_bare_{key}"] = ips / bare_ips  # type: ignore[operator]
            r[f"ratio_vs_lightly_e2e_{key}"] = ips / ref if ref else None  # type: ignore[operator]
    # Where the time goes (median seconds per step).
    per_step = {n: statistics.median(ts) / args.steps for n, ts in times.items()}
    split = {
        "bare_s": per_step["bare"],
        "augment_two_views_s": per_step["selfsup_augment_only"],
        "step_premade_s": per_step["selfsup_step_premade"],
        "head_and_loss_s": per_step["selfsup_step_premade"] - per_step["bare"],
        "full_s": per_step["selfsup_full"],
        "full_minus_premade_s": per_step["selfsup_full"] - per_step["selfsup_step_premade"],
    }

    hdr = f"\n{'contender':<24s} {'best img/s':>11s} {'vs bare':>8s} {'vs lightly':>11s}"
    hdr += f" {'median img/s':>13s} {'vs bare':>8s} {'vs lightly':>11s}"
    print(hdr)
    for name, r in results.items():
        row = f"{name:<24s}"
        for key in ("best", "median"):
            lr = r[f"ratio_vs_lightly_e2e_{key}"]
            w = 11 if key == "best" else 13
            row += f" {r[f'images_per_s_{key}']:{w}.1f} {r[f'ratio_vs_bare_{key}']:7.3f}x"
            row += f" {lr:10.3f}x" if lr is not None else f" {'-':>11s}"
        print(row)
    print("\nmedian seconds per step: " + ", ".join(f"{k}={v:.4f}" for k, v in split.items()))
    full_ratio = results["selfsup_full"]["ratio_vs_bare_median"]
    print(f"selfsup full step speed / bare speed (median): {full_ratio:.3f} (target >= 0.9)")

    payload = {
        "benchmark": "SimCLR training step, CPU fp32, 32 px",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": source,
        "settings": {
            "backbone": "resnet18",
            "stem": "cifar",
            "width": args.width,
            "feature_dim": feat_dim,
            "proj_hidden_dim": hidden,
            "proj_out_dim": out_dim,
            "temperature": temperature,
            "batch_size_images": B,
            "views_per_step": 2 * B,
            "precision": "fp32",
            "optimizer": "SGD (selfsup build_optimizer; lightly torch.optim.SGD momentum 0.9)",
            "threads": args.threads,
            "lightly_workers": args.workers,
            "warmup_steps": WARMUP,
            "timed_steps": args.steps,
            "rounds": args.rounds,
            "distinct_images": len(images),
        },
        "contenders_include": {
            "bare": "backbone fwd+bwd (features.sum()) + SGD step on pre-made views",
            "selfsup_augment_only": "selfsup batched simclr_cifar augmentation, both views",
            "selfsup_step_premade": "backbone + projection head + NT-Xent + bwd + SGD step",
            "selfsup_full": "method(uint8) (augment both views + model + loss) + bwd + SGD",
            "lightly_step_premade": "lightly SimCLR model (same backbone, SimCLRProjectionHead "
            "incl. its final BatchNorm1d), two forwards (one per view), NTXentLoss, bwd, SGD",
            "lightly_end_to_end": "DataLoader(workers) over PIL images + per-image "
            "SimCLRTransform (2 views) + collate + the lightly model step; fresh workers "
            "per round, startup and pipeline fill included; main process at --threads",
            "lightly_e2e_main_1thread": "as lightly_end_to_end but the main process runs "
            "the model step with 1 torch thread (avoids oversubscribing the cores)",
        },
        "results": results,
        "median_seconds_split": split,
        "target_full_over_bare_min": 0.9,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    try:
        import lightly

        payload["lightly"] = lightly.__version__
    except ImportError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
