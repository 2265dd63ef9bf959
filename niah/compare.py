"""Cell-by-cell comparison of two runs (A = before, B = after), with the regression rule a CI gate uses.

Cells are matched on (task, length, depth); cells only one run has are listed, never judged.
Each common cell gets one `change`, decided in this order:

- `broke`: B has a larger share of non-retrieval trials (CLAMPED, CRASH, TIMEOUT, ...) than A.
  The launch got worse, so this counts as a regression even though no retrieval was scored
  (e.g. PASS in A, CLAMPED in B). Non-retrieval outcomes are never folded into FAIL.
- `regression`: B's pass rate (over its PASS/FAIL trials) is below A's, and either both
  cells hold a single retrieval trial (PASS -> FAIL), or their 95% Wilson score intervals
  do not overlap (B's upper bound below A's lower bound).
- `fixed`: B has a smaller share of non-retrieval trials than A.
- `improved`: the mirror of `regression`.
- `down` / `up`: the pass rate moved, within the trials' confidence bounds (not judged).
- `same`: otherwise.

`niah compare` exits 1 when any cell is `broke` or `regression`, 0 otherwise, and 2 on
bad input (a missing or malformed run, or no cell in common).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from niah.errors import EXIT_FAIL_CELLS, EXIT_OK, NiahError
from niah.results import fingerprint_differences, redact
from niah.runs import Run, cell_table, load_run, tasks_of

REGRESSIONS = ("broke", "regression")
CHANGES = ("broke", "regression", "fixed", "improved", "down", "up", "same")
KEYS = ["task", "length", "depth"]
_SIDE_COLUMNS = ["label", "trials", "passes", "retrieval", "non_retrieval", "wilson_low", "wilson_high", "other", "factor"]


@dataclass(frozen=True)
class Comparison:
    """Two runs matched cell by cell."""

    a: Run
    b: Run
    cells: pd.DataFrame
    """One row per common (task, length, depth): `a_*` and `b_*` columns and `change`."""
    only_a: pd.DataFrame
    """(task, length, depth) of cells only A has."""
    only_b: pd.DataFrame
    """(task, length, depth) of cells only B has."""
    fingerprint_changes: list[str]
    """Dotted header keys that differ between the runs (what was changed on purpose, or not)."""

    @property
    def regressions(self) -> pd.DataFrame:
        return self.cells[self.cells["change"].isin(REGRESSIONS)]

    @property
    def exit_code(self) -> int:
        return EXIT_FAIL_CELLS if len(self.regressions) else EXIT_OK

    def counts(self) -> dict[str, int]:
        found = self.cells["change"].value_counts()
        return {c: int(found.get(c, 0)) for c in CHANGES}


def compare_runs(target_a: Path, target_b: Path) -> Comparison:
    """Load two run folders (or results files) and compare them; NiahError when nothing is in common."""
    return compare(load_run(Path(target_a)), load_run(Path(target_b)))


def compare(a: Run, b: Run) -> Comparison:
    """Match two loaded runs cell by cell; NiahError when they have no cell in common."""
    table_a, table_b = cell_table(a.cells), cell_table(b.cells)
    merged = table_a.merge(table_b, on=KEYS, how="outer", suffixes=("_a", "_b"), indicator=True)
    common = merged[merged["_merge"] == "both"]
    if common.empty:
        raise NiahError(
            f"{a.name} and {b.name} have no cell in common (same task, length and depth): nothing to compare"
        )
    cells = pd.DataFrame({k: common[k] for k in KEYS})
    for side in ("a", "b"):
        for column in _SIDE_COLUMNS:
            cells[f"{side}_{column}"] = common[f"{column}_{side}"]
    cells["change"] = [classify(row) for row in cells.to_dict("records")]
    cells = cells.sort_values(KEYS, key=_task_order).reset_index(drop=True)
    only = {side: merged.loc[merged["_merge"] == f"{side}_only", KEYS].reset_index(drop=True) for side in ("left", "right")}
    differences = fingerprint_differences(redact(a.fingerprint), redact(b.fingerprint))
    return Comparison(a, b, cells, only["left"], only["right"], differences)


def classify(row: dict[str, Any]) -> str:
    """The `change` of one common cell from its `a_*`/`b_*` counts (rule in the module doc)."""
    share_a = row["a_non_retrieval"] / row["a_trials"]
    share_b = row["b_non_retrieval"] / row["b_trials"]
    if share_b > share_a:
        return "broke"
    retrieval = _retrieval_change(row)
    if retrieval == "regression":
        return retrieval
    if share_b < share_a:
        return "fixed"
    return retrieval


def _retrieval_change(row: dict[str, Any]) -> str:
    n_a, n_b = int(row["a_retrieval"]), int(row["b_retrieval"])
    if not n_a or not n_b:
        return "same"
    rate_a, rate_b = row["a_passes"] / n_a, row["b_passes"] / n_b
    if rate_a == rate_b:
        return "same"
    single = n_a == 1 and n_b == 1
    if rate_b < rate_a:
        return "regression" if single or row["b_wilson_high"] < row["a_wilson_low"] else "down"
    return "improved" if single or row["a_wilson_high"] < row["b_wilson_low"] else "up"


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison for machines: both runs, counts, every common cell, cells only one run has."""
    cells = comparison.cells.astype(object).where(comparison.cells.notna(), None)
    return {
        "a": {"run": comparison.a.name, "cells": len(comparison.a.cells)},
        "b": {"run": comparison.b.name, "cells": len(comparison.b.cells)},
        "common_cells": len(comparison.cells),
        "changes": comparison.counts(),
        "regressions": len(comparison.regressions),
        "exit_code": comparison.exit_code,
        "fingerprint_changes": comparison.fingerprint_changes,
        "cells": cells.to_dict("records"),
        "only_a": comparison.only_a.to_dict("records"),
        "only_b": comparison.only_b.to_dict("records"),
    }


def to_markdown(comparison: Comparison) -> str:
    """A summary line, the table of every common cell, and what only one run has."""
    c = comparison
    counts = ", ".join(f"{name} {n}" for name, n in c.counts().items() if n)
    verdict = f"{len(c.regressions)} regression(s)" if len(c.regressions) else "no regression"
    lines = [
        f"niah compare: A = {c.a.name} ({len(c.a.cells)} cells), B = {c.b.name} ({len(c.b.cells)} cells)",
        f"{len(c.cells)} cells in common: {counts}; {verdict}.",
    ]
    if c.fingerprint_changes:
        lines.append(f"runs differ in: {', '.join(c.fingerprint_changes)}")
    several = len(tasks_of(c.cells)) > 1
    bounds = bool((c.cells["a_retrieval"] > 1).any() or (c.cells["b_retrieval"] > 1).any())
    head = (["task"] if several else []) + ["length", "depth", "A", "B", "factor A", "factor B"]
    head += (["A 95% Wilson", "B 95% Wilson"] if bounds else []) + ["change"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in c.cells.to_dict("records"):
        mark = f"**{row['change']}**" if row["change"] in REGRESSIONS else row["change"]
        values = [row["task"]] if several else []
        values += [str(row["length"]), f"{row['depth']:g}%", row["a_label"], row["b_label"], row["a_factor"], row["b_factor"]]
        values += ([_bounds(row, "a"), _bounds(row, "b")] if bounds else []) + [mark]
        lines.append("| " + " | ".join(values) + " |")
    for side, frame in (("A", c.only_a), ("B", c.only_b)):
        if len(frame):
            listed = ", ".join(f"{r['length']}@{r['depth']:g}%" for r in frame.to_dict("records"))
            lines.append(f"\nonly in {side} (not compared): {listed}")
    return "\n".join(lines) + "\n"


CHANGE_COLOURS = {
    "broke": "#212121",
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

    from niah.report_figures import png_bytes

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
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "compare.md", out_dir / "compare.json", out_dir / "compare.png"]
    paths[0].write_text(to_markdown(comparison), encoding="utf-8")
    paths[1].write_text(json.dumps(to_json(comparison), indent=2, default=str) + "\n", encoding="utf-8")
    paths[2].write_bytes(render_heatmap(comparison))
    return paths


def _bounds(row: dict[str, Any], side: str) -> str:
    if not row[f"{side}_retrieval"]:
        return "-"
    return f"{row[f'{side}_wilson_low']:.0%}–{row[f'{side}_wilson_high']:.0%}"


def _task_order(column: pd.Series) -> pd.Series:
    if column.name != "task":
        return column
    return column.map(lambda t: ("0" if t == "single" else "1") + t)
