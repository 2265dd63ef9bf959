"""What `niah compare` prints and writes: the verdict line, one markdown table per level, the JSON,
and the heatmap of changes (compare.md, compare.json, compare.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from niah.errors import writing_in
from niah.publish.compare import ALPHA, LEVELS, REGRESSIONS, Comparison
from niah.publish.runs import effective_length, tasks_of


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
        "screen_passed": c.screen_passed,
        "alpha": {"lengths": ALPHA, "tasks": ALPHA, "cells": c.cell_alpha},
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
        (f"gate: exact one-sided sign test on the discordant pairs, regression at p ≤ {ALPHA:g} per length and "
         f"task, p ≤ {c.cell_alpha:.3g} per cell ({ALPHA:g} over {len(c.cells)} cells); any broken pair is broke"),
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
    if c.screen_passed:
        lines.append(f"{c.screen_passed} of A's confirmations not in B: B's screen passed those cells, nothing to "
                     "confirm (not missing)")
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
    if len(found) and found["transient"].any():
        parts.append("B's TIMEOUT/HTTP_ERROR count against it: `niah run --retry` on B's folder reruns them")
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
