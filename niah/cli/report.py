"""`niah report DIR`: re-render a run's report from its results.jsonl alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from niah.errors import NiahError

RESULTS_NAME = "results.jsonl"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "report",
        help="re-render a run's report from its results.jsonl",
        description=(
            "Write grid.md, cells.csv, summary.json, heatmap.png, report.html and card.md into DIR "
            "from DIR/results.jsonl, and print the grid.  Example: niah report reports/demo"
        ),
    )
    parser.add_argument("dir", help=f"a run directory holding {RESULTS_NAME} (or the results file itself)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from niah.publish.report import render_report

    target = Path(args.dir)
    results = target if target.is_file() else target / RESULTS_NAME
    if not results.is_file():
        raise NiahError(f"no {RESULTS_NAME} in {target}")
    paths = render_report(results, results.parent)
    print(paths.grid_md.read_text(encoding="utf-8"), end="")
    print(f"report written to {paths.report_html.parent}/ (grid.md, cells.csv, summary.json, heatmap.png, report.html, card.md)")
    return 0
