"""The ab soft encoding's nearest-bin search: six candidates vs the 5 x 5 window vs all bins.

Colorization and split-brain soft-encode the true ab of every target pixel on the 261 in-gamut
bins (the 5 nearest, :func:`selfsup.methods.lab_pretext.soft_encode`). This benchmark times
:class:`~selfsup.methods.lab_pretext.GridIndex`'s search on the ab of real CIFAR-10 images,
average-pooled to the recipes' 16 x 16 targets (``target_downsample: 2``), one batch at a time:
``six``: ``GridIndex.nearest`` (six candidates per value, the window where that does not settle
it); ``window``: the 5 x 5 window alone (what the search examined before the six candidates; it
now also masks grid points off the table one by one, which makes it a little slower than the
previous code was); ``all``: every bin. Rounds interleaved in one process, median reported;
the three give the same distances (checked here).

Then, with ``--step-methods`` (default: colorization and split-brain), the method's whole
training step (the harness of ``bench_method_steps.py``, batch ``--batch-size``, its CIFAR CPU
recipe) with the soft encoding searching six candidates vs the window alone, the two ways
alternating round by round in one process (``--step-rounds`` rounds of ``--steps`` steps, the
median img/s reported), at each of ``--precisions``.

Usage: python benchmarks/bench_grid_index.py --threads 2
Writes benchmarks/results/grid_index.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_method_steps as harness  # noqa: E402

from selfsup.augment.color import rgb_to_lab  # noqa: E402
from selfsup.data import load_source  # noqa: E402
from selfsup.methods.lab_pretext import GridIndex, _nearest_all, ab_bins  # noqa: E402
from selfsup.utils.io import write_json  # noqa: E402


class WindowOnly:
    """A :class:`GridIndex` that always searches the 5 x 5 window (the ``window`` way)."""

    def __init__(self, index: GridIndex) -> None:
        self.index = index

    def nearest(self, v: torch.Tensor, c: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        return self.index._nearest_in_window(v, c, k)


def step_rows(args: argparse.Namespace) -> list[dict]:
    """img/s of each method's step with the six-candidate search vs the window alone."""
    from selfsup.methods.lab_pretext import SoftBins
    from selfsup.utils.allocator import heap_cache

    device = torch.device("cpu")
    images, labels, _ = harness.load_data(512, device)
    rows = []
    for precision in args.precisions:
        for name in args.step_methods:
            opts = argparse.Namespace(batch_size=args.batch_size, width=None, precision=precision)
            bench = harness.build_bench(name, f"{name}_cifar10_cpu", opts, device, images, labels)
            bins = [m for m in bench.method.modules()
                    if isinstance(m, SoftBins) and isinstance(m.index, GridIndex)]  # fmt: skip
            six = [m.index for m in bins]
            ways = {"six": six, "window": [WindowOnly(i) for i in six]}

            def use(indexes: list, bins: list = bins) -> None:
                for m, i in zip(bins, indexes, strict=True):
                    m.index = i

            with heap_cache():
                times = harness.interleaved_rounds(
                    {w: (lambda i=i: use(i)) for w, i in ways.items()},
                    bench.step, args.step_rounds, args.steps, device,
                )  # fmt: skip
            use(six)
            img_s = {w: args.batch_size / statistics.median(t) for w, t in times.items()}
            rows.append({"method": name, "precision": precision, "img_s": img_s,
                         "speedup": img_s["six"] / img_s["window"],
                         "seconds_per_step": times})  # fmt: skip
            print(f"{name:13s} {precision}: six {img_s['six']:6.0f} img/s, window "
                  f"{img_s['window']:6.0f} img/s ({img_s['six'] / img_s['window']:.3f}x)",
                  flush=True)  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--step-methods", nargs="*", default=["colorization", "split_brain"])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--step-rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results/grid_index.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    source = load_source("cifar10")
    images = torch.from_numpy(np.asarray(source.images[: args.batch_size])).float().div(255)
    if images.shape[-1] == 3:  # NHWC on disk
        images = images.permute(0, 3, 1, 2)
    ab = F.avg_pool2d(rgb_to_lab(images)[:, 1:], 2)  # the 16 x 16 targets
    values = ab.permute(0, 2, 3, 1).reshape(-1, 2).contiguous()
    bins = ab_bins()
    index = GridIndex(bins, 10.0)
    searches = {
        "six": lambda: index.nearest(values, bins, 5),
        "window": lambda: index._nearest_in_window(values, bins, 5),
        "all": lambda: _nearest_all(values, bins, 5),
    }
    found = {name: search()[0] for name, search in searches.items()}
    assert all(torch.equal(found["all"], d2) for d2 in found.values()), "searches disagree"
    times: dict[str, list[float]] = {name: [] for name in searches}
    for _ in range(args.rounds):
        for name, search in searches.items():
            start = time.perf_counter()
            for _ in range(args.repeats):
                search()
            times[name].append((time.perf_counter() - start) / args.repeats * 1e3)
    ms = {name: statistics.median(t) for name, t in times.items()}
    for name, t in ms.items():
        print(f"{name:7s} {t:7.2f} ms per batch ({ms['window'] / t:.2f}x the window's speed)")
    machine = harness.machine_info(torch.device("cpu"), args.threads)
    out = {"pixels": values.shape[0], "batch_size": args.batch_size, "target_size": 16,
           "k": 5, "rounds": args.rounds, "repeats": args.repeats, "ms_median": ms,
           "ms_per_round": times, "steps": step_rows(args), "machine": machine}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), out)


if __name__ == "__main__":
    main()
