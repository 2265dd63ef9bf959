"""A finished (or partial) run read back for report, card and compare: its header, one tidy cell
frame and the tables built from it (per cell, per length, draft acceptance).

Results without a `task` column (every run before tasks existed) are one task, `single`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from niah.cells import SHARED_SUFFIX
from niah.errors import NiahError
from niah.publish.grid import cell_label, grid_markdown, joined
from niah.publish.results import (
    NAMED_OUTCOMES,
    SINGLE_TASK,
    load_cells,
    read_facts,
    read_header,
)
from niah.publish.stats import ANSWERED_OUTCOMES, pass_tally
from niah.publish.verdict import Verdict, judge_lengths, policy_of

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True)
class Run:
    """One run's results file, header and cells."""

    name: str
    """The run folder as the user named it (for messages; never made absolute)."""
    results_path: Path
    header: dict[str, Any]
    cells: pd.DataFrame
    """load_cells() with a `task` column filled (`single` when the results have none)."""
    fingerprint: dict[str, Any]
    """The header's fingerprint with the server facts recorded once servers were up."""


def results_path_of(target: Path) -> Path:
    """`target/results.jsonl`, or `target` itself when it is a file; NiahError when neither exists."""
    target = Path(target)
    if target.is_file():
        return target
    if not target.exists():
        raise NiahError(f"no run folder {target}")
    results = target / RESULTS_NAME
    if not results.is_file():
        raise NiahError(f"no {RESULTS_NAME} in {target}")
    return results


def load_run(target: Path) -> Run:
    """Read a run folder (or its results file); NiahError for a missing, malformed or empty run."""
    path = results_path_of(target)
    header = read_header(path)
    cells = with_tasks(load_cells(path))
    if cells.empty:
        raise NiahError(f"{path} holds no finished cells yet")
    return Run(name=str(target), results_path=path, header=header, cells=cells, fingerprint=read_facts(path))


def with_tasks(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of `df` whose `task` column is filled: missing or empty means `single`."""
    df = df.copy()
    if "task" not in df.columns:
        df["task"] = SINGLE_TASK
    df["task"] = df["task"].map(lambda t: t if isinstance(t, str) and t else SINGLE_TASK)
    return df


def tasks_of(df: pd.DataFrame) -> list[str]:
    """The tasks present, `single` first, then by name."""
    return sorted(df["task"].unique(), key=lambda t: (t != SINGLE_TASK, t))


def confirmation_tasks(df: pd.DataFrame) -> list[str]:
    """The tasks that hold a shared screen's confirmations (`single` beside `single@shared`,
    niah.run.confirm): records of their own, never judged as a task."""
    present = set(df["task"])
    return [t for t in tasks_of(df) if t + SHARED_SUFFIX in present]


def judged_tasks(df: pd.DataFrame) -> list[str]:
    """The tasks a run's verdicts, effective length and exit code are made of: all but confirmations."""
    confirms = confirmation_tasks(df)
    return [t for t in tasks_of(df) if t not in confirms]


def tasks_grid_markdown(df: pd.DataFrame) -> str:
    """The grid, one per task: plain when the run holds only `single`, else each grid under a
    `task NAME` line, blank lines between."""
    df = with_tasks(df)
    tasks = tasks_of(df)
    if tasks == [SINGLE_TASK]:
        return grid_markdown(df)
    return "\n".join(f"task {task}\n{grid_markdown(df[df['task'] == task])}" for task in tasks)


def length_table(df: pd.DataFrame, verdicts: dict[str, Verdict]) -> pd.DataFrame:
    """One row per (task, length), depths pooled: trials, passes, answered trials (`stats.pass_tally`),
    pass rate, the ends of the length's confidence sequence and its decision (from `verdicts`, the
    one interval every output prints), the other outcomes and the mean score (fraction of expected
    values answered) over answered trials."""
    judged = {(task, v.length): v for task, verdict in verdicts.items() for v in verdict.lengths}
    rows = []
    for (task, length), group in with_tasks(df).groupby(["task", "length"], sort=True):
        answered = group[group["outcome"].isin(ANSWERED_OUTCOMES)]
        scores = pd.to_numeric(answered["score"], errors="coerce") if "score" in answered else pd.Series(dtype=float)
        v = judged[(task, int(length))]
        rows.append(
            {"task": task, "length": int(length), **_rates(list(group["outcome"])),
             "low": v.low, "high": v.high, "decision": v.decision,
             "mean_score": round(float(scores.mean()), 4) if scores.notna().any() else None}
        )
    return pd.DataFrame(rows)


def task_verdicts(df: pd.DataFrame, fingerprint: dict[str, Any]) -> dict[str, Verdict]:
    """Per task (a screen's confirmations are not one), each length judged against the run's threshold
    (its recorded trial policy, else RULER's 85.6% over independent trials) and the effective length."""
    df, policy = with_tasks(df), policy_of(fingerprint)
    return {task: judge_lengths(zip(part["length"], part["trial"], part["outcome"]), policy)
            for task in judged_tasks(df) for part in [df[df["task"] == task]]}


def effective_length(verdicts: dict[str, Verdict]) -> int | None:
    """The run's effective length: the shortest of its tasks' (None when a task has none)."""
    lengths = [v.effective_length for v in verdicts.values()]
    return None if not lengths or None in lengths else min(lengths)  # type: ignore[type-var]


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, length, depth): trials, passes, answered trials, other outcomes, label,
    factor and profile (`_rates`); intervals are per length only (`length_table`)."""
    rows = []
    for (task, length, depth), group in df.groupby(["task", "length", "depth"], sort=True):
        outcomes = list(group["outcome"])
        rows.append(
            {"task": task, "length": int(length), "depth": float(depth), **_rates(outcomes),
             "label": cell_label(outcomes), "factor": joined(group["factor"]), "profile": joined(group["profile"])}
        )
    return pd.DataFrame(rows)


def _rates(outcomes: list[str]) -> dict[str, Any]:
    """The pass-rate columns of a group of trials: `answered` is the denominator (PASS, FAIL,
    WRONG_KEY and TRUNCATED); `other` names every outcome beyond PASS and FAIL with its count, e.g.
    `WRONG_KEY:1,TRUNCATED:2`."""
    passes, answered = pass_tally(outcomes)
    others = [o for o in NAMED_OUTCOMES if o in outcomes]
    return {
        "trials": len(outcomes),
        "passes": passes,
        "answered": answered,
        "pass_rate": round(passes / answered, 4) if answered else None,
        "other": ",".join(f"{o}:{outcomes.count(o)}" for o in others),
    }


def draft_acceptance(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per length: drafted and accepted tokens and the acceptance rate, for cells whose server drafted
    (speculative decoding, e.g. --spec-type draft-mtp); empty when none did."""
    drafted = df[pd.to_numeric(df["draft_n"]).fillna(0) > 0]
    rows = []
    for length, group in drafted.groupby("length"):
        n, accepted = total(group["draft_n"]), total(group["draft_n_accepted"])
        rows.append({"length": int(length), "cells": len(group), "draft_n": n, "draft_n_accepted": accepted,
                     "acceptance": round(accepted / n, 4) if n else None})
    return rows


def draft_markdown(rows: list[dict[str, Any]]) -> str:
    """The "MTP acceptance by context length" table (empty string without drafted cells)."""
    if not rows:
        return ""
    lines = ["| length | cells | drafted | accepted | acceptance |", "|---|---|---|---|---|"]
    lines += [f"| {r['length']:,} | {r['cells']} | {r['draft_n']:,} | {r['draft_n_accepted']:,} | "
              f"{r['acceptance']:.0%} |" for r in rows]
    return "\n".join(lines) + "\n"


def total(column: pd.Series) -> int | float:
    """The column's sum, missing values as 0 (an int for whole numbers)."""
    value = float(pd.to_numeric(column).fillna(0).sum())
    return int(value) if value.is_integer() else value
