"""Throughput of the SimCLR two-view augmentation at 32 px: selfsup vs torchvision vs kornia.

Each contender produces two augmented views (simclr_cifar settings: RandomResizedCrop 0.08-1,
flip 0.5, ColorJitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale p=0.2, normalise) of the same
``--images`` uint8 images, in the same run:

(a) selfsup, batched on CPU (``--batch-size`` images per call, ``--threads`` torch threads);
(b) torchvision.transforms.v2 applied per image (uint8 CHW *tensor* input, float conversion
    before Normalize) inside a torch DataLoader with 2 worker processes (1 thread each);
(c) kornia.augmentation applied batched on CPU (if kornia imports).

Each contender runs in a fresh process; contenders alternate over ``--repeats`` rounds and the
best round (plus the median) is reported, since shared machines see bursts of foreign load.

Usage: python benchmarks/bench_augment.py --images 10240 --batch-size 512 --threads 2
Writes benchmarks/results/augment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cifar10" / "train.npz"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def load_images(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``(n, 3, 32, 32)`` uint8: CIFAR-10 train images (shuffled) if present, else random."""
    rng = np.random.default_rng(seed)
    if DATA.exists():
        imgs = np.load(DATA)["images"]
        idx = rng.choice(len(imgs), size=min(n, len(imgs)), replace=False)
        idx = np.resize(idx, n)
        arr, source = imgs[idx], f"cifar10 train ({DATA})"
    else:
        arr, source = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), "random uint8"
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous(), source


def bench_selfsup(images: torch.Tensor, batch_size: int, threads: int) -> float:
    from selfsup.augment import build_pipeline

    torch.set_num_threads(threads)
    pipe = build_pipeline("simclr_cifar", 32, MEAN, STD)
    g = torch.Generator().manual_seed(0)
    warm = images[:batch_size]
    pipe(warm, g), pipe(warm, g)
    t0 = time.perf_counter()
    for s in range(0, len(images), batch_size):
        xb = images[s : s + batch_size]
        pipe(xb, g), pipe(xb, g)
    return time.perf_counter() - t0


class _TVTwoViews(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        from torchvision.transforms import v2

        self.images = images
        self.t = v2.Compose(
            [
                v2.RandomResizedCrop(32, scale=(0.08, 1.0), antialias=True),
                v2.RandomHorizontalFlip(0.5),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                v2.RandomGrayscale(0.2),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return self.t(x), self.t(x)


def bench_torchvision(images: torch.Tensor, batch_size: int, workers: int) -> float:
    ds = _TVTwoViews(images)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, shuffle=False, persistent_workers=False
    )
    t0 = time.perf_counter()
    for _v1, _v2 in loader:
        pass
    return time.perf_counter() - t0


def bench_kornia(images: torch.Tensor, batch_size: int, threads: int) -> float:
    import kornia.augmentation as K

    torch.set_num_threads(threads)
    aug = torch.nn.Sequential(
        K.RandomResizedCrop((32, 32), scale=(0.08, 1.0)),
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
    )
    warm = images[:batch_size].float().div(255)
    aug(warm), aug(warm)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            xb = images[s : s + batch_size].float().div_(255)
            aug(xb), aug(xb)
    return time.perf_counter() - t0


CONTENDERS = {
    "torchvision_v2_per_image": (
        bench_torchvision,
        "workers",
        "per image, uint8 CHW tensor input, DataLoader num_workers={workers}",
    ),
    "selfsup_batched_cpu": (bench_selfsup, "threads", "batched uint8 input, threads={threads}"),
    "kornia_batched_cpu": (bench_kornia, "threads", "batched float input, threads={threads}"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10240)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for batched runs")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (torchvision)")
    ap.add_argument("--skip-kornia", action="store_true")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds; contenders alternate within a round and the best round is reported "
        "(robust to other load on shared machines)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "augment.json")
    ap.add_argument("--only", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    args = ap.parse_args()

    images, source = load_images(args.images)
    n = len(images)
    if args.only:  # child process: time one contender, print seconds
        fn, knob, _ = CONTENDERS[args.only]
        print(json.dumps({"seconds": fn(images, args.batch_size, getattr(args, knob))}))
        return

    results: dict[str, dict[str, float | str]] = {}
    print(f"{n} images ({source}), two views each, batch {args.batch_size}")
    print("each contender runs in its own fresh process, one after the other")
    names = [c for c in CONTENDERS if not (c.startswith("kornia") and args.skip_kornia)]
    times: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(args.repeats):
        for name in names:
            cmd = [sys.executable, __file__, "--only", name, "--images", str(args.images)]
            cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            cmd += ["--workers", str(args.workers)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  {name} failed/skipped: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            times[name].append(seconds)
            print(f"  round {rnd}: {name:<26s} {n / seconds:10.0f} images/s", flush=True)
    for name in names:
        if not times[name]:
            continue
        _, _, note = CONTENDERS[name]
        best = min(times[name])
        results[name] = {
            "seconds_best": best,
            "seconds_all": times[name],
            "images_per_s": n / best,
            "images_per_s_median": n / sorted(times[name])[len(times[name]) // 2],
            "note": note.format(threads=args.threads, workers=args.workers),
        }

    base = results["torchvision_v2_per_image"]["images_per_s"]
    base_med = results["torchvision_v2_per_image"]["images_per_s_median"]
    print(f"\n{'contender':<28s} {'best/s':>10s} {'ratio':>7s} {'median/s':>13s} {'ratio':>7s}")
    for name, r in results.items():
        r["ratio_vs_torchvision"] = r["images_per_s"] / base
        r["ratio_vs_torchvision_median"] = r["images_per_s_median"] / base_med
        print(
            f"{name:<28s} {r['images_per_s']:10.0f} {r['ratio_vs_torchvision']:6.2f}x"
            f" {r['images_per_s_median']:13.0f} {r['ratio_vs_torchvision_median']:6.2f}x"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "simclr_cifar two-view augmentation, 32 px",
        "images": n,
        "data": source,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "workers": args.workers,
        "repeats": args.repeats,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
