"""Render the report: a self-contained HTML page (inline CSS, inline SVG charts drawn here,
pictures as ``data:`` URIs, no script, no external request) and its Markdown version."""

from __future__ import annotations

import base64
import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from selfsup.report.build import MAX_PICTURE_BYTES, PNG_MAGIC, Column, Row, fmt_text

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
SVG_NS = "http://www.w3.org/2000/svg"
"""Only in the Markdown's standalone SVG files (inline SVG in HTML needs no namespace)."""
MAX_POINTS = 800
"""Points drawn per polyline (longer series are thinned evenly, keeping the last point)."""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       margin: 1.5rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
h1 { margin-bottom: .2rem; } .sub { color: #666; margin-top: 0; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table.metrics { border-collapse: collapse; font-size: .9rem; }
table.metrics th, table.metrics td { border: 1px solid #ddd; padding: .25rem .6rem; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.metrics th[scope=row] { text-align: left; font-weight: normal; white-space: nowrap; }
table.metrics thead th { background: #f3f3f3; vertical-align: bottom; }
table.metrics td.text { text-align: left; white-space: normal; overflow-wrap: anywhere;
                        max-width: 16rem; font-size: .8rem; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table.metrics tr.section th { background: #fafafa; text-align: left; font-weight: bold; }
table.metrics td.best { background: #d9f2d9; font-weight: bold; }
table.metrics td.missing { color: #bbb; }
.dir { color: #888; font-size: .8em; }
.tag { font-size: .7rem; font-weight: normal; padding: 0 .3rem; border-radius: .3rem;
       background: #e6e6e6; } .tag.baseline { background: #fde7c8; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: .15em;
          margin-right: .3em; vertical-align: baseline; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
.chart { border: 1px solid #e4e4e4; border-radius: .4rem; padding: .5rem; background: #fff; }
.chart svg { display: block; max-width: 100%; height: auto; }
.pics { display: flex; flex-wrap: wrap; gap: .8rem; align-items: flex-start; }
figure { margin: 0; width: 340px; }
figure img { width: 100%; height: auto; border: 1px solid #ddd; }
figure img.small { image-rendering: pixelated; }
figcaption { font-size: .8rem; color: #555; word-break: break-all; }
details { margin: .4rem 0; } summary { cursor: pointer; }
pre { background: #f7f7f7; padding: .6rem; overflow-x: auto; font-size: .8rem; }
ul.notes { color: #8a5300; }
"""


# -- SVG charts --------------------------------------------------------------------------------


@dataclass
class Series:
    """One line (or bar colour) of a chart."""

    label: str
    points: list[tuple[float, float]]
    colour: str
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (whole numbers with ``integer``)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:  # a constant: centre it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    if integer:
        raw = max(raw, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9)
    count = math.ceil(hi / step - 1e-9) - first
    return [round((first + i) * step, 12) for i in range(count + 1)]


def _tick_label(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.0e}"
    return f"{v:,.6g}" if abs(v) >= 1000 else f"{v:.6g}"


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    thinned = points[::stride]
    return thinned if thinned[-1] == points[-1] else [*thinned, points[-1]]


def _legend(series: Sequence[Series], x: float, y: float) -> list[str]:
    out = []
    for i, s in enumerate(series):
        yy = y + 16 * i
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        label = s.label if len(s.label) <= 24 else s.label[:23] + "…"
        out.append(
            f'<line x1="{x:.1f}" y1="{yy:.1f}" x2="{x + 18:.1f}" y2="{yy:.1f}" '
            f'stroke="{s.colour}" stroke-width="2.5"{dash}/>'
            f'<text x="{x + 24:.1f}" y="{yy + 4:.1f}"><title>{escape(s.label)}</title>'
            f"{escape(label)}</text>"
        )
    return out


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool | None = None,
    y_from_zero: bool = False,
    width: int = 560,
    height: int = 340,
) -> str:
    """An SVG line chart of ``series`` with axes, ticks and a legend on the right.
    ``log_y=None``: a log scale when positive values span more than 1.5 decades;
    ``y_from_zero``: the y axis starts at 0 (accuracies)."""
    series = [Series(s.label, _thin(s.points), s.colour, s.dashed) for s in series if s.points]
    ys = [y for s in series for _, y in s.points]
    if log_y is None:
        log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 10**1.5
    if log_y:
        series = [
            Series(s.label, [(x, math.log10(y)) for x, y in s.points if y > 0], s.colour, s.dashed)
            for s in series
        ]
    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    ys = [y for s in series for _, y in s.points] or [0.0, 1.0]
    if y_from_zero and not log_y:
        ys.append(0.0)
    whole = all(float(x).is_integer() for x in xs)
    x_ticks = nice_ticks(min(xs), max(xs), integer=whole)
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    legend_w = 170
    left, right, top, bottom = 64, legend_w + 12, 30, 46
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def py(y: float) -> float:
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    parts = [_svg_open(width, height, title), _title(title, width - legend_w)]
    for t in y_ticks:
        label = _tick_label(10**t if log_y else t)
        parts.append(
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" '
            f'stroke="#eee"/><text x="{left - 6}" y="{py(t) + 4:.1f}" '
            f'text-anchor="end">{escape(label)}</text>'
        )
    for t in x_ticks:
        parts.append(
            f'<line x1="{px(t):.1f}" y1="{top + ph}" x2="{px(t):.1f}" '
            f'y2="{top + ph + 4}" stroke="#666"/><text x="{px(t):.1f}" '
            f'y="{top + ph + 17}" text-anchor="middle">{escape(_tick_label(t))}</text>'
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
    )
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{escape(xlabel)}</text>"
    )
    ylab = ylabel + (" (log scale)" if log_y else "")
    parts.append(
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(ylab)}</text>'
    )
    for s in series:
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        parts.append(
            f'<polyline fill="none" stroke="{s.colour}" stroke-width="1.8"{dash} '
            f'points="{pts}"><title>{escape(s.label)}</title></polyline>'
        )
        if len(s.points) <= 40:
            parts += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{s.colour}">'
                f"<title>{escape(s.label)}: {_tick_label(10**y if log_y else y)} at "
                f"{_tick_label(x)}</title></circle>"
                for x, y in s.points
            ]
    parts += _legend(series, width - legend_w + 4, top + 8)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    groups: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    ylabel: str,
    height: int = 360,
) -> str:
    """A grouped SVG bar chart: one group per entry of ``groups`` (x labels, rotated), one bar
    per series (``points``: (group index, value))."""
    per_group = max(len(series), 1)
    bar_w = max(4.0, min(16.0, 120 / per_group))
    group_w = bar_w * per_group + 10
    legend_w = 170
    left, right, top, bottom = 56, legend_w + 12, 30, 110
    width = int(left + right + max(group_w * len(groups), 200))
    ph = height - top - bottom
    values = [y for s in series for _, y in s.points if math.isfinite(y)]
    y_ticks = nice_ticks(0.0, max(values + [1e-9]))
    y1 = y_ticks[-1] or 1.0

    def py(y: float) -> float:
        return top + ph - max(y, 0.0) / y1 * ph

    parts = [_svg_open(width, height, title), _title(title, width - legend_w)]
    for t in y_ticks:
        parts.append(
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{width - right}" y2="{py(t):.1f}" '
            f'stroke="#eee"/><text x="{left - 6}" y="{py(t) + 4:.1f}" '
            f'text-anchor="end">{escape(_tick_label(t))}</text>'
        )
    for g, name in enumerate(groups):
        gx = left + g * group_w + 5
        for si, s in enumerate(series):
            for idx, y in s.points:
                if idx != g or not math.isfinite(y):
                    continue
                bx = gx + si * bar_w
                parts.append(
                    f'<rect x="{bx:.1f}" y="{py(y):.1f}" width="{bar_w - 1:.1f}" '
                    f'height="{top + ph - py(y):.1f}" fill="{s.colour}">'
                    f"<title>{escape(s.label)} · {escape(name)}: {y:.4f}</title></rect>"
                )
        cx = gx + bar_w * per_group / 2
        parts.append(
            f'<text transform="translate({cx:.1f} {top + ph + 10}) rotate(-40)" '
            f'text-anchor="end">{escape(name)}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + ph}" x2="{width - right}" y2="{top + ph}" stroke="#666"/>'
    )
    parts.append(
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" font-size="10">{escape(ylabel)}</text>'
    )
    parts += _legend(series, width - legend_w + 4, top + 8)
    parts.append("</svg>")
    return "".join(parts)


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'font-family="DejaVu Sans, Arial, sans-serif" font-size="11" fill="#222">'
        f'<rect width="{width}" height="{height}" fill="#fff"/>'
    )


def _title(title: str, width: float) -> str:
    return (
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>'
    )


def charts(columns: Sequence[Column]) -> list[tuple[str, str, str]]:
    """The report's charts as ``(file stem, title, svg)``; a chart only when it has data."""
    colours = {id(c): PALETTE[i % len(PALETTE)] for i, c in enumerate(columns)}
    out: list[tuple[str, str, str]] = []
    losses = [Series(c.name, c.losses, colours[id(c)]) for c in columns if c.losses]
    if losses:
        title = "Training loss"
        out.append(("loss", title, line_chart(losses, title=title, xlabel="step", ylabel="loss")))
    knn = []
    for c in columns:
        for key, points in c.online_knn.items():
            label = c.name if len(c.online_knn) == 1 else f"{c.name} ({key.split('_', 1)[-1]})"
            knn.append(
                Series(label, points, colours[id(c)], dashed=key != next(iter(c.online_knn)))
            )
    if knn:
        title = "Online kNN accuracy"
        out.append(
            (
                "online_knn",
                title,
                line_chart(
                    knn, title=title, xlabel="step", ylabel="top-1", log_y=False, y_from_zero=True
                ),
            )
        )
    ft = []
    for c in columns:
        for axis, dashed in (("finetune", False), ("partial", True)):
            curve = (
                (c.result.get(axis) or {}).get("curve")
                if isinstance(c.result.get(axis), dict)
                else None
            )
            if not isinstance(curve, list):
                continue
            points = [(p.get("epoch"), p.get("test_top1")) for p in curve if isinstance(p, dict)]
            points = [(float(x), float(y)) for x, y in points if _num(x) and _num(y)]
            if points:
                label = c.name if axis == "finetune" else f"{c.name} (partial)"
                ft.append(Series(label, points, colours[id(c)], dashed))
    if ft:
        title = "Fine-tuning test accuracy"
        out.append(
            (
                "finetune",
                title,
                line_chart(
                    ft,
                    title=title,
                    xlabel="epoch",
                    ylabel="test top-1",
                    log_y=False,
                    y_from_zero=True,
                ),
            )
        )
    for which, name in (("linear", "linear probe"), ("finetuned", "fine-tuned")):
        groups: list[str] = []
        per_col: list[tuple[Column, dict[str, Any]]] = []
        for c in columns:
            r = c.result.get("robustness")
            s = r.get(which) if isinstance(r, dict) else None
            if isinstance(s, dict) and isinstance(s.get("per_corruption_mean"), dict):
                per_col.append((c, s))
                groups += [g for g in s["per_corruption_mean"] if g not in groups]
        if not per_col:
            continue
        labels = ["clean", *groups, "mean (mCA)"]
        bars = []
        for c, s in per_col:
            pcm = s["per_corruption_mean"]
            values = [
                s.get("clean"),
                *(pcm.get(g) for g in groups),
                s.get("mean_corruption_accuracy"),
            ]
            points = [(float(i), float(v)) for i, v in enumerate(values) if _num(v)]
            bars.append(Series(c.name, points, colours[id(c)]))
        title = f"Robustness: corruption accuracy ({name})"
        out.append(
            (
                f"robustness_{which}",
                title,
                bar_chart(labels, bars, title=title, ylabel="top-1, mean over severities"),
            )
        )
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- HTML --------------------------------------------------------------------------------------


def _png_size(uri: str) -> tuple[int, int]:
    """Width and height from the IHDR chunk of a PNG data URI."""
    head = base64.b64decode(uri.split(",", 1)[1][:32])
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _data_uri(path: Path) -> tuple[str | None, str | None]:
    """``(data URI, None)``, or ``(None, why not)``."""
    try:
        size = path.stat().st_size
        if size > MAX_PICTURE_BYTES:
            return None, f"{size / 2**20:.1f} MiB: too large to embed"
        data = path.read_bytes()
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if not data.startswith(PNG_MAGIC):
        return None, "not a PNG file"
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), None


def _head_cell(col: Column, colour: str) -> str:
    where = col.path if col.path is not None else ", ".join(col.sources)
    return (
        f'<th scope="col" title="{escape(str(where))}"><span class="swatch" '
        f'style="background:{colour}"></span>{escape(col.name)} '
        f'<span class="tag {col.kind}">{col.kind}</span></th>'
    )


def _table_html(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    if not rows:
        return "<p>No metrics found.</p>"
    head = "".join(_head_cell(c, PALETTE[i % len(PALETTE)]) for i, c in enumerate(columns))
    parts = [
        '<div class="table-wrap"><table class="metrics" id="metrics"><thead><tr>'
        '<th scope="col">metric</th>',
        head,
        "</tr></thead><tbody>",
    ]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            parts.append(
                f'<tr class="section"><th colspan="{len(columns) + 1}" scope="rowgroup">'
                f"{escape(section)}</th></tr>"
            )
        arrow = {"max": " ↑", "min": " ↓"}.get(row.better or "", "")
        hint = {"max": "higher is better", "min": "lower is better"}.get(row.better or "", "")
        hint_attr = f' title="{hint}"' if hint else ""
        parts.append(f'<tr><th scope="row"{hint_attr}>{escape(row.label)}{arrow}</th>')
        best = row.best()
        for i, v in enumerate(row.values):
            classes = ["best"] if i in best else (["missing"] if v is None else [])
            if row.fmt is fmt_text:
                classes.append("text")
            cls_attr = f' class="{" ".join(classes)}"' if classes else ""
            parts.append(f"<td{cls_attr}>{escape(row.fmt(v))}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _pictures_html(columns: Sequence[Column]) -> str:
    parts = []
    for col in columns:
        if not col.pictures:
            continue
        parts.append(f'<h3>{escape(col.name)}</h3><div class="pics">')
        for pic in col.pictures:
            uri, why = _data_uri(pic.path)
            caption = escape(pic.name)
            if uri is None:
                parts.append(
                    f"<figure><figcaption>{caption}: not embedded ({escape(why or '')})"
                    "</figcaption></figure>"
                )
                continue
            w, h = _png_size(uri)
            small = ' class="small"' if 0 < w < 340 else ""  # scaled up: keep pixels sharp
            size = f' width="{w}" height="{h}"' if w > 0 and h > 0 else ""
            parts.append(
                f'<figure><img src="{uri}" alt="{caption}"{size}{small}>'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        parts.append("</div>")
    return "".join(parts) or "<p>No pictures.</p>"


def _runs_html(columns: Sequence[Column]) -> str:
    parts = []
    for i, col in enumerate(columns):
        colour = PALETTE[i % len(PALETTE)]
        where = str(col.path) if col.path is not None else "evaluation result"
        parts.append(
            f'<h3><span class="swatch" style="background:{colour}"></span>'
            f'{escape(col.name)} <span class="dir">{escape(where)}</span></h3>'
        )
        if col.notes:
            parts.append(
                '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in col.notes) + "</ul>"
            )
        if col.config_text is not None:
            parts.append(
                f"<details><summary>config.yaml</summary><pre>"
                f"{escape(col.config_text)}</pre></details>"
            )
        events = [e for e in col.events if e.get("event") not in ("start", "end")]
        if events:
            items = "".join(
                f"<li>step {escape(str(e.get('step', '?')))}: "
                f"{escape(str(e.get('event')))} {escape(_event_detail(e))}</li>"
                for e in events[:50]
            )
            more = f"<li>… {len(events) - 50} more</li>" if len(events) > 50 else ""
            parts.append(
                f"<details><summary>events ({len(events)})</summary><ul>{items}{more}"
                "</ul></details>"
            )
        sources = [s for s in col.sources if col.path is None or s != str(col.path)]
        if sources:
            parts.append(
                "<details><summary>evaluation files</summary><ul>"
                + "".join(f"<li>{escape(s)}</li>" for s in sources)
                + "</ul></details>"
            )
    return "".join(parts)


def _event_detail(event: dict[str, Any]) -> str:
    rest = {k: v for k, v in event.items() if k not in ("event", "step")}
    return ", ".join(f"{k}={v}" for k, v in rest.items())[:200]


def render_html(
    columns: Sequence[Column], rows: Sequence[Row], notes: Sequence[str], *, title: str
) -> str:
    """The whole page."""
    from selfsup._version import __version__

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    chart_html = "".join(f'<div class="chart">{svg}</div>' for _, _, svg in charts(columns))
    notes_html = (
        ('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
        if notes
        else ""
    )
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="sub">{len(columns)} column(s); generated {now} by selfsup {escape(__version__)}.
Best value per row highlighted (↑ higher is better, ↓ lower is better).</p>
{notes_html}
<h2 id="table">Metrics</h2>
{_table_html(columns, rows)}
<h2 id="charts">Charts</h2>
{('<div class="charts">' + chart_html + "</div>") if chart_html else "<p>No curves.</p>"}
<h2 id="pictures">Pictures</h2>
{_pictures_html(columns)}
<h2 id="runs">Runs and configurations</h2>
{_runs_html(columns)}
</body>
</html>
"""


# -- Markdown ----------------------------------------------------------------------------------


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table_md(columns: Sequence[Column], rows: Sequence[Row]) -> list[str]:
    if not rows:
        return ["No metrics found.", ""]
    lines = [
        "| metric | " + " | ".join(f"{_md(c.name)} ({c.kind})" for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"| **{_md(section)}** |" + " |" * len(columns))
        arrow = {"max": " ↑", "min": " ↓"}.get(row.better or "", "")
        best = row.best()
        cells = [
            f"**{_md(row.fmt(v))}**" if i in best else _md(row.fmt(v))
            for i, v in enumerate(row.values)
        ]
        lines.append(f"| {_md(row.label)}{arrow} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_markdown(
    columns: Sequence[Column],
    rows: Sequence[Row],
    notes: Sequence[str],
    out_dir: Path,
    *,
    title: str,
) -> str:
    """The Markdown report; writes the charts as ``out_dir/assets/charts/*.svg`` (pictures are
    already copied under ``out_dir/assets/``)."""
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# {title}",
        "",
        f"Generated {now}. Best value per row in bold (↑ higher is better, ↓ lower is better).",
        "",
    ]
    for col in columns:
        where = f"`{col.path}`" if col.path is not None else "evaluation result"
        lines.append(f"- **{_md(col.name)}** ({col.kind}): {where}")
    lines.append("")
    if notes:
        lines += ["Notes:", "", *(f"- {_md(n)}" for n in notes), ""]
    lines += ["## Metrics", "", *_table_md(columns, rows)]
    chart_list = charts(columns)
    if chart_list:
        folder = out_dir / "assets" / "charts"
        folder.mkdir(parents=True, exist_ok=True)
        lines += ["## Charts", ""]
        for stem, chart_title, svg in chart_list:
            standalone = svg.replace("<svg ", f'<svg xmlns="{SVG_NS}" ', 1)
            (folder / f"{stem}.svg").write_text(standalone, encoding="utf-8")
            lines += [f"![{chart_title}](assets/charts/{stem}.svg)", ""]
    if any(c.pictures for c in columns):
        lines += ["## Pictures", ""]
        for col in columns:
            shown = [p for p in col.pictures if p.asset]
            if not shown:
                continue
            lines += [f"### {col.name}", ""]
            lines += [
                f"- [{_md(p.name)}]({p.asset})  \n  ![{_md(p.name)}]({p.asset})" for p in shown
            ]
            lines.append("")
    configs = [c for c in columns if c.config_text is not None or c.notes]
    if configs:
        lines += ["## Runs and configurations", ""]
        for col in configs:
            lines += [f"### {col.name}", ""]
            lines += [f"- {_md(n)}" for n in col.notes]
            if col.notes:
                lines.append("")
            if col.config_text is not None:
                fence = "````" if "```" in col.config_text else "```"
                lines += [
                    "<details><summary>config.yaml</summary>",
                    "",
                    f"{fence}yaml",
                    col.config_text.rstrip("\n"),
                    fence,
                    "",
                    "</details>",
                    "",
                ]
    return "\n".join(lines) + "\n"
