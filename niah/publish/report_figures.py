"""The report's picture: the length × depth heatmap (PNG), in the colours the report page uses too."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from niah.publish.grid import MIXED, UNTESTED, cell_category

COLOURS = {
    "PASS": "#2e7d32",
    "FAIL": "#c62828",
    "WRONG_KEY": "#880e4f",
    MIXED: "#f9a825",
    "CLAMPED": "#7b1fa2",
    "CONTEXT_ERROR": "#d81b60",
    "TRUNCATED": "#ef6c00",
    "TIMEOUT": "#1565c0",
    "CRASH": "#212121",
    "HTTP_ERROR": "#6d4c41",
    "TOKEN_MISMATCH": "#00838f",
    UNTESTED: "#eeeeee",
}
LEGEND_NAMES = {MIXED: "k/n passed (red 0/n to green n/n)", UNTESTED: "not tested"}
def render_heatmap(grids: dict[str, pd.DataFrame]) -> bytes:
    """PNG bytes of the grid (a panel per task when several, or one not named `single`): one
    coloured, labelled square per (length, depth), with a legend. A `k/n` square is coloured by its
    pass rate, from FAIL's red (0/n) to PASS's green (n/n)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, to_rgb
    from matplotlib.patches import Patch, Rectangle

    categories = list(COLOURS)
    shown = [grid.drop(columns=["factor"]) for grid in grids.values()]
    width = max(5.0, 1.1 * max(c.shape[1] for c in shown) + 3.5)
    height = sum(max(2.0, 0.55 * c.shape[0] + 1.2) for c in shown) + 0.6
    fig, axes = plt.subplots(len(shown), 1, figsize=(width, height), dpi=110, squeeze=False)
    present: set[str] = set()
    titled = len(grids) > 1 or list(grids) != ["single"]
    for ax, (task, grid), cells in zip(axes[:, 0], grids.items(), shown):
        codes = cells.map(lambda label: categories.index(cell_category(label))).to_numpy()
        present |= {categories[code] for code in codes.flat}
        ax.imshow(codes, cmap=ListedColormap(list(COLOURS.values())), vmin=0, vmax=len(categories) - 1, aspect="auto")
        for (row, col), label in _enumerate(cells):
            category = cell_category(label)
            if category == MIXED:
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, color=to_rgb(mixed_colour(label))))
            dark = category != UNTESTED
            ax.text(col, row, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(cells.shape[1]), list(cells.columns))
        factors = grid["factor"].tolist()
        ax.set_yticks(range(cells.shape[0]), [f"{int(n):,} ({f})" for n, f in zip(cells.index, factors)])
        ax.set_xlabel("depth of the target (% of haystack)")
        ax.set_ylabel("prompt length (tokens)")
        ax.set_title(f"task {task}" if titled else "needle retrieval by length and depth")
    handles = [Patch(color=COLOURS[c], label=LEGEND_NAMES.get(c, c)) for c in categories if c in present]
    axes[0, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return png_bytes(fig)


def png_bytes(fig: Any) -> bytes:
    """A finished matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def mixed_colour(label: str) -> str:
    """The colour of a `k/n` label as `#rrggbb`: FAIL's red at 0/n, PASS's green at n/n, between by its pass rate."""
    rate = _rate(label)
    fail, ok = ([int(COLOURS[c][i:i + 2], 16) for i in (1, 3, 5)] for c in ("FAIL", "PASS"))
    return "#" + "".join(f"{round(f + (o - f) * rate):02x}" for f, o in zip(fail, ok))


def _rate(label: str) -> float:
    """The pass rate of a `k/n[,OTHER...]` label."""
    passes, trials = label.split(",")[0].split("/")
    return int(passes) / int(trials) if int(trials) else 0.0


def _enumerate(cells: pd.DataFrame) -> list[tuple[tuple[int, int], str]]:
    return [((r, c), str(cells.iat[r, c])) for r in range(cells.shape[0]) for c in range(cells.shape[1])]
