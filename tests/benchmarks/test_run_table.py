"""benchmarks/run_table.py end to end on scikit-learn's digits at a tiny budget: the table's
rows and columns, the per-cell eval JSON, resuming without retraining, adopting a finished run
of the same config from another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "run_table.py"
TINY = ["data.source=digits", "data.subset=null", "eval_data.source=digits",
        "backbone.name=resnet_tiny", "train.batch_size=64", "train.epochs=1",
        "train.tensorboard=false"]  # fmt: skip


def _run(tmp: Path, *only: str, reuse: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), "--threads", "1", "--out", str(tmp / "runs"),
           "--results", str(tmp / "table.json"), "--markdown", str(tmp / "table.md"),
           "--data", "digits", "--linear-epochs", "3", "--robustness-images", "16",
           "--pretext-images", "32", "--reuse", *([str(reuse)] if reuse else []),
           "--only", *only, "--overrides", *TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp, env=env)


@pytest.mark.slow
def test_table_rows_resume_and_adopt(tmp_path: Path) -> None:
    first = _run(tmp_path, "simclr", "rotation", "random")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert set(rows) == {"simclr", "rotation", "random"}
    for name in ("simclr", "rotation"):
        r = rows[name]
        assert 0 < r["knn@200"] <= 1 and 0 < r["linear_top1"] <= 1
        assert 0 < r["mean_corruption_top1"] <= r["clean_top1"] + 0.2
        assert r["pretext_value"] is not None and r["peak_rss_mib"] > 0
        assert r["train_images_per_second"] > 0 and r["images_seen"] > 0
    assert rows["simclr"]["pretext_metric"] == "positive_retrieval_top1"
    assert rows["rotation"]["pretext_metric"] == "rotation_accuracy"
    assert rows["random"]["pretext_value"] is None
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0].startswith("| method | pretext metric | kNN@200 | kNN@20 | linear | mCA")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["simclr", "rotation", "random"]
    assert len(list((tmp_path / "runs" / "eval").glob("*.json"))) == 3

    # a second call trains and evaluates nothing again
    summary = tmp_path / "runs" / "simclr" / "summary.json"
    mtime = summary.stat().st_mtime_ns
    again = _run(tmp_path, "simclr", "rotation", "random")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "simclr: done already" in again.stdout and "rotation: done already" in again.stdout
    assert summary.stat().st_mtime_ns == mtime

    # a finished run of the same config elsewhere is adopted, not retrained
    other = tmp_path / "other"
    other.mkdir()
    adopted = _run(other, "simclr", reuse=tmp_path / "runs")
    assert adopted.returncode == 0, adopted.stderr[-3000:]
    assert "simclr: adopted the finished run" in adopted.stdout
    assert (other / "runs" / "simclr").is_symlink()
    assert summary.stat().st_mtime_ns == mtime
