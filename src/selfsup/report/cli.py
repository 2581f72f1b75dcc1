"""Command line of the report: ``selfsup report RUN_DIR... [--eval DIR_OR_JSON...] --out DIR``.

:func:`add_arguments` fills an ``argparse`` (sub)parser and :func:`run` executes parsed
arguments, so the main ``selfsup`` command can mount them as its ``report`` subcommand;
:func:`main` is ``python -m selfsup.report``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the report's arguments to ``parser``."""
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories to compare")
    parser.add_argument(
        "--eval",
        dest="eval_paths",
        nargs="+",
        default=[],
        metavar="DIR_OR_JSON",
        help="`selfsup eval all --out DIR` directories or result JSON files; results are matched "
        "to a run by the encoder's directory name, others (random-init baselines...) get their "
        "own column",
    )
    parser.add_argument("--out", required=True, help="output directory (index.html, report.md)")
    parser.add_argument("--title", default="selfsup report", help="page title")
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the report from parsed arguments; prints the two paths."""
    from selfsup.report.page import build_report

    if not args.runs and not args.eval_paths:
        raise SystemExit("selfsup report: give at least one RUN_DIR or --eval result")
    html, md = build_report(args.runs, args.out, args.eval_paths, title=args.title)
    print(f"wrote {html}")
    print(f"wrote {md}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m selfsup.report RUN_DIR... [--eval ...] --out DIR``."""
    parser = add_arguments(argparse.ArgumentParser(prog="selfsup report", description=__doc__))
    return run(parser.parse_args(argv))
