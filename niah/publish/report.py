"""Render a run's report from its results JSONL alone, via one tidy pandas frame.

Writes `grid.md` (the seed's length × depth matrix), `cells.csv`, `summary.json`,
`heatmap.png`, `card.md` (niah.publish.card) and `report.html`, the card as a self-contained page
(niah.publish.report_page).

The grid itself (labels, categories) comes from `niah.publish.grid`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from niah.errors import NiahError, writing_in
from niah.publish.card.screen import confirmation_summary
from niah.publish.grid import grid_frame
from niah.publish.results import OUTCOMES, load_cells, read_header
from niah.publish.runs import (
    cell_table,
    draft_acceptance,
    effective_length,
    judged_tasks,
    length_table,
    task_verdicts,
    tasks_grid_markdown,
    tasks_of,
    total,
)


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
    summary: dict[str, Any]
    """What summary_json holds."""


def summarize(df: pd.DataFrame, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Counts per outcome and per length, prefill totals and cache savings, the effective length, per
    task the cells and length rows with their confidence sequence and the verdict, a screen's
    confirmations beside its cells, with the fingerprint."""
    verdicts = task_verdicts(df, fingerprint)
    counts = df["outcome"].value_counts()
    per_length = {
        str(length): {o: int(n) for o, n in group["outcome"].value_counts().items()}
        for length, group in df.groupby("length")
    }
    computed = total(df["prompt_n"]) + total(df["prime_n"])  # checkpoint primers compute too
    cached = total(df["cache_n"])
    sent = total(df["prompt_tokens_served"])
    reusable = total(df["cache_expected"])
    predicted_ms = total(df["predicted_ms"])
    prompt_ms = total(df["prompt_ms"]) + total(df["prime_ms"])
    return {
        "cells": len(df),
        "outcomes": {o: int(counts.get(o, 0)) for o in OUTCOMES},
        "per_length": per_length,
        "prefill": {
            "prompt_tokens_served": total(df["prompt_tokens_served"]),
            "prompt_tokens_computed": computed,
            "cache_tokens_reused": cached,
            "cache_saved_fraction": round((sent - computed) / sent, 4) if sent else 0.0,  # against cold cells
            "prompt_ms": round(prompt_ms, 1),
            "prefill_tokens_per_s": round(computed / prompt_ms * 1000, 1) if prompt_ms else None,
            "cache_tokens_reusable": reusable,
            "reuse_achieved_fraction": round(cached / reusable, 4) if reusable else None,
        },
        "decode_tokens_per_s": round(total(df["predicted_n"]) / predicted_ms * 1000, 2) if predicted_ms else None,
        "draft_acceptance": draft_acceptance(df),
        "predicted_ms": round(predicted_ms, 1),
        "wall_s": round(total(df["wall_s"]), 2),
        "grid": tasks_grid_markdown(df).splitlines(),
        "effective_length": effective_length(verdicts),
        "tasks": {
            task: {
                "per_length": _records(length_table(df[df["task"] == task], verdicts).drop(columns="task")),
                "cells": _records(cell_table(df[df["task"] == task]).drop(columns="task")),
                "verdict": verdicts[task].to_dict(),
            }
            for task in judged_tasks(df)
        },
        **({"confirmations": confirmed} if (confirmed := confirmation_summary(df)) else {}),
        "fingerprint": fingerprint,
    }


def render_report(results_path: Path, out_dir: Path) -> ReportPaths:
    """Write grid.md, cells.csv, summary.json, heatmap.png and report.html for `results_path`."""
    from niah.publish.card import write_card
    from niah.publish.report_figures import render_heatmap
    from niah.publish.report_page import render_page

    results_path, out_dir = Path(results_path), Path(out_dir)
    if not results_path.is_file():
        raise NiahError(f"no results file at {results_path}")
    fingerprint = read_header(results_path).get("fingerprint") or {}
    df = load_cells(results_path)
    if df.empty:
        raise NiahError(f"{results_path} holds no finished cells yet")
    grid_text = tasks_grid_markdown(df)
    summary = summarize(df, fingerprint)
    paths = ReportPaths(
        grid_md=out_dir / "grid.md",
        cells_csv=out_dir / "cells.csv",
        summary_json=out_dir / "summary.json",
        heatmap_png=out_dir / "heatmap.png",
        report_html=out_dir / "report.html",
        grid_markdown=grid_text,
        summary=summary,
    )
    png = render_heatmap({task: grid_frame(df[df["task"] == task]) for task in tasks_of(df)})
    with writing_in(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        paths.grid_md.write_text(grid_text, encoding="utf-8")
        df.assign(planted=df["planted"].map(_json_cell)).to_csv(paths.cells_csv, index=False)
        paths.summary_json.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        paths.heatmap_png.write_bytes(png)
        card = write_card(results_path, out_dir).read_text(encoding="utf-8")
        paths.report_html.write_text(render_page(df, summary, card, png), encoding="utf-8")
    return paths


def _json_cell(value: Any) -> str:
    """A list-valued cell (`planted`) as JSON text for the CSV; empty when absent (schema 1)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list) and value else ""


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))
