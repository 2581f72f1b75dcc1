"""Chaos test: kill -9 a training run again and again at random moments, resume it each time,
and check that it stays exactly the uninterrupted run.

A reference run trains a small SimCLR (resnet_tiny, fp32, 1 thread, a checkpoint every 2
steps, all kept) on generated 16x16 pictures in one go. The chaos run trains the same config
as a chain of ``python -m selfsup train ... --resume`` processes (keeping the last 2
checkpoints). Each of ``--cycles`` cycles starts one and kills it with SIGKILL: mostly once
it has logged a random step 1-4 steps ahead (plus 0-0.3 s, so kills land mid-step, mid-log
and mid-checkpoint-write), sometimes a random 0.5-6 s after it started (in start-up, the
resume, or the first steps). After each kill, the cycle passes when

* the newest complete checkpoint is bit-identical (every tensor of ``model.safetensors``,
  ``torch.equal``) to the reference's checkpoint of the same step, and
* ``metrics.jsonl`` holds, up to that step, exactly one row per logged step, each equal to
  the reference's (loss and metrics bit for bit; timing fields aside). Rows logged after the
  checkpoint may remain; the next resume must drop them, which the next cycle checks.

A last process finishes the run, which passes when its final ``encoder.safetensors`` and last
checkpoint are bit-identical to the reference's, ``metrics.jsonl`` has exactly the
reference's rows (one per step), and ``summary.json``'s ``segments`` chain without gap or
overlap from step 0 to the end, their ``steps`` and ``seconds`` adding up to the totals.

Usage: python benchmarks/chaos.py --cycles 10
Prints "N/N bit-identical, logs exact" when every cycle and the finished run pass, and writes
benchmarks/results/chaos.json. Exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TIMING_FIELDS = {"images_per_second", "seconds", "time", "elapsed_seconds", "started"}
"""Fields of a metrics row that measure time, so differ between any two runs."""


def make_pictures(path: Path, n: int = 96, size: int = 16, seed: int = 0) -> None:
    """A tiny ``.npz`` data set: ``images`` uint8 (n, size, size, 3) of coloured stripes with
    noise, ``labels`` int64 (n,) (4 classes; training does not read them)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    yy, xx = np.mgrid[0:size, 0:size]
    palette = rng.uniform(40, 215, size=(4, 3))
    images = np.empty((n, size, size, 3), dtype=np.float32)
    for i, c in enumerate(labels):
        stripes = np.sin((xx if c % 2 else yy) * (0.6 + 0.3 * (c // 2)) + rng.uniform(0, 6))
        images[i] = palette[c] + 35 * stripes[..., None] + rng.normal(0, 12, (size, size, 3))
    np.savez(path, images=np.clip(images, 0, 255).astype(np.uint8), labels=labels)


def train_command(data: Path, out_dir: Path, epochs: int, keep_last: int = 2) -> list[str]:
    """``python -m selfsup train simclr`` on ``data`` into ``out_dir``: batch 16, fp32, one
    thread, a checkpoint every 2 steps (the last ``keep_last`` kept), a metrics row every
    step."""
    return [
        sys.executable, "-m", "selfsup", "train", "simclr",
        f"data.source={data}", f"out_dir={out_dir}", "eval_data.source=null",
        "backbone.name=resnet_tiny", "train.batch_size=16", f"train.epochs={epochs}",
        "train.precision=fp32", "train.num_threads=1", "train.progress=false",
        "train.tensorboard=false", "train.log_every_steps=1", "train.checkpoint_every_steps=2",
        f"train.keep_last={keep_last}", "train.knn_monitor.every_epochs=0",
        "train.pictures_every_epochs=0",
        "method_args.proj_hidden_dim=32", "method_args.proj_out_dim=16",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the kill (the reader drops it on resume)
            pass
    return rows


def _step_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The per-step rows (loss and method metrics), without their timing fields."""
    return [
        {k: v for k, v in r.items() if k not in TIMING_FIELDS}
        for r in _rows(run_dir)
        if "loss" in r and "event" not in r
    ]


def _last_logged_step(run_dir: Path) -> int:
    steps = [r["step"] for r in _step_rows(run_dir)]
    return max(steps, default=0)


@dataclass
class Cycle:
    """One process of the chaos run, killed with SIGKILL, and what the kill left."""

    mode: str  # "step": after a logged step (+ a random delay); "time": after a random delay
    resumed_from: int  # the newest checkpoint's step when the process started
    last_logged: int  # the newest logged step when it was killed
    checkpoint: int  # the newest complete checkpoint's step after the kill
    mid_checkpoint: bool  # this process left a half-written checkpoint directory behind
    weights_identical: bool = False
    logs_exact: bool = False

    @property
    def passed(self) -> bool:
        return self.weights_identical and self.logs_exact


def _newest_checkpoint(run_dir: Path) -> Path | None:
    from selfsup.utils.io import latest_checkpoint

    return latest_checkpoint(run_dir) if (run_dir / "checkpoints").exists() else None


def _same_tensors(a_path: Path, b_path: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    a, b = load_file(str(a_path)), load_file(str(b_path))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_cycle(command: list[str], run: Path, reference: Path, rng: random.Random) -> Cycle:
    """Start ``command`` (a resume of ``run``), SIGKILL it at a random moment before the run
    ends, and compare what is left with the ``reference`` run."""
    expected = _step_rows(reference)
    total = len(expected)
    before = _newest_checkpoint(run)
    resumed_from = int(before.name.split("_")[1]) if before else 0
    launched = time.time()
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    if rng.random() < 0.25:
        mode = "time"  # anywhere from start-up to the first few steps (not past the end)
        deadline = time.time() + rng.uniform(0.5, 6.0)
        while proc.poll() is None and time.time() < deadline:
            if _last_logged_step(run) >= total - 1:
                break
            time.sleep(0.005)
    else:
        mode = "step"
        target = min(total - 1, max(_last_logged_step(run), resumed_from) + rng.randint(1, 4))
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if _last_logged_step(run) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
        raise RuntimeError(f"the run ended (exit {proc.returncode}) before it could be killed; "
                           f"give it more --epochs ({run})")  # fmt: skip
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # a ``.step_*.partial`` directory this process was writing (not one an earlier kill left)
    partial = any(p.stat().st_mtime >= launched for p in (run / "checkpoints").glob(".*.partial"))
    after = _newest_checkpoint(run)
    step = int(after.name.split("_")[1]) if after else 0
    cycle = Cycle(mode, resumed_from, _last_logged_step(run), step, partial)
    if after is None:  # killed before the first checkpoint: nothing to compare yet
        cycle.weights_identical = True
    else:
        cycle.weights_identical = _same_tensors(
            reference / "checkpoints" / after.name / "model.safetensors",
            after / "model.safetensors",
        )
    kept = [r for r in _step_rows(run) if r["step"] <= step]
    cycle.logs_exact = kept == expected[:step]
    return cycle


def _check_segments(run_dir: Path, total: int, batch: int) -> tuple[int, list[str]]:
    """(number of segments, problems) of the finished run's ``summary.json``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    segments = summary["segments"]
    problems = []
    expected_start = 0
    for s in segments:
        if s["start_step"] != expected_start:
            problems.append(f"a segment starts at {s['start_step']}, expected {expected_start}")
        if s["steps"] != s["end_step"] - s["start_step"] or s["steps"] <= 0:
            problems.append(f"segment {s} has inconsistent steps")
        expected_start = s["end_step"]
    if expected_start != total or sum(s["steps"] for s in segments) != total:
        problems.append(f"the segments end at {expected_start}, the run at {total}")
    if abs(summary["seconds"] - sum(s["seconds"] for s in segments)) > 1e-6:
        problems.append("summary seconds is not the sum of the segments'")
    if summary["images_seen"] != total * batch or summary["steps"] != total:
        problems.append("summary steps / images_seen do not cover the whole run")
    return len(segments), problems


def finish_and_compare(command: list[str], run: Path, reference: Path) -> dict[str, Any]:
    """Run ``command`` (the last resume) to the end and compare with ``reference``."""
    expected = _step_rows(reference)
    total = len(expected)
    done = subprocess.run(command, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        return {"passed": False, "problems": [f"the last resume failed: {done.stderr[-1500:]}"]}
    final = f"checkpoints/step_{total:08d}/model.safetensors"
    identical = _same_tensors(reference / "encoder.safetensors", run / "encoder.safetensors")
    identical = identical and _same_tensors(reference / final, run / final)
    rows = _step_rows(run)
    exact = rows == expected and [r["step"] for r in rows] == list(range(1, total + 1))
    segments, problems = _check_segments(run, total, batch=16)
    if not identical:
        problems.append("final weights differ from the uninterrupted run's")
    if not exact:
        problems.append(f"metrics.jsonl steps {[r['step'] for r in rows]} differ")
    return {"passed": not problems, "weights_identical": identical, "logs_exact": exact,
            "segments": segments, "problems": problems}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10, help="kill -9 / --resume cycles")
    parser.add_argument("--epochs", type=int, default=8, help="of 96 pictures, 6 steps each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="run directories (default: temp)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/chaos.json")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="selfsup-chaos-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "pictures.npz"
        make_pictures(data)
        reference, run = work / "reference", work / "chaos"
        done = subprocess.run(train_command(data, reference, args.epochs, keep_last=10_000),
                              env=_env(), capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        total_steps = len(_step_rows(reference))
        command = [*train_command(data, run, args.epochs), "--resume"]
        cycles = []
        for i in range(args.cycles):
            cycle = kill_cycle(command, run, reference, rng)
            cycles.append(cycle)
            print(f"cycle {i + 1}/{args.cycles}: resumed from step {cycle.resumed_from}, "
                  f"killed ({cycle.mode}) after logging step {cycle.last_logged}"
                  f"{' mid-checkpoint' if cycle.mid_checkpoint else ''}, newest checkpoint "
                  f"{cycle.checkpoint}: weights "
                  f"{'identical' if cycle.weights_identical else 'DIFFER'}"
                  f", logs {'exact' if cycle.logs_exact else 'NOT exact'}", flush=True)  # fmt: skip
        final = finish_and_compare(command, run, reference)
        print(
            f"finished: {final['segments'] if 'segments' in final else '?'} segments, "
            f"{'ok' if final['passed'] else 'FAILED: ' + '; '.join(final['problems'])}"
        )
    n = len(cycles)
    identical = sum(c.weights_identical for c in cycles) if final["passed"] else 0
    exact = all(c.logs_exact for c in cycles) and final["passed"]
    line = f"{identical}/{n} bit-identical, logs {'exact' if exact else 'NOT exact'}"
    print(line)
    result = {
        "result": line,
        "cycles": n,
        "cycles_passed": sum(c.passed for c in cycles),
        "finished_run_passed": final["passed"],
        "steps_per_run": total_steps,
        "kills_mid_checkpoint": sum(c.mid_checkpoint for c in cycles),
        "kills_by_time": sum(c.mode == "time" for c in cycles),
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/chaos.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },  # fmt: skip
        "cycle_details": [{**asdict(c), "passed": c.passed} for c in cycles],
        "finished_run": final,
    }
    import torch

    result["machine"]["torch"] = torch.__version__
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if exact and identical == n else 1


if __name__ == "__main__":
    sys.exit(main())
