"""Paired comparison of two runs (A = before, B = after) made with the same settings, with the rule a
CI gate uses.

Same needle seed → same prompts, so trial t of a cell in A and trial t of the same (task, length,
depth) in B saw the same prompt: they are compared as a pair. Each pair is one of
- both answered (PASS, FAIL, WRONG_KEY, TRUNCATED): `lost` when A passed and B did not, `gained` the reverse;
- A answered, B not: `broken`, hard (CLAMPED, CONTEXT_ERROR, CRASH, TOKEN_MISMATCH) or transient
  (TIMEOUT, HTTP_ERROR: it counts against B all the same; `niah run --retry` reruns them); the
  reverse is `repaired`.
The pairs are pooled per cell (task, length, depth), per (task, length) and per task, and each pool
gets one `change`, decided in this order (the one gate rule):

- `broke`: a broken pair.
- `regression`: the exact one-sided sign test (exact McNemar on the discordant pairs, `sign_test`)
  gives p ≤ α for B being worse. A pooled level (length, task) is tested at ALPHA; a cell at ALPHA
  divided by the number of cells compared (Bonferroni), so that many cells do not raise the chance of
  a false alarm. Neither rule looks at anything but the lost and gained counts, so more trials never
  make the gate more lenient: a lost pair only lowers p, a concordant one leaves it.
- `fixed`: repaired pairs, and no more lost than gained; `improved`: the mirror of `regression`.
- `down` / `up`: more lost (gained) than gained (lost), not significant; `same`: otherwise.

Two runs that measured different things (`MEASURED` fingerprint keys, a shared screen's grid and key
list among them, or different needle values in a pair) are refused (exit 2) unless forced; A's
trials missing from B make the comparison incomplete (exit 1) unless missing trials are allowed, B
ran `--trials auto` and had decided their length sooner, or they confirm a screen cell B's screen
passed (B had nothing to confirm). A screen's confirmations pair with B's confirmations, never with
its screen cells. Each run's effective length (niah.publish.verdict, by its own threshold) is reported
beside the pools. `niah compare` exits 1 on any `broke` or `regression` at any level, 0 otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from niah.cells import SHARED_SUFFIX
from niah.errors import EXIT_FAIL_CELLS, EXIT_OK, NiahError
from niah.publish.grid import cell_label
from niah.publish.results import fingerprint_differences, redact, short
from niah.publish.runs import Run, confirmation_tasks, joined, load_run, task_verdicts
from niah.publish.stats import ANSWERED_OUTCOMES, UNDECIDED, sign_test
from niah.publish.verdict import Verdict, policy_of

REGRESSIONS = ("broke", "regression")
CHANGES = ("broke", "regression", "fixed", "improved", "down", "up", "same")
TRANSIENT = ("TIMEOUT", "HTTP_ERROR")
ALPHA = 0.05
"""One-sided level of the exact sign test for a length or a task; a cell's is ALPHA over the cells compared."""
MEASURED = ("needle_seed", "corpus", "corpus_sha256", "needle_spec", "task_files", "answer_budget",
            "answer_budget_explicit", "thinking", "temperature", "haystack", "shared")
"""Fingerprint keys that decide what a cell measures: runs differing in one are not paired (`shared`:
a screen's grid, trials and key list, on which every cell's key and prompt depend)."""
TRIAL_KEYS = ["task", "length", "depth", "trial"]
LEVELS = {"cells": ["task", "length", "depth"], "lengths": ["task", "length"], "tasks": ["task"]}
_COUNTS = ["pairs", "a_passes", "a_answered", "b_passes", "b_answered", "lost", "gained", "hard", "transient", "repaired"]


@dataclass(frozen=True)
class Comparison:
    """Two runs paired trial by trial, pooled per cell, per length and per task."""

    a: Run
    b: Run
    cells: pd.DataFrame
    """One row per common (task, length, depth): pair counts, `a_label`/`b_label`, `p_worse`/`p_better`
    (the sign test each way) and `change`."""
    lengths: pd.DataFrame
    """One row per common (task, length): the same counts pooled over depths."""
    tasks: pd.DataFrame
    """One row per common task: pooled over lengths and depths."""
    missing: pd.DataFrame
    """(task, length, depth, trial) of A's trials that B lacks."""
    only_b: pd.DataFrame
    """(task, length, depth, trial) of B's trials that A lacks (not judged)."""
    fingerprint_changes: list[str]
    """Dotted header keys that differ between the runs (what was changed on purpose, or not)."""
    verdicts: dict[str, dict[str, Verdict]]
    """Per run (`a`, `b`), per task: each length's verdict and the effective length."""
    decided_sooner: int = 0
    """A's trials B did not run because its `--trials auto` had decided their length (not missing)."""
    screen_passed: int = 0
    """A's confirmations B has none of because B's screen passed the cell (not missing)."""
    allow_missing: bool = False

    @property
    def regressions(self) -> pd.DataFrame:
        """Every pool (cell, length, task) judged `broke` or `regression`, with its `level`."""
        frames = [frame.assign(level=level) for level, frame in self.levels().items()]
        found = pd.concat(frames, ignore_index=True)
        return found[found["change"].isin(REGRESSIONS)]

    @property
    def incomplete(self) -> bool:
        return bool(len(self.missing)) and not self.allow_missing

    @property
    def exit_code(self) -> int:
        return EXIT_FAIL_CELLS if len(self.regressions) or self.incomplete else EXIT_OK

    @property
    def cell_alpha(self) -> float:
        """The level a cell is tested at: ALPHA over the number of cells compared (Bonferroni)."""
        return float(self.cells["alpha"].iloc[0])

    def levels(self) -> dict[str, pd.DataFrame]:
        return {"cells": self.cells, "lengths": self.lengths, "tasks": self.tasks}

    def counts(self, level: str = "cells") -> dict[str, int]:
        found = self.levels()[level]["change"].value_counts()
        return {c: int(found.get(c, 0)) for c in CHANGES}


def compare_runs(target_a: Path, target_b: Path, force: bool = False, allow_missing: bool = False) -> Comparison:
    """Load two run folders (or results files) and compare them (`compare`)."""
    return compare(load_run(Path(target_a)), load_run(Path(target_b)), force, allow_missing)


def compare(a: Run, b: Run, force: bool = False, allow_missing: bool = False) -> Comparison:
    """Pair two loaded runs trial by trial and judge every pool; NiahError (exit 2) when they have no
    trial in common, or measured different things and `force` is not given."""
    merged = a.cells.merge(b.cells, on=TRIAL_KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    pairs = merged[merged["_merge"] == "both"].copy()
    if pairs.empty:
        raise NiahError(
            f"{a.name} and {b.name} have no trial in common (same task, length, depth and trial): nothing to compare"
        )
    differences = measured_differences(a, b, pairs)
    if differences and not force:
        raise NiahError(
            f"{a.name} and {b.name} measured different things ({'; '.join(differences)}): their trials are not "
            "paired; rerun B with A's settings, or --force to compare anyway"
        )
    pairs = pairs.assign(**_pair_columns(pairs["outcome_a"], pairs["outcome_b"]))
    cells = len(pairs[LEVELS["cells"]].drop_duplicates())
    pools = {level: _pool(pairs, keys, ALPHA / cells if level == "cells" else ALPHA) for level, keys in LEVELS.items()}
    only = {side: merged.loc[merged["_merge"] == f"{side}_only", TRIAL_KEYS].reset_index(drop=True)
            for side in ("left", "right")}
    changes = fingerprint_differences(redact(a.fingerprint), redact(b.fingerprint))
    verdicts = {"a": task_verdicts(a.cells, a.fingerprint), "b": task_verdicts(b.cells, b.fingerprint)}
    left = only["left"]
    sooner, passed = excused(left, a, b, decided(verdicts["b"], b))
    return Comparison(a, b, pools["cells"], pools["lengths"], pools["tasks"],
                      left[~sooner & ~passed].reset_index(drop=True), only["right"], changes, verdicts,
                      int(sooner.sum()), int(passed.sum()), allow_missing)


def excused(left: pd.DataFrame, a: Run, b: Run, done: set[tuple[str, int]]) -> tuple[pd.Series, pd.Series]:
    """Which of A's trials that B lacks are not missing: (B's `--trials auto` had decided their length,
    they confirm a screen cell B's screen passed). A confirmation's length is its screen task's."""
    confirms = set(confirmation_tasks(a.cells))
    screen = [t + SHARED_SUFFIX if t in confirms else t for t in left["task"]]
    sooner = pd.Series([(t, n) in done for t, n in zip(screen, left["length"])], index=left.index, dtype=bool)
    b_passed = set(b.cells.loc[b.cells["outcome"] == "PASS", TRIAL_KEYS].itertuples(index=False, name=None))
    passed = pd.Series([t in confirms and (s, n, d, k) in b_passed
                        for s, (t, n, d, k) in zip(screen, left[TRIAL_KEYS].itertuples(index=False, name=None))],
                       index=left.index, dtype=bool)
    return sooner, passed & ~sooner


def decided(verdicts: dict[str, Verdict], run: Run) -> set[tuple[str, int]]:
    """(task, length) a `--trials auto` run stopped adding trials to: decided, or at its cap."""
    policy = policy_of(run.fingerprint)
    if not policy.auto:
        return set()
    return {(task, v.length) for task, verdict in verdicts.items() for v in verdict.lengths
            if v.decision != UNDECIDED or v.trials >= policy.max_trials}


def measured_differences(a: Run, b: Run, pairs: pd.DataFrame) -> list[str]:
    """What makes A's and B's trials measure different things: a MEASURED fingerprint key that differs
    (`key: A → B`), or paired trials whose needle values differ (different prompts)."""
    found = []
    for key in MEASURED:
        if key in a.fingerprint or key in b.fingerprint:
            old, new = a.fingerprint.get(key, "not recorded"), b.fingerprint.get(key, "not recorded")
            if key == "shared" and isinstance(old, dict) and isinstance(new, dict):  # name the part: grid, keys...
                parts = dict.fromkeys(name.split(".")[0] for name in fingerprint_differences(old, new))
                found += [f"shared screen {part}: {short(old.get(part, 'not recorded'))} → "
                          f"{short(new.get(part, 'not recorded'))}" for part in parts]
            elif json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
                found.append(f"{key}: {short(old)} → {short(new)}")
    values = pairs[["needle_value_a", "needle_value_b"]].fillna("")
    recorded = (values["needle_value_a"] != "") & (values["needle_value_b"] != "")
    differ = int((recorded & (values["needle_value_a"] != values["needle_value_b"])).sum())
    if differ:
        found.append(f"needle values differ in {differ} paired trial(s)")
    return found


def _pair_columns(a: pd.Series, b: pd.Series) -> dict[str, pd.Series]:
    """Per pair: 0/1 columns for the counts `_pool` sums (rule in the module doc)."""
    a_answered, b_answered = a.isin(ANSWERED_OUTCOMES), b.isin(ANSWERED_OUTCOMES)
    both = a_answered & b_answered
    broken = a_answered & ~b_answered
    columns = {
        "pairs": pd.Series(1, index=a.index),
        "a_passes": both & (a == "PASS"), "a_answered": both,
        "b_passes": both & (b == "PASS"), "b_answered": both,
        "lost": both & (a == "PASS") & (b != "PASS"),
        "gained": both & (a != "PASS") & (b == "PASS"),
        "hard": broken & ~b.isin(TRANSIENT),
        "transient": broken & b.isin(TRANSIENT),
        "repaired": ~a_answered & b_answered,
    }
    return {name: column.astype(int) for name, column in columns.items()}


def _pool(pairs: pd.DataFrame, keys: list[str], alpha: float) -> pd.DataFrame:
    """Sum the pair counts per `keys`, add labels (cells), the sign test's p, the level α and the change."""
    pooled = pairs.groupby(keys, sort=True)[_COUNTS].sum().reset_index()
    if "depth" in keys:
        labels = pairs.groupby(keys, sort=True).agg(a_label=("outcome_a", list), b_label=("outcome_b", list))
        labels = labels.map(cell_label).reset_index()
        factors = pairs.groupby(keys, sort=True).agg(a_factor=("factor_a", joined), b_factor=("factor_b", joined))
        pooled = pooled.merge(labels, on=keys).merge(factors.reset_index(), on=keys)
    pooled["p_worse"] = [sign_test(r["lost"], r["gained"]) for r in pooled.to_dict("records")]
    pooled["p_better"] = [sign_test(r["gained"], r["lost"]) for r in pooled.to_dict("records")]
    pooled["alpha"] = alpha
    pooled["change"] = [classify(r) for r in pooled.to_dict("records")]
    return pooled.sort_values(keys, key=_task_order).reset_index(drop=True)


def classify(row: dict[str, Any]) -> str:
    """The `change` of one pool from its pair counts, its sign test's p both ways and its `alpha`
    (rule in the module doc)."""
    if row["hard"] or row["transient"]:
        return "broke"
    lost, gained = row["lost"], row["gained"]
    if row["p_worse"] <= row["alpha"]:
        return "regression"
    if row["repaired"] and lost <= gained:
        return "fixed"
    if row["p_better"] <= row["alpha"]:
        return "improved"
    return "down" if lost > gained else "up" if gained > lost else "same"


def change_of(pairs: list[tuple[str, str]], alpha: float = ALPHA) -> str:
    """The `change` of one pool of (A outcome, B outcome) pairs tested at `alpha`."""
    a, b = pd.Series([p[0] for p in pairs], dtype=object), pd.Series([p[1] for p in pairs], dtype=object)
    row = {name: int(column.sum()) for name, column in _pair_columns(a, b).items()}
    return classify({**row, "p_worse": sign_test(row["lost"], row["gained"]),
                     "p_better": sign_test(row["gained"], row["lost"]), "alpha": alpha})


def _task_order(column: pd.Series) -> pd.Series:
    if column.name != "task":
        return column
    return column.map(lambda t: ("0" if t == "single" else "1") + t)
