"""`--trials auto`: which cells the dispatch loop runs next. Per (task, length), one round is one
trial index at every depth; another round is added while the length's confidence sequence (the
statistics core, niah.publish.stats) straddles the threshold, up to the policy's max trials per cell.
The sequence is valid whichever round the length stops at, so looking after every round costs no
error rate (benchmarks/verdict_bench.py computes it).

A round is judged once all its cells are recorded, so a resumed run continues deciding from what
results.jsonl holds, and several servers share the rounds of all lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial

from niah.cells import Cell
from niah.publish.stats import ANSWERED_OUTCOMES, UNDECIDED, decide, units_of
from niah.publish.verdict import TrialPolicy

Key = tuple[str, int, float, int]


def next_trial(depths: list[float], outcome: Callable[[float, int], str | None], policy: TrialPolicy) -> int | None:
    """The trial index a length needs next (its first round with a cell not recorded), or None when
    it is decided, at the cap, or its last round answered nothing (CLAMPED, CONTEXT_ERROR, ...: more
    trials would not answer either)."""
    seen: list[tuple[int, str]] = []
    for trial in range(policy.max_trials):
        round_ = [outcome(depth, trial) for depth in depths]
        if None in round_:
            return trial
        seen += [(trial, str(o)) for o in round_]
        if not any(o in ANSWERED_OUTCOMES for o in round_):
            return None
        if decide(units_of(seen, policy.clusters), policy.pass_rate) != UNDECIDED:
            return None
    return None


class Rounds:
    """Hands out the next round of each undecided (task, length) of a launch group, each cell once."""

    def __init__(self, cells: list[Cell], policy: TrialPolicy, recorded: Callable[[Key], str | None],
                 redo: tuple[str, ...] = ()) -> None:
        """`cells`: every cell the group may run (all depths, trials below the cap), in plan order;
        `recorded`: a cell's latest outcome; `redo`: outcomes run again (`--retry`)."""
        self.policy = policy
        self.recorded = recorded
        self.redo = redo
        self.cells = cells
        self.depths: dict[tuple[str, int], list[float]] = {}
        for cell in cells:
            depths = self.depths.setdefault((cell.task, cell.length), [])
            if cell.depth not in depths:
                depths.append(cell.depth)
        self.handed: set[Key] = set()

    def _cell_outcome(self, task: str, length: int, depth: float, trial: int) -> str | None:
        return self._outcome((task, length, depth, trial))

    def _outcome(self, key: Key) -> str | None:
        outcome = self.recorded(key)
        return None if outcome in self.redo and key not in self.handed else outcome

    def next(self, in_flight: Collection[Key] = ()) -> list[Cell]:
        """Cells of the next round of every length with none in flight, in plan order."""
        busy = {(task, length) for task, length, _, _ in in_flight}
        wanted: dict[tuple[str, int], int] = {}
        for (task, length), depths in self.depths.items():
            if (task, length) in busy:
                continue
            trial = next_trial(depths, partial(self._cell_outcome, task, length), self.policy)
            if trial is not None:
                wanted[(task, length)] = trial
        out = [c for c in self.cells if wanted.get((c.task, c.length)) == c.trial
               and c.key not in self.handed and self._outcome(c.key) is None]
        self.handed.update(c.key for c in out)
        return out
