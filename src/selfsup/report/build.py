"""Collect what run directories and ``selfsup eval all`` results hold, for the report.

Everything here is tolerant: a missing, empty or partly written file only adds a note to
:attr:`Column.notes`; nothing raises on bad input (except when no output can be written).

A :class:`Column` is one run directory or one evaluation result that matched no run (a
``random:...`` baseline, an encoder file); :func:`metric_rows` turns the columns into the rows
of the comparison table; :func:`selfsup.report.build_report` writes ``index.html`` and
``report.md``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_PICTURES_PER_COLUMN = 12
"""Pictures embedded per run or baseline (the latest of each kind first)."""
MAX_PICTURE_BYTES = 8 * 2**20
"""Larger PNGs are linked from the Markdown only, not embedded in the HTML."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_STEP_TAG = re.compile(r"_step(\d+)$")


@dataclass
class Picture:
    """A PNG to show: ``path`` on disk, ``name`` (caption), ``asset`` (path under out_dir)."""

    path: Path
    name: str
    asset: str = ""


@dataclass
class Column:
    """One column of the report: a run directory or a stand-alone evaluation result."""

    name: str
    kind: str  # "run" or "baseline"
    path: Path | None = None
    config_text: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    losses: list[tuple[float, float]] = field(default_factory=list)
    online_knn: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        """The name as a file-name-safe string."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name) or "column"

    @property
    def result(self) -> dict[str, Any]:
        """The evaluation results merged, later ones winning axis by axis."""
        merged: dict[str, Any] = {}
        for row in self.evals:
            merged.update(row)
        return merged


@dataclass
class Row:
    """One table row: a metric's ``label``, its value per column (``None``: missing), how to
    ``fmt`` a value, and which value is best (``better``: "max", "min" or ``None``)."""

    section: str
    label: str
    values: list[Any]
    fmt: Callable[[Any], str]
    better: str | None = None

    def best(self) -> set[int]:
        """Indices of the best values (ties included); empty with fewer than two numbers."""
        numeric = [(i, float(v)) for i, v in enumerate(self.values) if _finite(v)]
        if self.better is None or len(numeric) < 2:
            return set()
        target = (max if self.better == "max" else min)(v for _, v in numeric)
        best = {i for i, v in numeric if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12)}
        return set() if len(best) == len(numeric) else best  # all equal: no winner


# -- reading files -----------------------------------------------------------------------------


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_text(path: Path, notes: list[str]) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        notes.append(f"cannot read {path.name}: {e}")
        return None


def _read_json(path: Path, notes: list[str]) -> Any:
    text = _read_text(path, notes)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        notes.append(f"{path.name} is not valid JSON ({e}); ignored")
        return None


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    text = _read_text(path, notes)
    if text is None:
        return []
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return rows


def _series(points: Iterable[tuple[Any, Any]]) -> list[tuple[float, float]]:
    """Finite (x, y) points sorted by x, the last value kept for a repeated x (resumed runs)."""
    by_x: dict[float, float] = {}
    for x, y in points:
        if _finite(x) and _finite(y):
            by_x[float(x)] = float(y)
    return sorted(by_x.items())


def _parse_metrics(col: Column, rows: list[dict[str, Any]]) -> None:
    losses, knn = [], {}
    for row in rows:
        if "event" in row:
            col.events.append(row)
            continue
        step = row.get("step")
        if "loss" in row and step is not None:
            losses.append((step, row["loss"]))
        for key, value in row.items():
            if key.startswith("online_knn@") and step is not None:
                knn.setdefault(key, []).append((step, value))
    col.losses = _series(losses)
    col.online_knn = {k: s for k, s in sorted(knn.items(), key=_knn_order) if s}


def _knn_order(item: tuple[str, Any]) -> tuple[int, str]:
    k = item[0].rsplit("@", 1)[-1]
    return (-int(k) if k.isdigit() else 0, item[0])


def _normalise_eval(row: dict[str, Any]) -> dict[str, Any]:
    """Single-protocol ``selfsup eval`` rows in the shape of an ``eval all`` result."""
    protocol = row.get("protocol")
    if protocol == "finetune":
        return {"encoder": row.get("encoder"), "data": row.get("data"), "finetune": row}
    if protocol == "low_label":
        return {"encoder": row.get("encoder"), "data": row.get("data"), "low_label": row}
    if isinstance(row.get("pictures"), list) and "axes" not in row:  # ``selfsup eval pretext``
        skip = {"images", "seconds"}
        pretext = {k: v for k, v in row.items() if _finite(v) and k not in skip}
        return {
            "encoder": row.get("encoder"),
            "method": row.get("method"),
            "pretext": pretext,
            "pictures": {Path(str(p)).stem: str(p) for p in row["pictures"]},
        }
    return row


def _pictures_of_run(run_dir: Path) -> list[Picture]:
    folder = run_dir / "pictures"
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob("*.png") if p.is_file())
    return [Picture(p, p.stem) for p in files]


def _choose_pictures(pictures: list[Picture], cap: int) -> tuple[list[Picture], int]:
    """At most ``cap`` pictures: the latest step of each kind first, then older steps (newest
    first). Returns the chosen ones (in a stable order) and how many were left out."""
    unique: dict[Path, Picture] = {}
    for p in pictures:
        unique.setdefault(p.path.resolve(), p)
    groups: dict[str, list[tuple[int, Picture]]] = {}
    for p in unique.values():
        m = _STEP_TAG.search(p.name)
        key = p.name[: m.start()] if m else p.name
        groups.setdefault(key, []).append((int(m.group(1)) if m else -1, p))
    for members in groups.values():
        members.sort(key=lambda t: t[0], reverse=True)
    ranked: list[Picture] = []
    depth = 0
    while len(ranked) < len(unique):
        for key in sorted(groups):
            if depth < len(groups[key]):
                ranked.append(groups[key][depth][1])
        depth += 1
    chosen = ranked[:cap]
    return chosen, len(ranked) - len(chosen)


def _resolve_picture(raw: str, bases: Sequence[Path]) -> Path | None:
    """``raw`` as written by ``eval all`` (usually relative to where it ran), looked for as
    given, below each of ``bases``, and by its last two / one path parts below them."""
    p = Path(raw)
    candidates = [p] if p.is_absolute() else [p, *(b / p for b in bases)]
    tail = p.parts[-3:]
    for n in (3, 2, 1):
        if len(tail) >= n:
            candidates += [b / Path(*tail[-n:]) for b in bases]
    for c in candidates:
        try:
            if c.is_file():
                return c
        except OSError:
            continue
    return None


def load_run(run_dir: Path | str) -> Column:
    """A :class:`Column` from one run directory (every file optional)."""
    run_dir = Path(run_dir)
    col = Column(name=run_dir.resolve().name or str(run_dir), kind="run", path=run_dir)
    col.sources.append(str(run_dir))
    if not run_dir.is_dir():
        col.notes.append(f"{run_dir} is not a directory")
        return col
    col.config_text = _read_text(run_dir / "config.yaml", col.notes)
    summary = _read_json(run_dir / "summary.json", col.notes)
    _parse_metrics(col, _read_jsonl(run_dir / "metrics.jsonl", col.notes))
    if isinstance(summary, dict):
        col.summary = summary
    else:
        if summary is not None:
            col.notes.append("summary.json is not a JSON object; ignored")
        ends = [e for e in col.events if e.get("event") == "end"]
        if ends:  # an interrupted write of summary.json: the same numbers are logged at the end
            col.summary = {k: v for k, v in ends[-1].items() if k not in ("event", "step")}
    for row in _read_jsonl(run_dir / "eval.jsonl", col.notes):
        col.evals.append(_normalise_eval(row))
    col.pictures = _pictures_of_run(run_dir)
    missing = [
        f for f in ("config.yaml", "summary.json", "metrics.jsonl") if not (run_dir / f).exists()
    ]
    if missing:
        col.notes.append("missing: " + ", ".join(missing))
    return col


def _eval_files(paths: Iterable[Path | str], notes: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(f for f in p.glob("*.json") if f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            notes.append(f"--eval {p}: no such file or directory")
    return files


def _encoder_names(spec: str) -> list[str]:
    """Names a result's ``encoder`` spec may match a run by: the directory's name for a run
    directory, the containing directories' names for a file inside one."""
    if spec.startswith("random:"):
        return []
    p = Path(spec.rstrip("/"))
    names = [p.name]
    if p.suffix:  # RUN/encoder.safetensors, RUN/checkpoints/step.pt
        names = [p.parent.name] + ([p.parent.parent.name] if p.parent.name == "checkpoints" else [])
    return [n for n in names if n not in ("", ".", "..")]


def _match(spec: str, runs: list[Column]) -> Column | None:
    if not spec or spec.startswith("random:"):
        return None
    target = Path(spec.rstrip("/"))
    for col in runs:  # the same directory
        try:
            if col.path is not None and (
                target.resolve() == col.path.resolve()
                or target.resolve().is_relative_to(col.path.resolve())
            ):
                return col
        except OSError:
            continue
    for name in _encoder_names(spec):
        for col in runs:
            if col.path is not None and name in (col.name, col.path.name):
                return col
    return None


def _baseline_name(result: dict[str, Any], file: Path) -> str:
    spec = str(result.get("encoder") or "")
    if spec.startswith("random:"):
        inner = spec.removeprefix("random:").rstrip("/")
        return "random:" + (Path(inner).name or inner)
    return str(result.get("label") or Path(spec.rstrip("/")).name or file.stem)


def collect(
    run_dirs: Sequence[Path | str], eval_paths: Sequence[Path | str] = ()
) -> tuple[list[Column], list[str]]:
    """Columns for ``run_dirs`` and the ``eval_paths`` results (files or directories of
    ``selfsup eval all --out`` JSON, or ``--json`` lists), plus report-wide notes."""
    notes: list[str] = []
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for col in runs:  # two runs called the same in different folders
        seen[col.name] = seen.get(col.name, 0) + 1
    for col in runs:
        if seen[col.name] > 1 and col.path is not None:
            col.name = f"{col.path.resolve().parent.name}/{col.name}"
    for col in runs:
        if col.path is not None:
            bases = [col.path, col.path.parent, Path.cwd()]
            for result in col.evals:
                _add_eval_pictures(col, result, bases)
    baselines: dict[str, Column] = {}
    for file in _eval_files(eval_paths, notes):
        data = _read_json(file, notes)
        results = data if isinstance(data, list) else [data]
        good = [r for r in results if isinstance(r, dict)]
        if data is not None and not good:
            notes.append(f"{file}: no evaluation result in it; ignored")
        for result in good:
            result = _normalise_eval(result)
            spec = str(result.get("encoder") or "")
            col = _match(spec, runs)
            if col is None:
                name = _baseline_name(result, file)
                while name in {r.name for r in runs}:
                    name += " (eval)"
                col = baselines.get(name)
                if col is None:
                    col = baselines[name] = Column(name=name, kind="baseline")
            col.evals.append(result)
            col.sources.append(str(file))
            bases = [file.parent, file.parent.parent, Path.cwd()]
            if col.path is not None:
                bases.append(col.path)
            _add_eval_pictures(col, result, bases)
    columns = runs + list(baselines.values())
    for col in columns:
        chosen, left_out = _choose_pictures(col.pictures, MAX_PICTURES_PER_COLUMN)
        col.pictures = chosen
        if left_out:
            col.notes.append(f"{left_out} more picture(s) not shown")
    return columns, notes


def _add_eval_pictures(col: Column, result: dict[str, Any], bases: list[Path]) -> None:
    pictures = result.get("pictures")
    if not isinstance(pictures, dict):
        return
    known = {p.path.resolve() for p in col.pictures}
    for name, raw in pictures.items():
        if not isinstance(raw, str) or not raw.lower().endswith(".png"):
            continue
        path = _resolve_picture(raw, bases)
        if path is None:
            note = f"picture {name} not found: {raw}"
            if note not in col.notes:
                col.notes.append(note)
        elif path.resolve() not in known:
            known.add(path.resolve())
            col.pictures.append(Picture(path, f"eval {name}"))


# -- the table ---------------------------------------------------------------------------------


def fmt_pct(v: Any) -> str:
    """An accuracy in [0, 1] as a percentage."""
    return f"{100 * v:.2f}%" if _finite(v) else _fmt_other(v)


def fmt_f3(v: Any) -> str:
    """Three decimals."""
    return f"{v:.3f}" if _finite(v) else _fmt_other(v)


def fmt_g(v: Any) -> str:
    """Four significant digits."""
    return f"{v:.4g}" if _finite(v) else _fmt_other(v)


def fmt_int(v: Any) -> str:
    """An integer with thousands separators."""
    return f"{int(v):,}" if _finite(v) else _fmt_other(v)


def fmt_f1(v: Any) -> str:
    """One decimal."""
    return f"{v:,.1f}" if _finite(v) else _fmt_other(v)


def fmt_minutes(v: Any) -> str:
    """Minutes: two decimals under ten."""
    if not _finite(v):
        return _fmt_other(v)
    return f"{v:.2f}" if abs(v) < 10 else f"{v:,.1f}"


def fmt_si(v: Any) -> str:
    """A count with an SI prefix (FLOPs)."""
    if not _finite(v):
        return _fmt_other(v)
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f} {unit}"
    return f"{v:.0f}"


def fmt_text(v: Any) -> str:
    """Any value as text."""
    return _fmt_other(v)


def fmt_mean_std(v: Any) -> str:
    """A :class:`MeanStd` as ``mean ± std`` in percent."""
    if isinstance(v, MeanStd):
        return f"{100 * v:.2f} ± {100 * v.std:.2f}%" if v.std else fmt_pct(float(v))
    return fmt_pct(v)


def _fmt_other(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return str(v)  # nan, inf
    return str(v)


class MeanStd(float):
    """A mean that remembers its standard deviation (compared as the mean)."""

    std: float = 0.0

    def __new__(cls, mean: float, std: float = 0.0) -> MeanStd:
        obj = super().__new__(cls, mean)
        obj.std = std if _finite(std) else 0.0
        return obj


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


HIGHER_IS_BETTER = ("acc", "top1", "psnr", "agreement", "retrieval", "all_four", "auroc", "ssim",
                    "miou", "delta1")  # fmt: skip
LOWER_IS_BETTER = ("loss", "mse", "error", "fpr", "drop")


def pretext_direction(key: str) -> str | None:
    """Whether a pretext metric is better high ("max") or low ("min"), from its name."""
    k = key.lower()
    if any(t in k for t in LOWER_IS_BETTER):
        return "min"
    if any(t in k for t in HIGHER_IS_BETTER):
        return "max"
    return None


def metric_rows(columns: Sequence[Column]) -> list[Row]:
    """Every metric found in ``columns`` as table rows (a row only when a column has it)."""
    results = [c.result for c in columns]
    rows: list[Row] = []

    def add(
        section: str,
        label: str,
        values: list[Any],
        fmt: Callable[[Any], str] = fmt_pct,
        better: str | None = "max",
    ) -> None:
        if any(v is not None for v in values):
            rows.append(Row(section, label, values, fmt, better))

    def keys_of(getter: Callable[[dict[str, Any]], Any]) -> list[str]:
        out: list[str] = []
        for r in results:
            d = getter(r)
            if isinstance(d, dict):
                out += [k for k in d if k not in out]
        return out

    add(
        "Run",
        "method",
        [
            r.get("method") or c.summary.get("method") or _config_value(c, "method")
            for c, r in zip(columns, results, strict=True)
        ],
        fmt_text,
        None,
    )
    add(
        "Run",
        "backbone",
        [
            r.get("backbone") or c.summary.get("backbone")
            for c, r in zip(columns, results, strict=True)
        ],
        fmt_text,
        None,
    )
    add("Run", "eval data", [_data_label(r.get("data")) for r in results], fmt_text, None)
    add("Run", "feature dim", [r.get("feature_dim") for r in results], fmt_int, None)

    knn = sorted(
        {k for r in results for k in r if k.startswith("knn@")}, key=lambda k: _knn_order((k, None))
    )
    for k in knn:
        add("Frozen features", f"kNN@{k.split('@', 1)[1]} top-1", [r.get(k) for r in results])
    add("Frozen features", "linear top-1", [r.get("linear_top1") for r in results])
    add(
        "Frozen features",
        "linear train top-1",
        [r.get("linear_train_top1") for r in results],
        fmt_pct,
        None,
    )

    add("Clustering", "NMI", [_get(r, "clustering", "nmi") for r in results], fmt_f3)
    add("Clustering", "ARI", [_get(r, "clustering", "ari") for r in results], fmt_f3)
    add(
        "Clustering",
        "cluster accuracy",
        [_get(r, "clustering", "cluster_accuracy") for r in results],
    )

    for label, key, better in (("AUROC", "auroc", "max"), ("FPR@95%TPR", "fpr@95tpr", "min")):
        for name in keys_of(lambda r: r.get("ood")):
            values = [_get(r, "ood", name, key) for r in results]
            add("OOD detection", f"{label} {name}", values, fmt_f3, better)

    for which in ("linear", "finetuned"):
        title = "linear probe" if which == "linear" else "fine-tuned"
        rob = [_get(r, "robustness", which) for r in results]
        add("Robustness", f"clean top-1 ({title})", [_get(x, "clean") for x in rob])
        add("Robustness", f"mCA ({title})", [_get(x, "mean_corruption_accuracy") for x in rob])
        add(
            "Robustness",
            f"relative drop ({title})",
            [_get(x, "relative_drop") for x in rob],
            fmt_pct,
            "min",
        )

    for axis, title in (("finetune", "fine-tune"), ("partial", "partial fine-tune")):
        add("Fine-tuning", f"{title} top-1", [_get(r, axis, "top1") for r in results])
        add("Fine-tuning", f"{title} best top-1", [_get(r, axis, "best_top1") for r in results])
    add(
        "Fine-tuning",
        "partial: frozen stages",
        [_frozen(_get(r, "partial")) for r in results],
        fmt_text,
        None,
    )

    fractions = keys_of(lambda r: _get(r, "low_label", "fractions"))
    for fraction in sorted(fractions, key=_as_float):
        protos = keys_of(lambda r, f=fraction: _get(r, "low_label", "fractions", f))
        for proto in (p for p in protos if p != "images"):
            cells = [_get(r, "low_label", "fractions", fraction, proto) for r in results]
            label = f"{_pct_label(fraction)} labels: {proto}"
            add("Low-label", label, [_mean_std(c) for c in cells], fmt_mean_std)

    for key in keys_of(lambda r: r.get("pretext")):
        values = [_get(r, "pretext", key) for r in results]
        if any(_finite(v) for v in values):
            add("Pretext task", key, values, fmt_g, pretext_direction(key))

    add("Cost", "parameters", [_get(r, "cost", "parameters") for r in results], fmt_int, "min")
    add(
        "Cost",
        "forward FLOPs / image",
        [_get(r, "cost", "forward_flops_per_image") for r in results],
        fmt_si,
        "min",
    )

    def train(key: str) -> list[Any]:
        return [
            c.summary.get(key, _get(r, "cost", f"train_{key}"))
            for c, r in zip(columns, results, strict=True)
        ]

    add("Training", "steps", [c.summary.get("steps") for c in columns], fmt_int, None)
    add("Training", "images seen", train("images_seen"), fmt_int, None)
    add("Training", "train images / s", train("images_per_second"), fmt_f1, "max")
    add(
        "Training",
        "minutes",
        [s / 60 if _finite(s) else s for s in train("seconds")],
        fmt_minutes,
        "min",
    )
    add("Training", "peak memory (RSS, MiB)", train("peak_rss_mib"), fmt_f1, "min")
    add("Training", "skipped files", [c.summary.get("skipped_files") for c in columns],
        fmt_int, "min")  # fmt: skip
    add("Training", "sessions (resumes + 1)",
        [len(c.summary["segments"]) if "segments" in c.summary else None for c in columns],
        fmt_int, None)  # fmt: skip
    add("Training", "peak GPU memory (MiB)", train("peak_gpu_mib"), fmt_f1, "min")
    add(
        "Training",
        "final loss",
        [c.summary.get("final_loss", c.losses[-1][1] if c.losses else None) for c in columns],
        fmt_g,
        None,
    )
    for key in sorted({k for c in columns for k in c.online_knn}, key=lambda k: _knn_order((k, 0))):
        label = f"online kNN@{key.rsplit('@', 1)[-1]} (last)"
        add(
            "Training",
            label,
            [c.online_knn[key][-1][1] if c.online_knn.get(key) else None for c in columns],
        )
    warnings = [
        sum(e.get("event") == "collapse_warning" for e in c.events)
        if c.kind == "run" and (c.events or c.losses)
        else None
        for c in columns
    ]
    if any(warnings):
        add("Training", "collapse warnings", warnings, fmt_int, "min")
    return rows


def _data_label(key: Any) -> Any:
    """``cifar10:train:None|cifar10:test:2000`` -> ``cifar10 train / cifar10 test (2000)``."""
    if not isinstance(key, str) or "|" not in key:
        return key
    parts = []
    for side in key.split("|")[:2]:
        bits = side.split(":")
        if len(bits) >= 3 and bits[-1] in ("None", ""):
            bits = bits[:-1]
        elif len(bits) >= 3:
            bits = [*bits[:-1], f"({bits[-1]})"]
        parts.append(" ".join(bits))
    return " / ".join(parts)


def _config_value(col: Column, key: str) -> str | None:
    if not col.config_text:
        return None
    m = re.search(rf"^{re.escape(key)}:\s*(\S+)\s*$", col.config_text, re.MULTILINE)
    return m.group(1).strip("'\"") if m else None


def _frozen(partial: Any) -> str | None:
    if not isinstance(partial, dict) or "freeze_stages" not in partial:
        return None
    return f"{partial['freeze_stages']}/{partial.get('num_stages', '?')}"


def _mean_std(cell: Any) -> MeanStd | None:
    if isinstance(cell, dict) and _finite(cell.get("mean")):
        return MeanStd(cell["mean"], cell.get("std") or 0.0)
    return cell if _finite(cell) else None


def _as_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.inf


def _pct_label(fraction: str) -> str:
    f = _as_float(fraction)
    return f"{100 * f:g}%" if math.isfinite(f) else fraction


# -- writing -----------------------------------------------------------------------------------


def copy_assets(columns: Sequence[Column], out_dir: Path) -> None:
    """Copy every picture to ``out_dir/assets/<column>/`` and set :attr:`Picture.asset`."""
    slugs: set[str] = set()
    for col in columns:
        slug, n = col.slug, 1
        while slug in slugs or slug == "charts":
            n += 1
            slug = f"{col.slug}_{n}"
        slugs.add(slug)
        folder = out_dir / "assets" / slug
        used: set[str] = set()
        for pic in col.pictures:
            stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in pic.path.stem)
            name, n = f"{stem}.png", 1
            while name in used:
                n += 1
                name = f"{stem}_{n}.png"
            used.add(name)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pic.path, folder / name)
                pic.asset = f"assets/{slug}/{name}"
            except OSError as e:
                col.notes.append(f"cannot copy {pic.path}: {e}")
