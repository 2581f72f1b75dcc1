"""The report's charts, drawn by matplotlib as SVG text (no file, no font or script fetched).

:func:`charts` turns the collected columns into :class:`Chart` objects: the training loss, the
online kNN accuracy, fine-tuning curves and robustness bars, each only when some column has the
data. ``Chart.svg`` is a standalone SVG document; ``Chart.inline_svg`` the same drawing ready to
sit inside an HTML page.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selfsup.report.build import Column

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
"""Colour of the i-th column, in the charts and the table's swatches (matplotlib's tab10)."""
MAX_POINTS = 800
"""Points drawn per line (longer series are thinned evenly, keeping the last point)."""

_STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable labels
    "svg.hashsalt": "selfsup-report",  # the same data gives the same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "legend.frameon": False,
}


@dataclass
class Series:
    """One line (or one colour of bars) of a chart: ``points`` are (x, y) pairs."""

    label: str
    points: list[tuple[float, float]]
    colour: str
    dashed: bool = False


@dataclass
class Chart:
    """A drawn chart: ``stem`` names its file in the Markdown report's assets."""

    stem: str
    title: str
    svg: str

    @property
    def inline_svg(self) -> str:
        """The ``<svg>`` element alone, for an HTML page: no XML prolog or DOCTYPE, and no
        namespace declarations (HTML does not need them)."""
        svg = self.svg[self.svg.index("<svg") :]
        return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg, count=2)


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    thinned = points[::stride]
    return thinned if thinned[-1] == points[-1] else [*thinned, points[-1]]


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A figure and its axes, outside pyplot (no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _to_svg(fig: Any) -> str:
    buffer = io.StringIO()
    no_metadata = {"Date": None, "Creator": None, "Format": None, "Type": None}
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata=no_metadata)
    return buffer.getvalue()


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool | None = None,
    y_from_zero: bool = False,
) -> str:
    """An SVG line chart of ``series`` with a legend on the right. ``log_y=None``: a log scale
    when the (positive) values span more than 1.5 decades; ``y_from_zero``: the y axis starts
    at 0 (accuracies). Series of up to 40 points get a marker per point."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    series = [Series(s.label, _thin(s.points), s.colour, s.dashed) for s in series if s.points]
    ys = [y for s in series for _, y in s.points]
    if log_y is None:
        log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 10**1.5
    with matplotlib.rc_context(_STYLE):
        fig, ax = _figure(4.8, 3.0)
        for s in series:
            xs, values = zip(*s.points, strict=True)
            ax.plot(xs, values, color=s.colour, linewidth=1.6, label=s.label,
                    linestyle="--" if s.dashed else "-",
                    marker="o" if len(s.points) <= 40 else None, markersize=3)  # fmt: skip
        if log_y:
            ax.set_yscale("log")
        elif y_from_zero:
            ax.set_ylim(bottom=0)
        if all(float(x).is_integer() for s in series for x, _ in s.points):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel + (" (log scale)" if log_y else ""))
        if series:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _to_svg(fig)


def bar_chart(groups: Sequence[str], series: Sequence[Series], *, title: str, ylabel: str) -> str:
    """A grouped SVG bar chart: one group per entry of ``groups`` (rotated x labels), one bar
    per series (``points``: (group index, value))."""
    import matplotlib

    width = 0.8 / max(len(series), 1)
    with matplotlib.rc_context(_STYLE):
        fig, ax = _figure(max(4.0, 0.4 * len(groups) * max(1, len(series)) ** 0.5 + 1.5), 3.2)
        for i, s in enumerate(series):
            points = [(x, y) for x, y in s.points if math.isfinite(y)]
            xs = [x - 0.4 + width * (i + 0.5) for x, _ in points]
            ax.bar(xs, [y for _, y in points], width=width * 0.95, color=s.colour, label=s.label)
        ax.set_xticks(range(len(groups)), groups, rotation=40, ha="right")
        ax.grid(axis="x", visible=False)
        ax.set(title=title, ylabel=ylabel)
        ax.set_ylim(bottom=0)
        if series:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _to_svg(fig)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def colour_of(index: int) -> str:
    """The colour of the ``index``-th column."""
    return PALETTE[index % len(PALETTE)]


def charts(columns: Sequence[Column]) -> list[Chart]:
    """The report's charts, each only when some column has its data."""
    colours = {id(c): colour_of(i) for i, c in enumerate(columns)}
    out: list[Chart] = []
    losses = [Series(c.name, c.losses, colours[id(c)]) for c in columns if c.losses]
    if losses:
        title = "Training loss"
        out.append(Chart("loss", title, line_chart(losses, title=title, xlabel="step",
                                                   ylabel="loss")))  # fmt: skip
    knn = []
    for c in columns:
        for key, points in c.online_knn.items():
            label = c.name if len(c.online_knn) == 1 else f"{c.name} ({key.split('_', 1)[-1]})"
            dashed = key != next(iter(c.online_knn))
            knn.append(Series(label, points, colours[id(c)], dashed))
    if knn:
        title = "Online kNN accuracy"
        svg = line_chart(knn, title=title, xlabel="step", ylabel="top-1", log_y=False,
                         y_from_zero=True)  # fmt: skip
        out.append(Chart("online_knn", title, svg))
    finetuning = []
    for c in columns:
        for axis, dashed in (("finetune", False), ("partial", True)):
            result = c.result.get(axis)
            curve = result.get("curve") if isinstance(result, dict) else None
            if not isinstance(curve, list):
                continue
            points = [(p.get("epoch"), p.get("test_top1")) for p in curve if isinstance(p, dict)]
            points = [(float(x), float(y)) for x, y in points if _num(x) and _num(y)]
            if points:
                label = c.name if axis == "finetune" else f"{c.name} (partial)"
                finetuning.append(Series(label, points, colours[id(c)], dashed))
    if finetuning:
        title = "Fine-tuning test accuracy"
        svg = line_chart(finetuning, title=title, xlabel="epoch", ylabel="test top-1",
                         log_y=False, y_from_zero=True)  # fmt: skip
        out.append(Chart("finetune", title, svg))
    for which, name in (("linear", "linear probe"), ("finetuned", "fine-tuned")):
        chart = _robustness_chart(columns, colours, which, name)
        if chart is not None:
            out.append(chart)
    return out


def _robustness_chart(
    columns: Sequence[Column], colours: dict[int, str], which: str, name: str
) -> Chart | None:
    """Clean, per-corruption and mean accuracy of the ``which`` model of every column."""
    groups: list[str] = []
    per_col: list[tuple[Column, dict[str, Any]]] = []
    for c in columns:
        r = c.result.get("robustness")
        s = r.get(which) if isinstance(r, dict) else None
        if isinstance(s, dict) and isinstance(s.get("per_corruption_mean"), dict):
            per_col.append((c, s))
            groups += [g for g in s["per_corruption_mean"] if g not in groups]
    if not per_col:
        return None
    bars = []
    for c, s in per_col:
        pcm = s["per_corruption_mean"]
        values = [s.get("clean"), *(pcm.get(g) for g in groups), s.get("mean_corruption_accuracy")]
        points = [(float(i), float(v)) for i, v in enumerate(values) if _num(v)]
        bars.append(Series(c.name, points, colours[id(c)]))
    title = f"Robustness: corruption accuracy ({name})"
    svg = bar_chart(["clean", *groups, "mean (mCA)"], bars, title=title,
                    ylabel="top-1, mean over severities")  # fmt: skip
    return Chart(f"robustness_{which}", title, svg)
