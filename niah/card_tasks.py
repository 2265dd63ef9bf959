"""What each task of a run planted and asked, and its answer budget, read back from the recorded
cells for the card (`niah.card`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from niah.cells import BUDGET_PER_EXTRA_ANSWER
from niah.errors import NiahError
from niah.results import SINGLE_TASK
from niah.tasks import parse_task


def task_budgets(df: pd.DataFrame, fp: dict[str, Any]) -> dict[str, int]:
    """Each task's answer budget: `--answer-budget` for every task when one was given, else the
    default plus BUDGET_PER_EXTRA_ANSWER per expected value past the first (the values each cell
    recorded in `needle_value`, comma-joined). Empty when the run recorded no budget."""
    base = fp.get("answer_budget")
    if not isinstance(base, int):
        return {}
    budgets = {}
    for task, group in df.groupby("task"):
        answers = max((len(v.split(",")) for v in group["needle_value"] if isinstance(v, str) and v), default=1)
        budgets[str(task)] = base if fp.get("answer_budget_explicit") else base + BUDGET_PER_EXTRA_ANSWER * (answers - 1)
    return budgets


def task_example(df: pd.DataFrame, fp: dict[str, Any], task: str) -> tuple[str, bool]:
    """The task's first cell (shortest length, lowest depth, trial 0) as an example: every sentence it
    planted with its role and depth, then its question (empty when the cells recorded no sentences);
    and whether today's generator makes those same sentences from the recorded seed."""
    cells = df[df["task"] == task].sort_values(["length", "depth", "trial"])
    first = cells.iloc[0]
    planted = first["planted"] if isinstance(first["planted"], list) else []
    if not planted:
        return "", False
    sentences = ", ".join(f"\"{p['text']}\" ({p.get('role', 'target')}, {float(p.get('depth_actual', p.get('depth', 0))):.0f}%)"
                          for p in planted)
    question = _question(fp, task, first, planted)
    asked = f"; asked \"{question}\"" if question else "; its question is not recorded"
    return (f"at {int(first['length']):,} tokens, depth {float(first['depth']):g}%, trial {int(first['trial'])}: "
            f"planted {sentences}{asked}"), question is not None


def _question(fp: dict[str, Any], task: str, cell: pd.Series, planted: list[dict[str, Any]]) -> str | None:
    """The cell's question, regenerated from the recorded seed; None unless the regenerated sentences
    are the recorded ones (another niah, a custom needle or task file: not known here)."""
    seed = fp.get("needle_seed")
    if not isinstance(seed, int) or (task == SINGLE_TASK and fp.get("needle_spec") not in (None, "default")):
        return None
    try:
        needle = parse_task(task).needle(seed, int(cell["length"]), float(cell["depth"]), int(cell["trial"]))
    except NiahError:
        return None
    texts = [p.text for p in needle.plants] or [needle.text]
    return needle.question if sorted(texts) == sorted(str(p.get("text")) for p in planted) else None
