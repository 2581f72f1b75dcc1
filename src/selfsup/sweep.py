"""Hyperparameter sweeps: train one run per cell of a grid of config values, evaluate each
encoder, and tabulate and plot the results.

A grid maps config key paths to the values to try (``method_args.temperature=0.1,0.2``). Every
cell of the Cartesian product is one run in ``OUT/<cell name>``, trained with the recipe, the
fixed ``key=value`` overrides and the cell's values. Every cell's config is validated before
anything trains. ``OUT/sweep.json`` is rewritten (atomically) after each cell, so a killed sweep
loses at most the cell that was running; the same command continues it: finished cells are
skipped, a finished run is evaluated without retraining, an interrupted one resumes from its
last checkpoint. At the end ``OUT/sweep.md`` holds a Markdown table (best value in bold) and
``OUT/sweep.png`` a plot of the chosen metric.

Example::

    grid = parse_grid(["method_args.temperature=0.1,0.5"])
    data = load_eval_data("cifar10", test_subset=2000)
    rows = run_sweep("simclr", "simclr_cifar10_cpu", grid, Path("runs/sweep"), data=data)
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selfsup.config import RunConfig, load_config
from selfsup.errors import ConfigError
from selfsup.evaluate.protocols import EvalData

METRICS = {"knn": ("knn@200", "knn@20"), "linear": ("linear_top1",)}
"""The metrics each evaluation protocol adds to a row."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=,]")


@dataclass(frozen=True)
class SweepCell:
    """One planned run of a sweep: its grid values, directory name and validated config."""

    cell: dict[str, str]
    name: str
    run_dir: Path
    config: RunConfig


# ----------------------------------------------------------------------------- the grid


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """Parse ``key=v1,v2,...`` specs into ``{key: [v1, v2, ...]}`` (in the given order).

    Raises ``ValueError`` for a spec without ``=``, an empty key or value, a value listed twice
    for one key, or a key given twice.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"grid spec {spec!r} is not of the form key=v1,v2,...")
        key, text = (part.strip() for part in spec.split("=", 1))
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"grid spec {spec!r}: the key must be a config path like a.b.c")
        values = [v.strip() for v in text.split(",")]
        if not text.strip() or any(not v for v in values):
            raise ValueError(f"grid spec {spec!r}: empty value (give key=v1,v2,...)")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"grid spec {spec!r}: value(s) {', '.join(repeated)} given twice")
        if key in grid:
            raise ValueError(f"grid key {key!r} is given twice; list all its values in one spec")
        grid[key] = values
    return grid


def grid_cells(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """The Cartesian product of the grid: one ``{key: value}`` per cell, the first key varying
    slowest (the order of the keys and of their values is kept)."""
    keys = list(grid)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))
    ]


def cell_name(cell: dict[str, str]) -> str:
    """A readable, filesystem-safe directory name for a cell, e.g. ``temperature=0.1,lr=0.3``.

    Each key is shown by its last component, or in full when another key of the cell shares
    that last component; characters other than letters, digits and ``._+-=,`` become ``_``.
    """
    if not cell:
        raise ValueError("a sweep cell needs at least one key")
    last = [key.rsplit(".", 1)[-1] for key in cell]
    parts = []
    for (key, value), short in zip(cell.items(), last, strict=True):
        shown = key if last.count(short) > 1 else short
        parts.append(f"{shown}={value}")
    name = _UNSAFE.sub("_", ",".join(parts))
    return "_" + name if name.startswith(".") else name


# ----------------------------------------------------------------------------- planning


def plan_sweep(
    method: str,
    recipe: str | None,
    grid: dict[str, list[str]],
    out_dir: Path,
    overrides: Sequence[str] = (),
) -> list[SweepCell]:
    """Validate every cell's config (nothing is trained or written) and return the cells.

    A bad key or value raises :class:`~selfsup.errors.ConfigError` naming the key and the cell;
    an ``out_dir`` whose ``sweep.json`` is of another method/recipe/overrides, or a run
    directory that holds a run of a different config, raises ``ValueError``.
    """
    if not grid:
        raise ValueError("the sweep grid is empty: give at least one key=v1,v2,...")
    override_keys = [item.split("=", 1)[0].strip() for item in overrides]
    for key in [*override_keys, *grid]:
        if key == "out_dir":
            raise ValueError(
                "the sweep sets each run's out_dir itself; choose the folder with --out"
            )
    both = sorted(set(override_keys) & set(grid))
    if both:
        raise ValueError(f"{', '.join(both)}: given both as an override and as a grid key")
    cells = []
    names: dict[str, dict[str, str]] = {}
    for cell in grid_cells(grid):
        name = cell_name(cell)
        if name in names:
            raise ValueError(f"grid cells {names[name]} and {cell} share the directory name {name}")
        names[name] = cell
        cell_overrides = [f"{k}={v}" for k, v in cell.items()]
        try:
            cfg = load_config(method, recipe, ["train.progress=false", *overrides, *cell_overrides])
        except ConfigError as err:
            raise ConfigError(f"sweep cell {name}: {err}") from None
        run_dir = out_dir / name
        # out_dir is formatted with {method}: keep braces of the path literal
        cfg.out_dir = str(run_dir).replace("{", "{{").replace("}", "}}")
        cells.append(SweepCell(cell, name, run_dir, cfg))
    read_sweep(out_dir, method, recipe, overrides)
    for c in cells:
        _check_existing_run(c.run_dir, c.config)
    return cells


def read_sweep(
    out_dir: Path, method: str, recipe: str | None, overrides: Sequence[str]
) -> dict[str, Any] | None:
    """The ``sweep.json`` of ``out_dir`` (None when there is none); ``ValueError`` when it is
    a sweep of another method, recipe or overrides."""
    path = out_dir / "sweep.json"
    if not path.exists():
        return None
    previous: dict[str, Any] = json.loads(path.read_text())
    header = {"method": method, "recipe": recipe, "overrides": list(overrides)}
    differ = [k for k, v in header.items() if previous.get(k) != v]
    if differ:
        shown = "; ".join(f"{k} {previous.get(k)!r} there, {header[k]!r} now" for k in differ)
        raise ValueError(
            f"{out_dir} holds a sweep of another {'/'.join(differ)} ({shown}); choose another --out"
        )
    return previous


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _check_existing_run(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to reuse or resume a run directory trained with another config."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    old = _flatten(yaml.safe_load(path.read_text()) or {})
    new = _flatten(json.loads(json.dumps(cfg.model_dump(mode="json"))))
    differ = sorted(
        k for k in set(old) | set(new) if k != "out_dir" and old.get(k, "?") != new.get(k, "?")
    )
    if differ:
        raise ValueError(
            f"{run_dir} holds a run of another config (differs at {', '.join(differ[:5])}); "
            "move it away or choose another --out"
        )


# ----------------------------------------------------------------------------- running


def check_protocols(protocols: Sequence[str], metric: str) -> list[str]:
    """The metrics the protocols compute; ``ValueError`` for an unknown protocol or a
    ``metric`` that they do not compute."""
    unknown = [p for p in protocols if p not in METRICS]
    if unknown or not protocols:
        raise ValueError(f"protocols must be among {', '.join(METRICS)}, got {list(protocols)}")
    available = [m for p in protocols for m in METRICS[p]]
    if metric not in available:
        raise ValueError(
            f"metric {metric!r} is not computed by the protocols {', '.join(protocols)}; "
            f"choose one of {', '.join(available)}"
            + (" (add --protocols linear)" if metric == "linear_top1" else "")
        )
    return available


def run_sweep(
    method: str,
    recipe: str | None,
    grid: dict[str, list[str]],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    data: EvalData,
    protocols: Sequence[str] = ("knn",),
    linear_epochs: int = 100,
    metric: str = "knn@200",
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train and evaluate every cell of ``grid`` (see the module docstring); returns the rows
    of ``out_dir/sweep.json`` in grid order.

    Each row holds ``cell`` ({key: value}), ``name``, ``run_dir``, the protocols' metrics
    (``knn@200``, ``knn@20``, ``linear_top1``), the run's ``final_loss`` (its pretext loss),
    ``train_minutes`` (of the last training session), ``images_per_second``,
    ``peak_rss_mib``, ``steps``, ``images_seen`` and the ``eval`` settings.
    """
    from selfsup.pretraining import pretrain
    from selfsup.utils.io import latest_checkpoint, write_json

    out_dir = Path(out_dir)
    protocols = tuple(protocols)
    available = check_protocols(protocols, metric)
    overrides = list(overrides)
    cells = plan_sweep(method, recipe, grid, out_dir, overrides)

    header = {"method": method, "recipe": recipe, "overrides": overrides}
    path = out_dir / "sweep.json"
    previous = read_sweep(out_dir, method, recipe, overrides) or {}
    old_rows = {row["name"]: row for row in previous.get("rows", [])}
    dropped = sorted(set(old_rows) - {c.name for c in cells})
    if dropped:
        log(f"not in the grid any more (rows dropped, runs kept): {', '.join(dropped)}")

    eval_settings: dict[str, Any] = {"data": data.key, "protocols": list(protocols)}
    if "linear" in protocols:
        eval_settings["linear_epochs"] = linear_epochs
    done: dict[str, dict[str, Any]] = {}

    def save() -> list[dict[str, Any]]:
        rows = [done[c.name] for c in cells if c.name in done]
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {**header, "grid": grid, "metric": metric, "eval": eval_settings,
                          "budget": budget_text(rows), "rows": rows})  # fmt: skip
        return rows

    for i, c in enumerate(cells, 1):
        label = f"cell {c.name}"
        step = f"{label} ({i}/{len(cells)})"
        summary_path = c.run_dir / "summary.json"
        row = old_rows.get(c.name)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        if (
            row is not None
            and summary is not None
            and row.get("steps") == summary.get("steps")
            and row.get("eval") == eval_settings
        ):
            log(f"{label}: done already")
            done[c.name] = row
            continue
        if summary is None:
            resume = latest_checkpoint(c.run_dir) is not None
            log(f"{step}: {'resuming' if resume else 'training'} in {c.run_dir}")
            pretrain(c.config, resume=resume)
            summary = json.loads(summary_path.read_text())
        else:
            log(f"{step}: evaluating the finished run in {c.run_dir}")
        done[c.name] = _evaluate_cell(c, summary, data, protocols, linear_epochs, eval_settings)
        save()
        shown = ", ".join(f"{m}={done[c.name][m]:.4f}" for m in available)
        log(f"{label}: {shown}")
    rows = save()

    table = sweep_table(rows, grid, metric)
    md = out_dir / "sweep.md"
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(table)
    tmp.replace(md)
    title = f"{method} ({recipe or 'default recipe'}): {metric}, {budget_text(rows)}"
    try:
        plot_sweep(rows, grid, metric, out_dir / "sweep.png", title=title)
    except ImportError:
        log('no plot: sweep.png needs matplotlib (pip install "selfsup[plots]")')
    return rows


def _evaluate_cell(
    c: SweepCell,
    summary: dict[str, Any],
    data: EvalData,
    protocols: tuple[str, ...],
    linear_epochs: int,
    eval_settings: dict[str, Any],
) -> dict[str, Any]:
    from selfsup.evaluate import evaluate_encoder

    result = evaluate_encoder(
        str(c.run_dir), data, protocols=protocols, linear_epochs=linear_epochs
    )
    result["data"] = data.key
    with open(c.run_dir / "eval.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    metrics = {m: result[m] for p in protocols for m in METRICS[p]}
    return {
        "cell": dict(c.cell),
        "name": c.name,
        "run_dir": str(c.run_dir),
        **metrics,
        "final_loss": summary.get("final_loss"),
        "train_minutes": summary["seconds"] / 60,
        "images_per_second": summary["images_per_second"],
        "peak_rss_mib": summary.get("peak_rss_mib"),
        "steps": summary["steps"],
        "images_seen": summary.get("images_seen"),
        "eval": eval_settings,
    }


# ----------------------------------------------------------------------------- outputs


def budget_text(rows: Sequence[dict[str, Any]]) -> str:
    """The training budget of the rows, e.g. ``32 images seen (2 steps)``."""
    if not rows:
        return "no runs yet"
    steps = sorted({r["steps"] for r in rows})
    seen = sorted({r.get("images_seen") or 0 for r in rows})

    def span(values: list[int]) -> str:
        return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"

    return f"{span(seen)} images seen ({span(steps)} steps)"


def _metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [m for ms in METRICS.values() for m in ms if any(m in r for r in rows)]


def sweep_table(rows: Sequence[dict[str, Any]], grid: dict[str, list[str]], metric: str) -> str:
    """A Markdown table, one row per cell: the grid values, the metrics (the best value of
    ``metric`` in bold), steps, training minutes, images/s and peak memory."""
    metrics = _metric_columns(rows)
    best = max((r[metric] for r in rows if r.get(metric) is not None), default=None)
    head = [*grid, *metrics, "steps", "train min", "images/s", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [str(r["cell"].get(k, "")) for k in grid]
        for m in metrics:
            v = r.get(m)
            text = "" if v is None else f"{v:.4f}"
            cells.append(f"**{text}**" if m == metric and v is not None and v == best else text)
        rss = r.get("peak_rss_mib")
        cells += [
            str(r["steps"]),
            f"{r['train_minutes']:.2f}",
            f"{r['images_per_second']:.0f}",
            "" if rss is None else f"{rss:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _numbers(values: Sequence[str]) -> list[float] | None:
    try:
        out = [float(v) for v in values]
    except ValueError:
        return None
    return out if all(math.isfinite(x) for x in out) else None


def plot_sweep(
    rows: Sequence[dict[str, Any]],
    grid: dict[str, list[str]],
    metric: str,
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Plot ``metric`` over the grid to a PNG: one key, the metrics against its values (a log
    axis when they are positive numbers spanning 10x or more, else categorical); two keys, a
    heatmap with the values written in; more keys, a bar per cell. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    by_name = {r["name"]: r for r in rows}
    keys = list(grid)
    if len(keys) == 1:
        (key,) = keys
        values = grid[key]
        nums = _numbers(values)
        log_x = nums is not None and min(nums) > 0 and max(nums) / min(nums) >= 10
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        xs: list[float] = nums if log_x else list(range(len(values)))  # type: ignore[assignment]
        for m in _metric_columns(rows):
            found = [
                (x, by_name.get(cell_name({key: v}), {}).get(m))
                for x, v in zip(xs, values, strict=True)
            ]
            pts = [(x, y) for x, y in found if y is not None]
            if pts:
                px, py = zip(*pts, strict=True)
                ax.plot(px, py, marker="o", label=m, linewidth=2.5 if m == metric else 1.2)
        if log_x:
            ax.set_xscale("log")
            ax.set_xticks(nums, values)
            ax.minorticks_off()
        else:
            ax.set_xticks(xs, values)
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    elif len(keys) == 2:
        import numpy as np

        k1, k2 = keys
        grid_values = np.full((len(grid[k1]), len(grid[k2])), np.nan)
        for i, v1 in enumerate(grid[k1]):
            for j, v2 in enumerate(grid[k2]):
                r = by_name.get(cell_name({k1: v1, k2: v2}))
                if r is not None and r.get(metric) is not None:
                    grid_values[i, j] = r[metric]
        fig, ax = plt.subplots(figsize=(1.2 * len(grid[k2]) + 3, 0.8 * len(grid[k1]) + 2.5))
        image = ax.imshow(grid_values, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label=metric)
        finite = grid_values[np.isfinite(grid_values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(grid_values.shape[0]):
            for j in range(grid_values.shape[1]):
                v = grid_values[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center",
                            color="black" if v > middle else "white")  # fmt: skip
        ax.set_xticks(range(len(grid[k2])), grid[k2])
        ax.set_yticks(range(len(grid[k1])), grid[k1])
        ax.set_xlabel(k2)
        ax.set_ylabel(k1)
    else:
        names = [cell_name(c) for c in grid_cells(grid) if cell_name(c) in by_name]
        heights = [by_name[n].get(metric) or 0.0 for n in names]
        fig, ax = plt.subplots(figsize=(max(6.4, 0.5 * len(names) + 2), 4.8))
        best = max(heights, default=0.0)
        colors = ["tab:orange" if h == best else "tab:blue" for h in heights]
        ax.bar(range(len(names)), heights, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or metric, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
