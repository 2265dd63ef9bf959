"""Every committed report is what `niah report` writes from its results.jsonl today."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread

from niah.publish.report import render_report

REPORTS = Path(__file__).parent.parent / "reports"
TEXT_FILES = ("grid.md", "cells.csv", "summary.json", "card.md")
_IMAGE = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


@pytest.mark.parametrize("report", sorted(p.name for p in REPORTS.iterdir() if (p / "results.jsonl").is_file()))
def test_committed_report_is_rerendered_exactly(report: str, tmp_path: Path) -> None:
    committed = REPORTS / report
    shutil.copy(committed / "results.jsonl", tmp_path / "results.jsonl")
    render_report(tmp_path / "results.jsonl", tmp_path)
    for name in TEXT_FILES:
        assert (tmp_path / name).read_text(encoding="utf-8") == (committed / name).read_text(encoding="utf-8"), (
            f"reports/{report}/{name} is stale: re-render it with `niah report reports/{report}`"
        )
    html = [_IMAGE.sub("IMAGE", (d / "report.html").read_text(encoding="utf-8")) for d in (tmp_path, committed)]
    assert html[0] == html[1], f"reports/{report}/report.html is stale"
    # the heatmap's pixels depend on the installed matplotlib's fonts; its layout must match
    assert imread(tmp_path / "heatmap.png").shape == imread(committed / "heatmap.png").shape
