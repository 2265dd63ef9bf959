"""`report.html`: the card made visible as one self-contained page (the heatmap embedded, no script,
no external request), with the run's figures and its cells formatted for people.

The page's text comes from the card's own markdown (`niah.publish.card.render_card`), so every
verdict and interval reads exactly as card.md words it; only the cells table and the figures at the
top are built here, from the same frame and summary as cells.csv and summary.json.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pandas as pd
from markupsafe import Markup, escape

from niah.publish.card.method import duration
from niah.publish.grid import MIXED, UNTESTED, cell_category
from niah.publish.report_figures import COLOURS, mixed_colour
from niah.publish.runs import tasks_of, with_tasks
from niah.publish.verdict import BELOW, CLEARS

TEMPLATE = "report.html.j2"
MISSING = "-"
FIRST_SECTION = "Per length"
"""The card's section the page shows right after the grid (the rest follow in the card's order)."""
DECISION_COLOURS = {CLEARS: "#2e7d32", BELOW: "#c62828"}
"""A length's decision, coloured where a table shows it; any other (undecided) in OPEN_COLOUR."""
OPEN_COLOUR = "#9a6700"
WRAP_AT = 40
"""A table column with a cell longer than this may wrap; shorter ones stay on one line."""
_INLINE = re.compile(r"(`[^`]*`|\*\*.+?\*\*)")


@dataclass(frozen=True)
class Block:
    """One block of the card: a paragraph, a verdict line, a list, a code block, a grid or a table."""

    kind: str
    html: Markup = field(default_factory=Markup)
    items: tuple[tuple[Markup, tuple[Markup, ...]], ...] = ()
    """List items with their sub-items (kind `ul`)."""
    head: tuple[Markup, ...] = ()
    rows: tuple[tuple[Markup, ...], ...] = ()
    numeric: tuple[bool, ...] = ()
    """Per table column: right-aligned figures."""
    wraps: tuple[bool, ...] = ()
    """Per table column: long text that may wrap (the rest stays on one line)."""


@dataclass
class Section:
    """A `###` section of the card (title "" for the part before the first one)."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "grid"


def render_page(df: pd.DataFrame, summary: dict[str, Any], card: str, png: bytes) -> str:
    """The page: the card's title, verdicts, heatmap and sections, the run's figures and a cells table."""
    import jinja2

    decisions = decision_colours(summary)
    title, sections = card_sections(card, decisions)
    verdicts = [b for s in sections for b in s.blocks if b.kind == "verdict"]
    sections = [Section(s.title, [b for b in s.blocks if b.kind != "verdict"]) for s in sections]
    preamble, rest = sections[0], sections[1:]
    grids = max((i for i, b in enumerate(preamble.blocks) if b.kind == "grid"), default=0) + 1
    rest.sort(key=lambda s: s.title != FIRST_SECTION)  # stable: the card's order otherwise
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    template = env.from_string(resources.files("niah.publish").joinpath(TEMPLATE).read_text(encoding="utf-8"))
    head, rows = cell_rows(df)
    return template.render(
        title=title,
        intro=preamble.blocks[:1],
        grids=preamble.blocks[1:grids],
        after_grids=preamble.blocks[grids:],
        verdicts=verdicts,
        settled=summary.get("effective_length") is not None,
        figures=run_figures(summary),
        outcomes={o: n for o, n in summary["outcomes"].items() if n},
        sections=rest,
        png=base64.b64encode(png).decode("ascii"),
        colours={_css_name(c): colour for c, colour in COLOURS.items()},
        decisions={_css_class(word): colour for word, colour in decisions.items()},
        cell_head=head,
        cell_rows=rows,
    )


def decision_colours(summary: dict[str, Any]) -> dict[str, str]:
    """Each decision a length can get in this run (those its verdicts hold, clears and below) with
    its colour."""
    words = {v["decision"] for task in summary["tasks"].values() for v in task["verdict"]["lengths"]}
    return {word: DECISION_COLOURS.get(word, OPEN_COLOUR) for word in sorted(words | set(DECISION_COLOURS))}


def card_sections(markdown: str, decisions: Collection[str] = ()) -> tuple[Markup, list[Section]]:
    """The card's title and its sections, from the markdown subset the card writes: `##`/`###`
    headings, paragraphs, `-` lists (one level of nesting), fenced code and pipe tables; a table
    cell that starts with one of `decisions` shows it in its colour."""
    lines = markdown.splitlines()
    title, sections, i = Markup(""), [Section("")], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("### "):
            sections.append(Section(line[4:].strip()))
            i += 1
        elif line.startswith("## "):
            title, i = inline(line[3:].strip()), i + 1
        elif not line.strip():
            i += 1
        elif line.startswith("```"):
            end = _until(lines, i + 1, lambda s: s.startswith("```"))
            sections[-1].blocks.append(_code(line[3:].strip(), lines[i + 1:end]))
            i = end + 1
        elif line.startswith("|"):
            end = _until(lines, i, lambda s: not s.startswith("|"))
            sections[-1].blocks.append(_table(lines[i:end], decisions))
            i = end
        elif line.startswith("- "):
            end = _until(lines, i, lambda s: not s.startswith(("- ", "  ")))
            sections[-1].blocks.append(_list(lines[i:end]))
            i = end
        else:
            end = _until(lines, i, lambda s: not s.strip() or s.startswith(("```", "|", "#")))
            text = " ".join(lines[i:end])
            bold = text.startswith("**") and text.endswith("**") and text.count("**") == 2
            sections[-1].blocks.append(Block("verdict" if bold else "p", inline(text)))
            i = end
    return title, sections


def inline(text: str) -> Markup:
    """The card's inline markdown as HTML: `code` and **bold**, everything else escaped."""
    parts = []
    for piece in _INLINE.split(text):
        if piece.startswith("`") and piece.endswith("`") and len(piece) > 1:
            parts.append(Markup("<code>{}</code>").format(_unbroken_words(piece[1:-1])))
        elif piece.startswith("**") and piece.endswith("**") and len(piece) > 3:
            parts.append(Markup("<strong>{}</strong>").format(inline(piece[2:-2])))
        else:
            parts.append(escape(piece))
    return Markup("").join(parts)


def _unbroken_words(code: str) -> Markup:
    """A long code span (a command) that may wrap between its words only, never at a word's hyphens."""
    if len(code) <= WRAP_AT:
        return escape(code)
    return Markup(" ").join(Markup('<span class="t">{}</span>').format(word) for word in code.split(" "))


def _until(lines: list[str], start: int, stop: Any) -> int:
    """The index of the first line from `start` for which `stop` holds (len(lines) when none)."""
    return next((j for j in range(start, len(lines)) if stop(lines[j])), len(lines))


def _code(lang: str, lines: list[str]) -> Block:
    """A fenced block: a grid (the seed's format, each label coloured by its outcome) or plain code."""
    grid = _grid_html(lines) if lang == "text" else None
    if grid is not None:
        return Block("grid", grid)
    return Block("pre", escape("\n".join(lines)))


def _grid_html(lines: list[str]) -> Markup | None:
    """The grid's text with each label in a span of its heatmap category; None unless it is a grid."""
    head = lines[0].split(" ") if lines else []
    if len(head) < 3 or head[0] != "length" or head[-1] != "factor":
        return None
    depths = len(head) - 2
    out = [escape(lines[0])]
    for line in lines[1:]:
        parts = line.split(" ", depths + 1)
        if len(parts) != depths + 2:
            return None
        labels = [_grid_label(label) for label in parts[1:-1]]
        out.append(Markup(" ").join([escape(parts[0]), *labels, escape(parts[-1])]))
    return Markup("\n").join(out)


def _grid_label(label: str) -> Markup:
    """A grid label in its heatmap colour (a `k/n` one between FAIL's red and PASS's green)."""
    category = cell_category(label)
    if category == MIXED:
        return Markup('<span class="c-mixed" style="color: {}">{}</span>').format(mixed_colour(label), label)
    return Markup('<span class="c-{}">{}</span>').format(_css_name(category), label)


def _css_name(category: str) -> str:
    return {UNTESTED: "untested", MIXED: "mixed"}.get(category, category)


def _table(lines: list[str], decisions: Collection[str]) -> Block:
    """A pipe table: header, separator, rows; a column of figures (every cell a number or `-`) is
    right-aligned, and a verdict word is marked for its colour."""
    cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    head, rows = cells[0], cells[2:]
    numeric = tuple(
        all(r[c][:1].isdigit() or r[c] == MISSING for r in rows if c < len(r)) and any(r[c][:1].isdigit() for r in rows)
        for c in range(len(head))
    )
    wraps = tuple(any(len(r[c]) > WRAP_AT for r in rows if c < len(r)) for c in range(len(head)))
    return Block("table", head=tuple(inline(h) for h in head), rows=tuple(tuple(_table_cell(c, decisions) for c in r) for r in rows),
                 numeric=numeric, wraps=wraps)


def _table_cell(text: str, decisions: Collection[str]) -> Markup:
    for word in decisions:
        if text == word or text.startswith(word + " "):
            return Markup('<span class="v-{}">{}</span>').format(_css_class(word), word) + inline(text[len(word):])
    return inline(text)


def _css_class(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", word)


def _list(lines: list[str]) -> Block:
    items: list[tuple[Markup, list[Markup]]] = []
    for line in lines:
        if line.startswith("- "):
            items.append((inline(line[2:]), []))
        elif line.lstrip().startswith("- ") and items:
            items[-1][1].append(inline(line.lstrip()[2:]))
        elif items:  # a continuation line
            items[-1] = (items[-1][0] + Markup(" ") + inline(line.strip()), items[-1][1])
    return Block("ul", items=tuple((text, tuple(sub)) for text, sub in items))


def run_figures(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's totals from summary.json as (label, figure) pairs, written for people."""
    prefill = summary["prefill"]
    reused = f"{prefill['cache_tokens_reused']:,} tokens"
    if prefill.get("cache_tokens_reusable"):
        # niah's count of what consecutive prompts share by construction; the server can match a
        # few tokens more where the text after the shared part happens to agree
        reused += f" (niah expected {prefill['cache_tokens_reusable']:,})"
    figures = [
        ("cells", f"{summary['cells']:,}"),
        ("prompt tokens computed", f"{prefill['prompt_tokens_computed']:,}"),
        ("reused from the prompt cache", reused),
        ("prefill time", duration(prefill["prompt_ms"] / 1000)),
    ]
    if prefill.get("prefill_tokens_per_s"):
        figures.append(("prefill speed", f"{prefill['prefill_tokens_per_s']:,.1f} tokens/s"))
    if summary.get("decode_tokens_per_s"):
        figures.append(("decode speed", f"{summary['decode_tokens_per_s']:,.1f} tokens/s"))
    figures.append(("time in requests", duration(summary["wall_s"])))
    return figures


@dataclass(frozen=True)
class Column:
    """A column of the cells table: its heading, how one cell reads, and how it is laid out."""

    head: str
    text: Any
    css: str = "line"
    """`num` (a right-aligned figure), `outcome` (in its colour), `line` (one line) or `wrap` (free text)."""

    @property
    def numeric(self) -> bool:
        return self.css == "num"


COLUMNS = (
    Column("task", lambda r: r.task),
    Column("length", lambda r: _count(r.length), "num"),
    Column("depth", lambda r: f"{r.depth:g}%", "num"),
    Column("needle at", lambda r: MISSING if pd.isna(r.depth_actual) else f"{r.depth_actual:.1f}%", "num"),
    Column("trial", lambda r: str(int(r.trial)), "num"),
    Column("outcome", lambda r: r.outcome, "outcome"),
    Column("expected", lambda r: _text(r.needle_value).replace(",", ", "), "wrap"),
    Column("answer", lambda r: _text(r.answer), "wrap answer"),
    Column("prompt tokens", lambda r: _served(r), "num"),
    Column("from cache", lambda r: _count(r.cache_n), "num"),
    Column("prefill", lambda r: MISSING if pd.isna(r.prompt_ms) else duration(r.prompt_ms / 1000), "num"),
    Column("answer tokens", lambda r: _count(r.predicted_n), "num"),
    Column("wall", lambda r: MISSING if pd.isna(r.wall_s) else duration(r.wall_s), "num"),
    Column("error", lambda r: _text(r.error), "wrap error"),
)


def cell_rows(df: pd.DataFrame) -> tuple[list[Column], list[list[str]]]:
    """The cells table: one row per cell in grid order; `task` only when the run has several, `trial`
    only with more than one, `error` only when a cell has one."""
    df = with_tasks(df)
    order = {task: i for i, task in enumerate(tasks_of(df))}
    df = df.assign(_task=df["task"].map(order)).sort_values(["_task", "length", "depth", "trial"])
    shown = [c for c in COLUMNS if not (
        (c.head == "task" and len(order) == 1)
        or (c.head == "trial" and df["trial"].max() == 0)
        or (c.head == "error" and not df["error"].map(_text).ne(MISSING).any())
    )]
    return shown, [[c.text(r) for c in shown] for r in df.itertuples(index=False)]


def _count(value: Any) -> str:
    return MISSING if pd.isna(value) else f"{int(value):,}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else MISSING


def _served(row: Any) -> str:
    """The prompt tokens llama-server counted, with niah's count beside it when the two differ."""
    served = _count(row.prompt_tokens_served)
    planned = row.prompt_tokens_planned
    if served != MISSING and not pd.isna(planned) and int(planned) != int(row.prompt_tokens_served):
        return f"{served} (planned {int(planned):,})"
    return served
