"""Write a report: collect the runs and results (:mod:`selfsup.report.build`), draw the charts
(:mod:`selfsup.report.charts`), render the pages (:mod:`selfsup.report.render`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from selfsup.report.build import collect, copy_assets, metric_rows
from selfsup.report.charts import charts
from selfsup.report.render import render_html, render_markdown


def build_report(
    run_dirs: Sequence[Path | str],
    out_dir: Path | str,
    eval_paths: Sequence[Path | str] = (),
    *,
    title: str = "selfsup report",
) -> tuple[Path, Path]:
    """Write ``out_dir/index.html`` (self-contained: inline CSS and SVG charts, pictures as
    data URIs) and ``out_dir/report.md`` (the table, charts and pictures under
    ``out_dir/assets/``) comparing ``run_dirs`` and the ``eval_paths`` results.

    Returns the two paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns, notes = collect(run_dirs, eval_paths)
    if not columns:
        notes.append("nothing to report: no run directory and no evaluation result")
    rows = metric_rows(columns)
    copy_assets(columns, out_dir)
    html_path, md_path = out_dir / "index.html", out_dir / "report.md"
    drawn = charts(columns)  # once, for both pages
    html = render_html(columns, rows, notes, title=title, chart_list=drawn)
    html_path.write_text(html, encoding="utf-8")
    md = render_markdown(columns, rows, notes, out_dir, title=title, chart_list=drawn)
    md_path.write_text(md, encoding="utf-8")
    return html_path, md_path
