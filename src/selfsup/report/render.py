"""Render the report from jinja2 templates (``report/templates/``): a self-contained HTML page
(inline CSS, inline SVG charts from :mod:`selfsup.report.charts`, pictures as ``data:`` URIs,
no script, no external request, a strict Content-Security-Policy) and its Markdown version."""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfsup._version import __version__
from selfsup.report.build import MAX_PICTURE_BYTES, PNG_MAGIC, Column, Row, fmt_text
from selfsup.report.charts import Chart, charts, colour_of

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""Nothing may load but the page's own inline styles and ``data:`` images."""
MAX_EVENTS = 50
"""Events listed per run (the rest are counted)."""


def _environment(autoescape: bool) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("selfsup.report", "templates"),
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = _md
    return env


def _md(text: Any) -> str:
    """Text safe in a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _figure(path: Path, caption: str) -> dict[str, Any]:
    """An embedded picture: its data URI and size, or (``uri`` None) why it is not embedded."""
    shown: dict[str, Any] = {"caption": caption, "uri": None, "why": "", "width": None,
                             "height": None, "small": False}  # fmt: skip
    try:
        size = path.stat().st_size
        if size > MAX_PICTURE_BYTES:
            return {**shown, "why": f"{size / 2**20:.1f} MiB: too large to embed"}
        data = path.read_bytes()
    except OSError as e:
        return {**shown, "why": f"unreadable ({e.strerror or e})"}
    if not data.startswith(PNG_MAGIC):
        return {**shown, "why": "not a PNG file"}
    width, height = _png_size(data)
    return {
        **shown,
        "uri": "data:image/png;base64," + base64.b64encode(data).decode("ascii"),
        "width": width if width > 0 and height > 0 else None,
        "height": height,
        "small": 0 < width < 340,  # scaled up: keep the pixels sharp
    }


def _column_view(index: int, col: Column, *, embed: bool) -> dict[str, Any]:
    """What the templates show of one column."""
    events = [e for e in col.events if e.get("event") not in ("start", "end")]
    fence = "````" if col.config_text and "```" in col.config_text else "```"
    return {
        "name": col.name,
        "kind": col.kind,
        "path": col.path,
        "colour": colour_of(index),
        "where": str(col.path if col.path is not None else ", ".join(col.sources)),
        "location": str(col.path) if col.path is not None else "evaluation result",
        "notes": col.notes,
        "config_text": col.config_text,
        "config_or_notes": col.config_text is not None or bool(col.notes),
        "fence": fence,
        "event_count": len(events),
        "events": [
            {"step": e.get("step", "?"), "event": e.get("event"), "detail": _event_detail(e)}
            for e in events[:MAX_EVENTS]
        ],
        "sources": [s for s in col.sources if col.path is None or s != str(col.path)],
        "figures": [_figure(p.path, p.name) for p in col.pictures] if embed else [],
        "assets": [p for p in col.pictures if p.asset],
    }


def _event_detail(event: dict[str, Any]) -> str:
    rest = {k: v for k, v in event.items() if k not in ("event", "step")}
    return ", ".join(f"{k}={v}" for k, v in rest.items())[:200]


def _table_view(rows: Sequence[Row]) -> dict[str, Any]:
    """Rows with their cells' text and classes, and a section title where a section starts."""
    out, section = [], None
    for row in rows:
        best = row.best()
        cells = []
        for i, v in enumerate(row.values):
            classes = ["best"] if i in best else (["missing"] if v is None else [])
            if row.fmt is fmt_text:
                classes.append("text")
            cells.append({"text": row.fmt(v), "classes": " ".join(classes), "best": i in best})
        out.append(
            {
                "section": row.section if row.section != section else None,
                "label": row.label,
                "arrow": {"max": " ↑", "min": " ↓"}.get(row.better or "", ""),
                "hint": {"max": "higher is better", "min": "lower is better"}.get(
                    row.better or "", ""
                ),
                "cells": cells,
            }
        )
        section = row.section
    return {"rows": out}


def _now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def render_html(
    columns: Sequence[Column],
    rows: Sequence[Row],
    notes: Sequence[str],
    *,
    title: str,
    chart_list: Sequence[Chart] | None = None,
) -> str:
    """The whole page (``chart_list``: the charts, when already drawn)."""
    return (
        _environment(autoescape=True)
        .get_template("report.html.j2")
        .render(
            title=title,
            csp=CSP,
            generated=_now(),
            version=__version__,
            notes=notes,
            columns=[_column_view(i, c, embed=True) for i, c in enumerate(columns)],
            table=_table_view(rows),
            charts=charts(columns) if chart_list is None else chart_list,
        )
    )


def render_markdown(
    columns: Sequence[Column],
    rows: Sequence[Row],
    notes: Sequence[str],
    out_dir: Path,
    *,
    title: str,
    chart_list: Sequence[Chart] | None = None,
) -> str:
    """The Markdown report; writes the charts as ``out_dir/assets/charts/*.svg`` (pictures are
    already copied under ``out_dir/assets/``)."""
    chart_list = charts(columns) if chart_list is None else chart_list
    if chart_list:
        folder = out_dir / "assets" / "charts"
        folder.mkdir(parents=True, exist_ok=True)
        for chart in chart_list:
            (folder / f"{chart.stem}.svg").write_text(chart.svg, encoding="utf-8")
    return (
        _environment(autoescape=False)
        .get_template("report.md.j2")
        .render(
            title=title,
            generated=_now(),
            notes=notes,
            columns=[_column_view(i, c, embed=False) for i, c in enumerate(columns)],
            table=_table_view(rows),
            charts=chart_list,
        )
    )
