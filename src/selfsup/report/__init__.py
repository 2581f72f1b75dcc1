"""``selfsup report``: a static HTML page (and its Markdown version) comparing runs.

>>> from selfsup.report import build_report
>>> html, md = build_report(["runs/simclr", "runs/byol"], "report", eval_paths=["eval_out"])

See :func:`selfsup.report.page.build_report`; :mod:`selfsup.report.cli` has the command line
(``python -m selfsup.report``).
"""

from selfsup.report.page import build_report

__all__ = ["build_report"]
