"""Paired comparison of two runs (A = before, B = after) made with the same settings, with the rule a
CI gate uses.

Same needle seed → same prompts, so trial t of a cell in A and trial t of the same (task, length,
depth) in B saw the same prompt: they are compared as a pair. Each pair is one of
- both answered (PASS, FAIL, WRONG_KEY, TRUNCATED): `lost` when A passed and B did not, `gained` the reverse;
- A answered, B not: `broken`, hard (CLAMPED, CONTEXT_ERROR, CRASH, TOKEN_MISMATCH) or transient
  (TIMEOUT, HTTP_ERROR); the reverse is `repaired`.
The pairs are pooled per cell (task, length, depth), per (task, length) and per task, and each pool
gets one `change`, decided in this order:

- `broke`: a hard broken pair, or more than one transient one (a single TIMEOUT is `transient`).
- `regression`: more lost than gained, and the exact one-sided sign test (McNemar on the discordant
  pairs, `stats.sign_test`) gives p ≤ 0.05, or B passes none of the answered pairs (a collapse:
  PASS → FAIL, 3/3 → 0/3).
- `fixed`: repaired pairs and no regression; `improved`: the mirror of `regression`.
- `transient`: one TIMEOUT / HTTP_ERROR where A answered (rerun B with `niah run --retry`).
- `down` / `up`: more lost (gained) than gained (lost), not significant; `same`: otherwise.

Two runs that measured different things (`MEASURED` fingerprint keys, or different needle values in
a pair) are refused (exit 2) unless forced; A's trials missing from B make the comparison
incomplete (exit 1) unless missing trials are allowed, or B ran `--trials auto` and had decided
their length sooner. Each run's effective length (niah.publish.verdict, by its own threshold) is reported
beside the pools. `niah compare` exits 1 on any `broke` or
`regression` at any level, 0 otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from niah.errors import EXIT_FAIL_CELLS, EXIT_OK, NiahError, writing_in
from niah.publish.grid import cell_label
from niah.publish.results import fingerprint_differences, redact, short
from niah.publish.runs import Run, effective_length, joined, load_run, task_verdicts, tasks_of
from niah.publish.stats import ANSWERED_OUTCOMES, sign_test
from niah.publish.verdict import UNDECIDED, Verdict, policy_of

REGRESSIONS = ("broke", "regression")
CHANGES = ("broke", "regression", "fixed", "improved", "transient", "down", "up", "same")
TRANSIENT = ("TIMEOUT", "HTTP_ERROR")
ALPHA = 0.05
"""One-sided level of the sign test."""
MEASURED = ("needle_seed", "corpus", "corpus_sha256", "needle_spec", "task_files", "answer_budget",
            "answer_budget_explicit", "thinking", "temperature", "haystack")
"""Fingerprint keys that decide what a cell measures: runs differing in one are not paired."""
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
    pools = {level: _pool(pairs, keys) for level, keys in LEVELS.items()}
    only = {side: merged.loc[merged["_merge"] == f"{side}_only", TRIAL_KEYS].reset_index(drop=True)
            for side in ("left", "right")}
    changes = fingerprint_differences(redact(a.fingerprint), redact(b.fingerprint))
    verdicts = {"a": task_verdicts(a.cells, a.fingerprint), "b": task_verdicts(b.cells, b.fingerprint)}
    done, left = decided(verdicts["b"], b), only["left"]
    sooner = pd.Series([(t, n) in done for t, n in zip(left["task"], left["length"])], index=left.index, dtype=bool)
    return Comparison(a, b, pools["cells"], pools["lengths"], pools["tasks"], left[~sooner].reset_index(drop=True),
                      only["right"], changes, verdicts, int(sooner.sum()), allow_missing)


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
            if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
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


def _pool(pairs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sum the pair counts per `keys`, add labels (cells), the sign test's p and the change."""
    pooled = pairs.groupby(keys, sort=True)[_COUNTS].sum().reset_index()
    if "depth" in keys:
        labels = pairs.groupby(keys, sort=True).agg(a_label=("outcome_a", list), b_label=("outcome_b", list))
        labels = labels.map(cell_label).reset_index()
        factors = pairs.groupby(keys, sort=True).agg(a_factor=("factor_a", joined), b_factor=("factor_b", joined))
        pooled = pooled.merge(labels, on=keys).merge(factors.reset_index(), on=keys)
    pooled["p_worse"] = [sign_test(r["lost"], r["gained"]) for r in pooled.to_dict("records")]
    pooled["p_better"] = [sign_test(r["gained"], r["lost"]) for r in pooled.to_dict("records")]
    pooled["change"] = [classify(r) for r in pooled.to_dict("records")]
    return pooled.sort_values(keys, key=_task_order).reset_index(drop=True)


def classify(row: dict[str, Any]) -> str:
    """The `change` of one pool from its pair counts (rule in the module doc)."""
    if row["hard"] or row["transient"] > 1:
        return "broke"
    lost, gained = row["lost"], row["gained"]
    if lost > gained and (row["p_worse"] <= ALPHA or not row["b_passes"]):
        return "regression"
    if row["repaired"]:
        return "fixed"
    if gained > lost and (row["p_better"] <= ALPHA or not row["a_passes"]):
        return "improved"
    if row["transient"]:
        return "transient"
    return "down" if lost > gained else "up" if gained > lost else "same"


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison for machines: both runs, the verdict, every pool at every level, missing trials."""
    c = comparison
    out: dict[str, Any] = {
        "a": {"run": c.a.name, "trials": len(c.a.cells)},
        "b": {"run": c.b.name, "trials": len(c.b.cells)},
        "paired_trials": int(c.cells["pairs"].sum()),
        "changes": {level: c.counts(level) for level in LEVELS},
        "regressions": len(c.regressions),
        "missing": len(c.missing),
        "incomplete": c.incomplete,
        "exit_code": c.exit_code,
        "fingerprint_changes": c.fingerprint_changes,
        "effective_length": {side: effective_length(v) for side, v in c.verdicts.items()},
        "verdicts": {side: {task: v.to_dict() for task, v in per.items()} for side, per in c.verdicts.items()},
        "decided_sooner": c.decided_sooner,
    }
    for level, frame in c.levels().items():
        out[level] = json.loads(frame.to_json(orient="records"))
    out["missing_trials"] = c.missing.to_dict("records")
    out["only_b"] = c.only_b.to_dict("records")
    return out


def to_markdown(comparison: Comparison) -> str:
    """The verdict, then one table per level (cells, lengths pooled over depths, tasks), then what
    only one run has."""
    c = comparison
    pairs = int(c.cells["pairs"].sum())
    lines = [
        f"niah compare: A = {c.a.name} ({len(c.a.cells)} trials), B = {c.b.name} ({len(c.b.cells)} trials)",
        f"{pairs} paired trials in {len(c.cells)} cells; "
        + "; ".join(f"{level}: {_counts_text(c.counts(level))}" for level in LEVELS) + ".",
        f"verdict: {verdict(c)}",
    ]
    if c.fingerprint_changes:
        lines.append(f"runs differ in: {', '.join(c.fingerprint_changes)}")
    several = len(tasks_of(c.cells)) > 1
    for task in c.verdicts["a"]:
        sides = {side: c.verdicts[side].get(task) for side in ("a", "b")}
        named = {side: f"{v.effective_length:,}" if v and v.effective_length else "none" for side, v in sides.items()}
        lines.append(f"effective length{f' ({task})' if several else ''}: A {named['a']} → B {named['b']}"
                     + "".join(f"; {side.upper()}: {late}" for side, v in sides.items() if v for late in v.late))
    if c.decided_sooner:
        lines.append(f"{c.decided_sooner} of A's trials not in B: B's --trials auto had decided their length (not missing)")
    for level, frame in c.levels().items():
        if level == "tasks" and not several:
            continue
        keys = [k for k in LEVELS[level] if k != "task" or several]
        head = keys + (["A", "B", "factor A", "factor B"] if level == "cells" else ["A pass/answered", "B pass/answered"])
        head += ["lost", "gained", "p (sign test)", "other", "change"]
        title = {"cells": "per cell", "lengths": "per length (depths pooled)", "tasks": "per task (all pooled)"}[level]
        lines += ["", f"{title}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in frame.to_dict("records"):
            values = [f"{row[k]:g}%" if k == "depth" else str(row[k]) for k in keys]
            if level == "cells":
                values += [row["a_label"], row["b_label"], row["a_factor"], row["b_factor"]]
            else:
                values += [f"{row['a_passes']}/{row['a_answered']}", f"{row['b_passes']}/{row['b_answered']}"]
            p = row["p_worse"] if row["lost"] >= row["gained"] else row["p_better"]
            mark = f"**{row['change']}**" if row["change"] in REGRESSIONS else row["change"]
            values += [str(row["lost"]), str(row["gained"]), f"{p:.3g}" if row["lost"] + row["gained"] else "-",
                       _other_text(row), mark]
            lines.append("| " + " | ".join(values) + " |")
    for side, frame in (("A", c.missing), ("B", c.only_b)):
        if len(frame):
            listed = ", ".join(f"{r['task']} {r['length']}@{r['depth']:g}%#{r['trial']}" for r in frame.to_dict("records"))
            lines.append(f"\nonly in {side} (not compared): {listed}")
    return "\n".join(lines) + "\n"


def verdict(comparison: Comparison) -> str:
    """One line: regressions by level, and whether B is missing trials A has."""
    c = comparison
    found = c.regressions
    parts = []
    if len(found):
        per_level = ", ".join(f"{n} {level}" for level, n in found["level"].value_counts().reindex(list(LEVELS)).dropna().astype(int).items())
        parts.append(f"REGRESSION ({per_level} broke or regressed)")
    if len(c.missing):
        parts.append(f"incomplete: {len(c.missing)} cells of A missing from B"
                     + (" (allowed)" if c.allow_missing else "; rerun B to finish it, or --allow-missing"))
    return "; ".join(parts) if parts else "no regression"


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items() if n)


def _other_text(row: dict[str, Any]) -> str:
    parts = [f"{name} {row[name]}" for name in ("hard", "transient", "repaired") if row[name]]
    return ", ".join(parts) or "-"


CHANGE_COLOURS = {
    "broke": "#212121",
    "transient": "#8d6e63",
    "regression": "#c62828",
    "down": "#f9a825",
    "same": "#bdbdbd",
    "up": "#aed581",
    "improved": "#2e7d32",
    "fixed": "#1565c0",
    "-": "#f5f5f5",
}


def render_heatmap(comparison: Comparison) -> bytes:
    """PNG bytes: one square per length × depth (a panel per task) coloured by change, labelled A→B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from niah.publish.report_figures import png_bytes

    cells = comparison.cells
    tasks = tasks_of(cells)
    names = list(CHANGE_COLOURS)
    depths = sorted(cells["depth"].unique())
    lengths = sorted(cells["length"].unique())
    width = max(6.0, 1.5 * len(depths) + 3.5)
    height = max(2.5, (0.55 * len(lengths) + 1.2) * len(tasks) + 0.6)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(width, height), dpi=110, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        grid = cells[cells["task"] == task].set_index(["length", "depth"])
        codes = [[names.index(grid.at[(n, d), "change"]) if (n, d) in grid.index else names.index("-")
                  for d in depths] for n in lengths]
        ax.imshow(codes, cmap=ListedColormap(list(CHANGE_COLOURS.values())), vmin=0, vmax=len(names) - 1, aspect="auto")
        for row, n in enumerate(lengths):
            for col, d in enumerate(depths):
                if (n, d) not in grid.index:
                    continue
                a, b = grid.at[(n, d), "a_label"], grid.at[(n, d), "b_label"]
                dark = grid.at[(n, d), "change"] in ("broke", "regression", "improved", "fixed")
                ax.text(col, row, a if a == b else f"{a}\n→ {b}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_yticks(range(len(lengths)), [f"{int(n):,}" for n in lengths])
        ax.set_ylabel("prompt length (tokens)")
        names_ab = f"A {Path(comparison.a.name).name} → B {Path(comparison.b.name).name}"
        ax.set_title(names_ab + ("" if len(tasks) == 1 else f" (task {task})"), fontsize=10)
    axes[-1, 0].set_xlabel("needle depth (% of haystack)")
    present = [c for c in names if c in set(cells["change"])]
    handles = [Patch(color=CHANGE_COLOURS[c], label=c) for c in present]
    axes[0, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return png_bytes(fig)


def write_outputs(comparison: Comparison, out_dir: Path) -> list[Path]:
    """Write compare.md, compare.json and compare.png into `out_dir`."""
    out_dir = Path(out_dir)
    paths = [out_dir / "compare.md", out_dir / "compare.json", out_dir / "compare.png"]
    with writing_in(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(to_markdown(comparison), encoding="utf-8")
        paths[1].write_text(json.dumps(to_json(comparison), indent=2, default=str) + "\n", encoding="utf-8")
        paths[2].write_bytes(render_heatmap(comparison))
    return paths


def _task_order(column: pd.Series) -> pd.Series:
    if column.name != "task":
        return column
    return column.map(lambda t: ("0" if t == "single" else "1") + t)
