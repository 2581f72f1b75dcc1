"""Training input pipeline at 224 px: selfsup streaming vs a torchvision ImageFolder DataLoader.

Both contenders read the same folder of full-size JPEGs (generated here: ``--images`` pictures
of about 500 x 375, the size of a typical ImageNet photo, in 10 class folders) with 2 worker
processes and batches of ``--batch-size``, and hand the training loop one batch at a time:

(a) torchvision: ``ImageFolder(root, Compose([RandomResizedCrop(224), ToTensor()]))`` in a
    ``DataLoader(shuffle=True, num_workers=2, drop_last=True)``: float32 (B, 3, 224, 224)
    batches in [0, 1], the usual per-image pipeline;
(b) selfsup: ``data.mode=stream`` — :class:`selfsup.data.FolderStreamLoader` over the same
    folder, the random resized crop taken while decoding (same area range 0.08-1 and aspect
    range 3/4-4/3 as torchvision's), uint8 (B, 3, 224, 224) batches (the method converts to
    float on the device, as part of its batched augmentation).

Images/s is images handed out / wall-clock seconds of one full pass (worker start-up
included), after one untimed pass that puts the files in the page cache. Contenders alternate
over ``--rounds`` rounds, each pass in a fresh process; the median of each is reported with
the ratio of medians. Then the per-image cost of the stages that differ (decoding, resizing the
crop) is timed in one process (:func:`stage_timings`).

Usage: python benchmarks/bench_input_pipeline.py --images 3000 --rounds 3
Writes benchmarks/results/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
CLASSES = 10


def photo(seed: int, width: int, height: int):  # type: ignore[no-untyped-def]
    """A photo-like picture: a smooth colour field, a dozen blurred shapes and sensor noise
    (compresses to ~60-90 KB at quality 90, as a 500 x 375 photo does)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    im = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(6, 16))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], colour)
    arr = np.asarray(im.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.int16)
    arr = arr + rng.normal(0, 8, arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_folder(root: Path, n: int) -> dict:
    """``root/class_k/NNNNN.jpg``: ``n`` JPEGs (quality 90) of 500 x 375 (1 in 4 portrait,
    375 x 500); kept between runs (``root/done.json``)."""
    done = root / "done.json"
    if done.exists() and json.loads(done.read_text()).get("images") == n:
        return json.loads(done.read_text())
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (375, 500) if rng.random() < 0.25 else (500, 375)
        photo(i, w, h).save(folder / f"{i:05d}.jpg", quality=90)
    sizes = [p.stat().st_size for p in root.rglob("*.jpg")]
    info = {"images": n, "mean_kib": sum(sizes) / len(sizes) / 1024, "sizes": "500x375 / 375x500"}
    done.write_text(json.dumps(info))
    return info


def read_all(root: Path) -> None:
    for p in root.rglob("*.jpg"):
        p.read_bytes()


def run_torchvision(root: Path, batch_size: int, workers: int) -> tuple[int, float]:
    import torch
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(
        str(root), transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.ToTensor()])
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True)  # fmt: skip
    seen, t0 = 0, time.perf_counter()
    for images, _ in loader:
        assert images.shape[1:] == (3, SIZE, SIZE) and images.dtype == torch.float32
        seen += images.shape[0]
    return seen, time.perf_counter() - t0


def run_selfsup(root: Path, batch_size: int, workers: int) -> tuple[int, float]:
    import torch

    from selfsup.data import FolderStreamLoader, open_training_source

    source = open_training_source(str(root), mode="stream", image_size=SIZE,
                                  crop_scale=(0.08, 1.0))  # fmt: skip
    loader = FolderStreamLoader(source, batch_size, seed=0, workers=workers)
    seen, t0 = 0, time.perf_counter()
    for batch in loader.iterate(0):
        assert batch.images.shape[1:] == (3, SIZE, SIZE) and batch.images.dtype == torch.uint8
        seen += batch.images.shape[0]
    return seen, time.perf_counter() - t0


def stage_timings(root: Path, n: int = 200, rounds: int = 3) -> dict[str, float]:
    """Milliseconds per image of each stage, in one process with one thread, on the same
    random crop boxes (best of ``rounds``): decoding a JPEG to a uint8 array with Pillow and to
    a uint8 tensor with torchvision's libjpeg-turbo decoder, resizing the box to 224 px with
    Pillow and with torch's uint8 kernel, and selfsup's whole decode-time crop
    (``decode_crop``) with and without torchvision's decoder."""
    import io

    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision.io import decode_jpeg

    from selfsup.data.decode import random_crop_box

    torch.set_num_threads(1)
    files = sorted(root.rglob("*.jpg"))[:n]
    raw = [p.read_bytes() for p in files]
    images = [Image.open(io.BytesIO(r)).convert("RGB") for r in raw]
    rng = np.random.default_rng(0)
    boxes = [tuple(int(v) for v in random_crop_box(*im.size, rng)) for im in images]
    pixels = [torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images]

    def pillow_decode() -> None:  # to an array, as the torch resize needs
        for r in raw:
            np.asarray(Image.open(io.BytesIO(r)))

    def libjpeg_decode() -> None:
        for r in raw:
            decode_jpeg(torch.frombuffer(bytearray(r), dtype=torch.uint8))

    def pillow_resize() -> None:
        for im, (x, y, w, h) in zip(images, boxes, strict=True):
            im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h))

    def torch_resize() -> None:
        for p, (x, y, w, h) in zip(pixels, boxes, strict=True):
            crop = p[None, :, y : y + h, x : x + w].contiguous(memory_format=torch.channels_last)
            F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", antialias=True)

    from selfsup.data import decode

    spec = decode.DecodeSpec(SIZE, scale=(0.08, 1.0))
    libjpeg = decode.decode_jpeg

    def selfsup_crop() -> None:
        for i, r in enumerate(raw):
            decode.decode_crop(r, spec, np.random.default_rng(i))

    def selfsup_crop_pillow_only() -> None:
        decode.decode_jpeg = None
        try:
            selfsup_crop()
        finally:
            decode.decode_jpeg = libjpeg

    out = {}
    for fn in (pillow_decode, libjpeg_decode, pillow_resize, torch_resize, selfsup_crop,
               selfsup_crop_pillow_only):  # fmt: skip
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[f"{fn.__name__}_ms"] = 1e3 * best / len(files)
    return out


def child(args: argparse.Namespace) -> None:
    if args.child == "stages":
        print(json.dumps(stage_timings(Path(args.folder))))
        return
    run = {"torchvision": run_torchvision, "selfsup": run_selfsup}[args.child]
    seen, seconds = run(Path(args.folder), args.batch_size, args.workers)
    print(json.dumps({"images": seen, "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--folder", default="/tmp/selfsup-bench-jpegs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "input_pipeline.json"))
    p.add_argument("--child", choices=["torchvision", "selfsup", "stages"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    folder = Path(args.folder)
    info = make_folder(folder, args.images)
    read_all(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}

    def measure(name: str) -> dict:
        command = [sys.executable, __file__, "--child", name, "--folder", str(folder),
                   "--batch-size", str(args.batch_size),
                   "--workers", str(args.workers)]  # fmt: skip
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["images_per_second"] = result["images"] / result["seconds"]
        print(f"{name:>12}: {result['images_per_second']:7.1f} images/s "
              f"({result['images']} in {result['seconds']:.1f} s)", flush=True)  # fmt: skip
        return result

    rounds: dict[str, list[dict]] = {"torchvision": [], "selfsup": []}
    measure("selfsup")  # warm-up: imports, page cache
    for _ in range(args.rounds):
        for name in rounds:
            rounds[name].append(measure(name))
    median = {k: statistics.median(r["images_per_second"] for r in v) for k, v in rounds.items()}
    stages = json.loads(subprocess.run(
        [sys.executable, __file__, "--child", "stages", "--folder", str(folder)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1])  # fmt: skip
    print("per image, one thread: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    ratios = [s["images_per_second"] / t["images_per_second"]
              for s, t in zip(rounds["selfsup"], rounds["torchvision"], strict=True)]  # fmt: skip
    record = {
        "benchmark": "input_pipeline",
        "command": "python benchmarks/bench_input_pipeline.py " + " ".join(sys.argv[1:]),
        "folder": info,
        "image_size": SIZE,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "median_images_per_second": median,
        "speedup_of_medians": median["selfsup"] / median["torchvision"],
        "speedup_per_round": ratios,
        "rounds": rounds,
        "stages_ms_per_image": stages,
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },  # fmt: skip
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"selfsup / torchvision: {record['speedup_of_medians']:.2f}x (per round: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"); wrote {args.out}"
    )


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
