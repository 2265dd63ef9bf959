"""The report's pictures: the length × depth heatmap (PNG) and the self-contained HTML page."""

from __future__ import annotations

import base64
import io
from typing import Any

import pandas as pd

from niah.publish.grid import MIXED, UNTESTED, cell_category
from niah.publish.stats import METHOD

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
HTML_COLUMNS = [
    "task",
    "length",
    "depth",
    "depth_actual",
    "trial",
    "outcome",
    "score",
    "needle_value",
    "answer",
    "prompt_tokens_planned",
    "prompt_tokens_served",
    "cache_n",
    "cache_expected",
    "prompt_ms",
    "predicted_n",
    "predicted_ms",
    "draft_n",
    "draft_n_accepted",
    "wall_s",
    "factor",
    "profile",
    "finish_reason",
    "error",
]


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
    fail, ok = (to_rgb(COLOURS[c]) for c in ("FAIL", "PASS"))
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
                rate = _rate(label)
                colour = tuple(f + (o - f) * rate for f, o in zip(fail, ok))
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, color=colour))
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


def _rate(label: str) -> float:
    """The pass rate of a `k/n[,OTHER...]` label."""
    passes, trials = label.split(",")[0].split("/")
    return int(passes) / int(trials) if int(trials) else 0.0


def render_html(df: pd.DataFrame, grid_text: str, summary: dict[str, Any], png: bytes) -> str:
    """A self-contained HTML page: grid, embedded heatmap, summary and per-cell table, all escaped."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    columns = [c for c in HTML_COLUMNS if c in df.columns]
    rows = [
        [("" if pd.isna(v) else str(v)) for v in record]
        for record in df[columns].itertuples(index=False, name=None)
    ]
    return env.from_string(_TEMPLATE).render(
        grid=grid_text,
        png=base64.b64encode(png).decode("ascii"),
        summary=summary,
        columns=columns,
        rows=rows,
        colours=COLOURS,
        method=METHOD,
    )


def _enumerate(cells: pd.DataFrame) -> list[tuple[tuple[int, int], str]]:
    return [((r, c), str(cells.iat[r, c])) for r in range(cells.shape[0]) for c in range(cells.shape[1])]


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>niah report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
pre { background: #f6f6f6; padding: 1em; font-size: 14px; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
td.answer { max-width: 40em; white-space: pre-wrap; word-break: break-word; }
{% for name, colour in colours.items() %}.o-{{ name }} { border-left: 6px solid {{ colour }}; }
{% endfor %}</style></head>
<body>
<h1>Needle-in-a-haystack report</h1>
<h2>Grid</h2>
<pre>{{ grid }}</pre>
<img alt="heatmap of outcomes by length and depth" src="data:image/png;base64,{{ png }}">
<h2>Summary</h2>
<p>{{ summary.cells }} cells:
{% for name, n in summary.outcomes.items() if n %}{{ name }} {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}.
Prefill: {{ summary.prefill.prompt_tokens_computed }} tokens computed,
{{ summary.prefill.cache_tokens_reused }} reused from the prompt cache
(of {{ summary.prefill.cache_tokens_reusable }} the prompts shared with the one before on their server),
{{ summary.prefill.prompt_ms }} ms.</p>
{% if summary.draft_acceptance %}<h2>MTP acceptance by context length</h2>
<table><tr><th>length</th><th>cells</th><th>drafted</th><th>accepted</th><th>acceptance</th></tr>
{% for r in summary.draft_acceptance %}<tr><td>{{ r.length }}</td><td>{{ r.cells }}</td><td>{{ r.draft_n }}</td>
<td>{{ r.draft_n_accepted }}</td><td>{{ "%.0f%%" | format(100 * r.acceptance) if r.acceptance is not none else "-" }}</td></tr>
{% endfor %}</table>{% endif %}
<h2>Pass rate per length ({{ method }})</h2>
<table>
<tr><th>task</th><th>length</th><th>PASS/answered</th><th>pass rate</th><th>lower end</th><th>upper end</th><th>verdict</th><th>other outcomes</th><th>mean score</th></tr>
{% for task, t in summary.tasks.items() %}{% for r in t.per_length %}<tr><td>{{ task }}</td><td>{{ r.length }}</td><td>{{ r.passes }}/{{ r.answered }}</td><td>{{ r.pass_rate }}</td><td>{{ "%.1f%%" | format(100 * r.low) }}</td><td>{{ "%.1f%%" | format(100 * r.high) }}</td><td>{{ r.decision }}</td><td>{{ r.other }}</td><td>{{ r.mean_score }}</td></tr>
{% endfor %}{% endfor %}</table>
<h2>Cells</h2>
<table>
<tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in columns %}{% set v = row[loop.index0] %}
{% if c == "outcome" %}<td class="o-{{ v }}">{{ v }}</td>{% elif c == "answer" %}<td class="answer">{{ v }}</td>{% else %}<td>{{ v }}</td>{% endif %}{% endfor %}</tr>
{% endfor %}</table>
<h2>Fingerprint</h2>
<pre>{{ summary.fingerprint | tojson(indent=2) }}</pre>
</body></html>
"""
