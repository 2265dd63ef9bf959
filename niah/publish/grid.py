"""The published length × depth grid: one label per (length, depth), built from the tidy cell frame.

Grid cell rule (`cell_label`), over the trials recorded for one (length, depth):
- no record: `-`
- every trial the same outcome: that outcome's name (`PASS`, `FAIL`, `CLAMPED`, ...)
- PASS and FAIL only: `k/n` (k passes of n trials)
- otherwise: `k/n` (k passes of the n answered trials: PASS, FAIL, WRONG_KEY or TRUNCATED,
  `stats.pass_tally`) followed by each outcome present beyond PASS and FAIL, comma-joined, in
  OUTCOMES order, e.g. `1/3,WRONG_KEY` or `1/3,TRUNCATED` (both count in n), `2/2,TIMEOUT` or
  `0/0,CLAMPED,CRASH`.
Labels never contain spaces, so every grid line splits into exactly its columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from niah.publish.results import NAMED_OUTCOMES, OUTCOMES
from niah.publish.stats import pass_tally

if TYPE_CHECKING:
    import pandas as pd

UNTESTED = "-"
MIXED = "mixed"


def depth_label(depth: float) -> str:
    """A depth column header: 0%, 25%, 12.5%."""
    return f"{depth:g}%"


def cell_label(outcomes: list[str]) -> str:
    """The grid text for one (length, depth) from the outcomes of its trials (rule in the module doc)."""
    if not outcomes:
        return UNTESTED
    if len(set(outcomes)) == 1:
        return outcomes[0]
    passes, answered = pass_tally(outcomes)
    others = [o for o in NAMED_OUTCOMES if o in outcomes]
    return ",".join([f"{passes}/{answered}", *others])


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
    factors = df.groupby("length")["factor"].agg(joined)
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


def joined(values: pd.Series) -> str:
    """The distinct non-empty texts of a column, sorted and `/`-joined (`-` when none)."""
    present = sorted({str(v) for v in values if isinstance(v, str) and v})
    return "/".join(present) if present else UNTESTED
