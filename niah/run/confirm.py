"""`--confirm`: a shared-haystack screen's cells rerun in the default single-needle mode, each with
its own prompt and a fresh prefill, asked for by the one dispatch loop as the screen records them.

`--confirm` reruns every screen cell that was answered without a PASS (FAIL, WRONG_KEY, TRUNCATED);
`--confirm all` also every cell of the longest length. A confirmation is the `single` cell of the
same (length, depth, trial): the prompt a default run sends, recorded under task `single` beside
the screen's `single@shared`. It is a record of its own (niah.publish.runs.confirmation_tasks): shown
beside its screen cell, never judged as a task; it stands in for its cell in a fixed-trial run's exit
code only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from niah.cells import SHARED_SUFFIX, Cell
from niah.publish.stats import ANSWERED_OUTCOMES

CONFIRMS = ("fails", "all")
"""`--confirm` (the screen's non-PASS answers) and `--confirm all` (also its whole longest length)."""
Key = tuple[str, int, float, int]


def confirmation(cell: Cell) -> Cell:
    """The single-needle cell that confirms a screen cell."""
    return Cell(cell.length, cell.depth, cell.trial, cell.task.removesuffix(SHARED_SUFFIX))


class Confirmations:
    """Hands out the confirmation of each screen cell that needs one, once, when the screen has
    recorded it (and the confirmation is not recorded yet: a resumed run does not repeat it)."""

    def __init__(self, cells: list[Cell], how: str, recorded: Callable[[Key], str | None],
                 redo: tuple[str, ...] = ()) -> None:
        """`cells`: the group's screen cells; `recorded`: a cell's latest outcome; `redo`: outcomes
        rerun (`--retry`)."""
        self.screen = [c for c in cells if c.shared]
        self.longest = max((c.length for c in self.screen), default=0) if how == "all" else None
        self.recorded = recorded
        self.redo = redo
        self.handed: set[Key] = set()

    def needed(self, cell: Cell) -> bool:
        outcome = self.recorded(cell.key)
        if outcome is None:
            return False
        return (outcome in ANSWERED_OUTCOMES and outcome != "PASS") or cell.length == self.longest

    def next(self, in_flight: Collection[Key] = ()) -> list[Cell]:
        """Confirmations of the screen cells recorded so far, in plan order."""
        out = []
        for cell in self.screen:
            if cell.key in self.handed or cell.key in in_flight or not self.needed(cell):
                continue
            self.handed.add(cell.key)
            twin = confirmation(cell)
            if self.recorded(twin.key) in (None, *self.redo):
                out.append(twin)
        return out
