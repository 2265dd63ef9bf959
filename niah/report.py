"""Render a run's report from its results JSONL alone, via one tidy pandas frame.

Writes `grid.md` (the seed's length × depth matrix), `cells.csv`, `summary.json`,
`heatmap.png`, a self-contained `report.html` and `card.md` (niah.card).

Grid cell rule (`cell_label`), over the trials recorded for one (length, depth):
- no record: `-`
- every trial the same outcome: that outcome's name (`PASS`, `FAIL`, `CLAMPED`, ...)
- PASS and FAIL only: `k/n` (k passes of n trials)
- otherwise: `k/n` followed by each non-retrieval outcome present, comma-joined, in
  OUTCOMES order, e.g. `2/3,TIMEOUT` or `0/2,CLAMPED,CRASH`.
Labels never contain spaces, so every grid line splits into exactly its columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from niah.errors import NiahError
from niah.results import OUTCOMES, RETRIEVAL_OUTCOMES, load_cells, read_header

UNTESTED = "-"
MIXED = "mixed"


@dataclass(frozen=True)
class ReportPaths:
    """The files one report consists of."""

    grid_md: Path
    cells_csv: Path
    summary_json: Path
    heatmap_png: Path
    report_html: Path
    grid_markdown: str
    """The grid text written to grid_md."""


def depth_label(depth: float) -> str:
    """A depth column header: 0%, 25%, 12.5%."""
    return f"{depth:g}%"


def cell_label(outcomes: list[str]) -> str:
    """The grid text for one (length, depth) from the outcomes of its trials (rule in the module doc)."""
    if not outcomes:
        return UNTESTED
    if len(set(outcomes)) == 1:
        return outcomes[0]
    passes = sum(o == "PASS" for o in outcomes)
    others = [o for o in OUTCOMES if o in outcomes and o not in RETRIEVAL_OUTCOMES]
    return ",".join([f"{passes}/{len(outcomes)}", *others])


def cell_category(label: str) -> str:
    """The heatmap colour class of a grid label: an outcome name, `mixed` (k/n) or `-`."""
    if label == UNTESTED or label in OUTCOMES:
        return label
    parts = label.split(",")
    return parts[1] if len(parts) > 1 and parts[1] in OUTCOMES else MIXED


def grid_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The grid as a frame: one row per length (ascending), one column per depth, plus `factor`."""
    depths = sorted(df["depth"].unique())
    labels = (
        df.groupby(["length", "depth"], sort=True)["outcome"]
        .agg(lambda s: cell_label(list(s)))
        .unstack("depth")
        .reindex(columns=depths)
        .fillna(UNTESTED)
    )
    labels.columns = [depth_label(d) for d in depths]
    factors = df.groupby("length")["factor"].agg(_factor_text)
    labels["factor"] = factors.reindex(labels.index)
    labels.index.name = "length"
    return labels


def grid_markdown(df: pd.DataFrame) -> str:
    """The seed's grid: header `length 0% 25% ... factor`, then one space-separated line per length."""
    grid = grid_frame(df)
    lines = [" ".join(["length", *grid.columns])]
    for length, row in grid.iterrows():
        lines.append(" ".join([str(length), *(str(v) for v in row)]))
    return "\n".join(lines) + "\n"


def summarize(df: pd.DataFrame, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Counts per outcome and per length, prefill totals and cache savings, with the fingerprint."""
    counts = df["outcome"].value_counts()
    per_length = {
        str(length): {o: int(n) for o, n in group["outcome"].value_counts().items()}
        for length, group in df.groupby("length")
    }
    computed = _total(df["prompt_n"])
    cached = _total(df["cache_n"])
    prompt_ms = float(df["prompt_ms"].fillna(0).sum())
    return {
        "cells": len(df),
        "outcomes": {o: int(counts.get(o, 0)) for o in OUTCOMES},
        "per_length": per_length,
        "prefill": {
            "prompt_tokens_served": _total(df["prompt_tokens_served"]),
            "prompt_tokens_computed": computed,
            "cache_tokens_reused": cached,
            "cache_saved_fraction": round(cached / (cached + computed), 4) if cached + computed else 0.0,
            "prompt_ms": round(prompt_ms, 1),
            "prefill_tokens_per_s": round(computed / prompt_ms * 1000, 1) if prompt_ms else None,
        },
        "predicted_ms": round(float(df["predicted_ms"].fillna(0).sum()), 1),
        "wall_s": round(float(df["wall_s"].fillna(0).sum()), 2),
        "grid": grid_markdown(df).splitlines(),
        "fingerprint": fingerprint,
    }


def render_report(results_path: Path, out_dir: Path) -> ReportPaths:
    """Write grid.md, cells.csv, summary.json, heatmap.png and report.html for `results_path`."""
    from niah.card import write_card
    from niah.report_figures import render_heatmap, render_html

    results_path, out_dir = Path(results_path), Path(out_dir)
    if not results_path.is_file():
        raise NiahError(f"no results file at {results_path}")
    fingerprint = read_header(results_path).get("fingerprint") or {}
    df = load_cells(results_path)
    if df.empty:
        raise NiahError(f"{results_path} holds no finished cells yet")
    out_dir.mkdir(parents=True, exist_ok=True)
    grid_text = grid_markdown(df)
    paths = ReportPaths(
        grid_md=out_dir / "grid.md",
        cells_csv=out_dir / "cells.csv",
        summary_json=out_dir / "summary.json",
        heatmap_png=out_dir / "heatmap.png",
        report_html=out_dir / "report.html",
        grid_markdown=grid_text,
    )
    summary = summarize(df, fingerprint)
    paths.grid_md.write_text(grid_text, encoding="utf-8")
    df.to_csv(paths.cells_csv, index=False)
    paths.summary_json.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    png = render_heatmap(grid_frame(df))
    paths.heatmap_png.write_bytes(png)
    paths.report_html.write_text(render_html(df, grid_text, summary, png), encoding="utf-8")
    write_card(results_path, out_dir)
    return paths


def _factor_text(values: pd.Series) -> str:
    present = sorted({str(v) for v in values if isinstance(v, str) and v})
    return "/".join(present) if present else UNTESTED


def _total(column: pd.Series) -> int:
    return int(pd.to_numeric(column).fillna(0).sum())
