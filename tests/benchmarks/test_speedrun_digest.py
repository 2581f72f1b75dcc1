"""benchmarks/speedrun.py keeps its logs right. Finals of different recipes stay apart: every
final row records the digest of its recipe's content, and a budget whose rows ran another
recipe is refused until ``--supersede`` moves them away. Rows that two runs add at once are
both kept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
bench = pytest.importorskip("speedrun")


def test_recipe_digest_follows_the_resolved_config(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    recipe = tmp_path / "r.yaml"
    monkeypatch.setattr(bench, "resolve_recipe", lambda name: recipe)
    recipe.write_text("method: simclr\ntrain:\n  batch_size: 256\n")
    first = bench.recipe_digest(5)
    recipe.write_text("# a comment\nmethod: simclr\ntrain: {batch_size: 256}\n")
    assert bench.recipe_digest(5) == first
    # stating a default the recipe relied on resolves to the same run (the text differs)
    recipe.write_text("method: simclr\ntrain: {batch_size: 256}\nmethod_args: {proj_layers: 2}\n")
    assert bench.recipe_digest(5) == first
    # a value the trainer would see differently changes it, in the recipe's sections or in
    # the method's own config
    recipe.write_text("method: simclr\ntrain:\n  batch_size: 128\n")
    assert bench.recipe_digest(5) != first
    recipe.write_text("method: simclr\ntrain: {batch_size: 256}\nmethod_args: {proj_layers: 3}\n")
    assert bench.recipe_digest(5) != first


def test_stale_rows_are_other_digests_or_none_of_that_budget() -> None:
    rows = [{"name": "5min_s0", "minutes": 5, "recipe_digest": "aaa"},
            {"name": "5min_s1", "minutes": 5, "recipe_digest": "bbb"},
            {"name": "5min_s2", "minutes": 5},
            {"name": "15min_s0", "minutes": 15, "recipe_digest": "bbb"}]  # fmt: skip
    assert bench.stale_rows(rows, 5, "aaa") == ["5min_s1", "5min_s2"]
    assert bench.stale_rows(rows, 15, "bbb") == []
    assert bench.stale_rows(rows, 30, "aaa") == []


def test_shipped_speedrun_rows_match_the_shipped_recipes() -> None:
    """The committed finals were run with today's recipes (else BENCHMARKS quotes stale rows).

    A new option of the method or trainer changes every digest, even with a default that keeps
    the old behaviour: check that it does, then re-key the rows (``recipe_digest`` in
    ``speedrun.json`` says when that was done and why), or rerun the finals."""
    import json

    data = json.loads((ROOT / "benchmarks/results/speedrun.json").read_text())
    for minutes in sorted({r["minutes"] for r in data["rows"]}):
        assert bench.stale_rows(data["rows"], minutes, bench.recipe_digest(minutes)) == []


def test_rows_two_runs_add_at_once_are_both_kept(tmp_path: Path) -> None:
    """A search runs its rows in pairs, side by side: when both finish together, the second
    to write adds its row to the first one's, not to the log as it read it earlier."""
    import threading
    import time

    path = tmp_path / "log.json"
    entered = threading.Event()

    def first() -> None:
        with bench._locked(path) as data:
            entered.set()
            time.sleep(0.3)  # the other run finishes meanwhile
            data["rows"].append("first")

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait()
    with bench._locked(path) as data:
        data["rows"].append("second")
    thread.join()
    assert bench._load(path)["rows"] == ["first", "second"]
