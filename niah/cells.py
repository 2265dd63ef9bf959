"""Cells of the length × depth × trial grid: parsing `--lengths`/`--depths` and the sending order."""

from __future__ import annotations

import re
from dataclasses import dataclass

from niah.errors import NiahError

ANSWER_BUDGET = 32
"""Tokens a cell leaves for the answer (on top of its length L) with thinking off."""
THINKING_ANSWER_BUDGET = 4096
"""The same with thinking on: the reasoning comes before the answer."""
BUDGET_PER_EXTRA_ANSWER = 32
"""Tokens added to the default budget for each expected value past the first (all-of tasks)."""
SUFFIXES = {"k": (1024, 1000), "m": (1024**2, 1000**2)}
MAX_CELLS = 1_000_000
"""The most cells a grid plans: a million prefills take weeks even of short prompts (a larger grid is a typo
that would only fill memory)."""
SHARED = "shared"
HAYSTACKS = ("single", SHARED)
"""`--haystack`: a prompt per cell (the default), or one haystack per trial cut at every length."""
SHARED_TAIL = 64
"""Tokens a shared-haystack prompt holds past its last whole sentence (the cut sentence, the question,
the template's close), computed afresh for every cell, on paper."""
SHARED_SUFFIX = "@shared"
"""Appended to a task's name when its cells are cut from one shared haystack per trial
(`--haystack shared`, niah.prompts.shared_haystack): `single@shared` is recorded apart from `single`."""


def answer_budget(explicit: int | None, thinking: str) -> int:
    """Answer tokens a cell leaves room for: `--answer-budget`, else by `--thinking`."""
    if explicit is not None:
        if explicit < 1:
            raise NiahError("--answer-budget must be at least 1 token")
        return explicit
    return THINKING_ANSWER_BUDGET if thinking == "on" else ANSWER_BUDGET


@dataclass(frozen=True)
class Cell:
    """One test point: a prompt of exactly `length` tokens with the task's target at `depth` percent."""

    length: int
    depth: float
    trial: int
    task: str = "single"
    """The task's name (niah.prompts.tasks): `single`, `multikey:4`, ..."""

    @property
    def key(self) -> tuple[str, int, float, int]:
        return (self.task, self.length, float(self.depth), self.trial)

    @property
    def shared(self) -> bool:
        """Cut from its trial's shared haystack (niah.prompts.shared_haystack)."""
        return self.task.endswith(SHARED_SUFFIX)


def parse_length(text: str) -> int:
    """A positive token count: `1010000`, or the long-context shorthands `Nk` and `Nm`.

    `Nk` with N a power of two is N × 1,024 (`4k` = 4,096, `128k` = 131,072); any other `Nk` is
    the multiple of 1,024 nearest N × 1,000 (`131k` = 131,072, `262k` = 262,144, `393k` = 393,216).
    `Nm` likewise: `1m` = 1,048,576.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not match:
        raise NiahError(f"bad length {text!r}: use a token count like 1010000, 131k or 1m")
    number, suffix = int(match.group(1)), match.group(2).lower()
    if suffix:
        binary, decimal = SUFFIXES[suffix]
        is_power_of_two = number & (number - 1) == 0
        number = number * binary if is_power_of_two else round(number * decimal / 1024) * 1024
    if number <= 0:
        raise NiahError(f"bad length {text!r}: must be a positive number of tokens")
    return number


def parse_lengths(text: str) -> tuple[int, ...]:
    """A comma-separated list of lengths."""
    lengths = tuple(parse_length(part) for part in text.split(",") if part.strip())
    if not lengths:
        raise NiahError("--lengths is empty")
    return lengths


def parse_trials(text: str) -> int | None:
    """`--trials`: prompts per cell (a positive count), or `auto` (None: added until decided)."""
    if text.strip().lower() == "auto":
        return None
    try:
        trials = int(text)
    except ValueError:
        raise NiahError(f"bad --trials {text!r}: use a count like 3, or auto") from None
    if trials < 1:
        raise NiahError("--trials must be at least 1")
    return trials


def parse_depths(text: str) -> tuple[float, ...]:
    """`0,25,50,75,100` or `linspace:START:STOP:COUNT`, each depth a percent in 0..100."""
    if text.startswith("linspace:"):
        parts = text.split(":")[1:]
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            raise NiahError(f"bad depths {text!r}: use linspace:START:STOP:COUNT, e.g. linspace:0:100:11") from None
        if count < 1 or len(parts) != 3:
            raise NiahError(f"bad depths {text!r}: COUNT must be at least 1")
        if count > MAX_CELLS:
            raise NiahError(f"bad depths {text!r}: COUNT is more than niah plans ({MAX_CELLS:,} cells)")
        step = (stop - start) / (count - 1) if count > 1 else 0.0
        depths = tuple(round(start + i * step, 6) for i in range(count))
    else:
        try:
            depths = tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise NiahError(f"bad depths {text!r}: use percents like 0,25,50,75,100") from None
    if not depths:
        raise NiahError("--depths is empty")
    for depth in depths:
        if not 0 <= depth <= 100:
            raise NiahError(f"depth {depth:g} is outside 0-100")
    return depths


def needle_position(cell: Cell) -> float:
    """Where the cell's needle starts, in tokens of haystack (nominal: length × depth)."""
    return cell.length * cell.depth / 100


def shared_prefix(previous: Cell | None, cell: Cell) -> float:
    """Haystack tokens two consecutive prompts on one server share: every prompt's haystack is the
    same corpus text up to its needle, so they agree up to the earlier of the two needles (for one
    task; other tasks plant other sentences, so nothing is counted across tasks). Two cells of one
    shared haystack agree up to the shorter one's last whole sentence (SHARED_TAIL before its end)."""
    if previous is None or previous.task != cell.task:
        return 0.0
    if cell.shared:
        return float(max(0, min(previous.length, cell.length) - SHARED_TAIL)) if previous.trial == cell.trial else 0.0
    return min(needle_position(previous), needle_position(cell))


def plan_cells(
    grid: tuple[tuple[int, tuple[float, ...]], ...], trials: int, tasks: tuple[str, ...] = ("single",)
) -> list[Cell]:
    """Cells in sending order from (length, depths) rows: per task (in the order given), ascending
    needle position (length × depth), then length and trial; a shared-haystack task by trial, then
    ascending length and depth (each prompt extends the one before).

    Consecutive prompts share the haystack up to the earlier needle (`shared_prefix`), and the
    server's prompt cache skips that prefix. In this order each prompt shares everything up to the
    previous prompt's needle, across lengths too, which is the most any order can share: a 5-depth
    sweep of one length computes 0.70 of the naive prefill, the seed's 5 × 5 grid on one server
    0.59 (benchmarks/schedule_bench.py). Lengths served by different launches lose only the
    cross-length part.

    Rows of the same length (`--lengths 131k,128k` names 131,072 twice) are one row: each cell is
    planned once.
    """
    if trials < 1:
        raise NiahError("--trials must be at least 1")
    rows: dict[int, set[float]] = {}
    for length, depths in grid:
        rows.setdefault(length, set()).update(float(d) for d in depths)
    planned = sum(len(depths) for depths in rows.values()) * trials * len(tasks)
    if planned > MAX_CELLS:
        raise NiahError(
            f"the grid has {planned:,} cells, more than niah plans ({MAX_CELLS:,}): fewer lengths, depths or trials"
        )
    cells = [
        Cell(length, depth, trial, task)
        for length, depths in rows.items()
        for depth in depths
        for task in tasks
        for trial in range(trials)
    ]
    order = {task: i for i, task in enumerate(tasks)}

    def rank(c: Cell) -> tuple[float, ...]:
        if c.shared:  # one haystack per trial, cut at ascending lengths
            return (order[c.task], c.trial, c.length, c.depth)
        return (order[c.task], needle_position(c), c.length, c.trial)

    return sorted(cells, key=rank)
