"""benchmarks/chaos.py end to end with 2 kill -9 / --resume cycles: the checkpoint each kill
leaves and the finished run are bit-identical to the uninterrupted run, with exact logs, and
the result file says so. Four process starts of `selfsup train` (a minute or more on 2 busy
cores), hence slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "chaos.py"


@pytest.mark.slow
def test_two_kill_and_resume_cycles_are_bit_identical_with_exact_logs(tmp_path):
    results = tmp_path / "chaos.json"
    cmd = [sys.executable, str(SCRIPT), "--cycles", "2", "--epochs", "2", "--seed", "1",
           "--work", str(tmp_path / "runs"), "--results", str(results)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "2/2 bit-identical, logs exact"
    result = json.loads(results.read_text())
    assert result["cycles"] == result["cycles_passed"] == 2 and result["finished_run_passed"]
    assert result["steps_per_run"] == 12  # 96 pictures / batch 16 x 2 epochs
    for cycle in result["cycle_details"]:
        assert cycle["weights_identical"] and cycle["logs_exact"]
        assert cycle["last_logged"] < 12  # killed before the end
    finished = result["finished_run"]
    assert finished["weights_identical"] and finished["logs_exact"] and not finished["problems"]
