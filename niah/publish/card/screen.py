"""The card's and summary.json's account of a shared-haystack screen (`--haystack shared`): what its
prompts held, and each confirmed cell's screen outcome beside its single-needle one (`--confirm`).
A confirmation is a record of its own: it never joins a task's verdict or the effective length."""

from __future__ import annotations

from typing import Any

import pandas as pd

from niah.cells import SHARED_SUFFIX


def shared_meaning(cells: pd.DataFrame) -> str:
    """What a shared-haystack task planted and asked: how many keyed needles its prompts held."""
    held = cells["planted"].map(lambda p: len(p) if isinstance(p, list) else 0)
    counts = f"{held.min()}" if held.min() == held.max() else f"{held.min()}–{held.max()}"
    return (
        "a screen on one shared haystack per trial (`--haystack shared`): one keyed number (\"The special magic "
        "number for KEY is: N.\") per cell of the grid, each cell its own key and value; the prompt of a cell is "
        f"that haystack cut at its length (holding {counts} keyed numbers), asked the key planted at its depth; "
        "PASS = the asked number and no other planted one; the questions on one haystack count as one cluster "
        "in the pass-rate bounds"
    )


def confirmed_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Each screen cell that has a single-needle confirmation, one row with both: the screen's columns
    as they are, the confirmation's suffixed `_confirmed`."""
    screen = df[df["task"].str.endswith(SHARED_SUFFIX)]
    single = df.assign(task=df["task"] + SHARED_SUFFIX)
    return screen.merge(single, on=["task", "length", "depth", "trial"], suffixes=("", "_confirmed"))


def confirmation_summary(df: pd.DataFrame) -> dict[str, Any] | None:
    """summary.json's `confirmations`: each confirmed screen cell's outcome beside its confirmation's,
    and how many agree on PASS or not (None without confirmations)."""
    pairs = confirmed_pairs(df)
    if pairs.empty:
        return None
    rows = pairs.sort_values(["task", "length", "depth", "trial"])
    return {
        "cells": [{"task": r.task, "length": int(r.length), "depth": float(r.depth), "trial": int(r.trial),
                   "screen": r.outcome, "confirmation": r.outcome_confirmed} for r in rows.itertuples()],
        "agree": agreeing(pairs),
    }


def agreeing(pairs: pd.DataFrame) -> int:
    """Confirmed cells whose screen outcome and confirmation agree on PASS or not."""
    return int((pairs["outcome"].eq("PASS") == pairs["outcome_confirmed"].eq("PASS")).sum())


def confirmations(df: pd.DataFrame) -> str:
    """Each screen cell that was rerun one needle per prompt: the screen's outcome beside the
    confirmation's (empty without confirmations)."""
    pairs = confirmed_pairs(df)
    if pairs.empty:
        return ""
    lines = ["Confirmations (`--confirm`: the screen's cell rerun with one needle per prompt and a fresh prefill):\n",
             "| length | depth | trial | screen | one needle |", "|---|---|---|---|---|"]
    lines += [f"| {int(r.length):,} | {r.depth:g}% | {int(r.trial)} | {r.outcome} | {r.outcome_confirmed} |"
              for r in pairs.sort_values(["length", "depth", "trial"]).itertuples()]
    return "\n".join(lines) + (f"\n\nThe screen's verdict (PASS or not) agrees with the confirmation in {agreeing(pairs)} "
                              f"of {len(pairs)} cells; confirmations stand beside the screen and are not pooled into "
                              "its per-length verdict.\n")
