"""How often the verdict errs under `--trials auto`: for a plan (what one observation is, depths,
the cap) and a true pass rate, the chance a length ends below, clears, or is still undecided at the
cap, and the trials per cell it takes on average, computed exactly by carrying every reachable tally of
observations forward one round at a time (the verdict depends on the tally alone, not its order).

Every depth has the same true pass rate here; when rates differ by depth, independent trials keep
the 2.5% bound on each error (niah.publish.stats says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from niah.publish.stats import RULER_PASS_RATE, decisions


@dataclass(frozen=True)
class Plan:
    """A stopping rule to compute: `--trials auto` with `depths` cells a round and at most `cap` rounds."""

    clusters: str
    """`independent` (each answered cell one observation) or `haystack` (a round's cells share one
    haystack: its pass fraction is the observation)."""
    depths: int = 5
    cap: int = 20
    correlation: float = 0.0
    """Inside a haystack: the chance that all its questions share one outcome (else each is drawn on
    its own); the intraclass correlation of its answers. Ignored for independent trials."""

    def label(self) -> str:
        unit = ("independent trials" if self.clusters == "independent"
                else f"shared haystack, correlation {self.correlation:g}")
        return f"{unit}, {self.depths} depths, cap {self.cap}"


@dataclass(frozen=True)
class OperatingPoint:
    """What the plan does at one true pass rate."""

    pass_rate: float
    below: float
    clears: float
    undecided: float
    """Still undecided at the cap."""
    trials: float
    """Expected rounds run (trials per cell)."""


def _round(plan: Plan, p: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observation values, and each way one round can add to the tally with its chance."""
    d = plan.depths
    binomial = np.array([math.comb(d, k) * p**k * (1 - p) ** (d - k) for k in range(d + 1)])
    if plan.clusters == "independent":
        return np.array([0.0, 1.0]), np.array([[d - k, k] for k in range(d + 1)]), binomial
    whole = np.zeros(d + 1)
    whole[0], whole[d] = 1 - p, p
    chance = plan.correlation * whole + (1 - plan.correlation) * binomial
    return np.arange(d + 1) / d, np.eye(d + 1, dtype=np.int64), chance


def operating_point(plan: Plan, p: float, threshold: float = RULER_PASS_RATE) -> OperatingPoint:
    """P(below), P(clears), P(undecided at the cap) and the expected rounds at true pass rate `p`."""
    values, steps, chance = _round(plan, p)
    steps, chance = steps[chance > 0], chance[chance > 0]
    radix = (plan.cap * plan.depths + 1) ** np.arange(len(values))
    tallies, mass = np.zeros((1, len(values)), dtype=np.int64), np.array([1.0])
    below = clears = rounds = 0.0
    for _ in range(plan.cap):
        rounds += mass.sum()
        grown = (tallies[:, None, :] + steps[None]).reshape(-1, len(values))
        _, first, where = np.unique(grown @ radix, return_index=True, return_inverse=True)
        tallies, mass = grown[first], np.bincount(where.ravel(), weights=(mass[:, None] * chance).ravel())
        up, down = decisions(values, tallies.astype(float), threshold)
        clears, below = clears + mass[up].sum(), below + mass[down].sum()
        tallies, mass = tallies[~up & ~down], mass[~up & ~down]
    return OperatingPoint(p, float(below), float(clears), float(mass.sum()), float(rounds))


RATES = (0.50, 0.70, 0.80, 0.856, 0.90, 0.95, 0.99, 1.00)
"""The true pass rates the published table gives."""
DEFAULT_PLANS = [Plan("independent", cap=cap) for cap in (20, 40)] + [
    Plan("haystack", cap=cap, correlation=rho) for rho in (0.0, 1.0) for cap in (20, 40)]
"""`--trials auto` as run by default, with caps 20 and 40 (docs/verdicts.md)."""
ROWS = (("below", "below 85.6%"), ("clears", "clears 85.6%"), ("undecided", "undecided at the cap"),
        ("trials", "trials per cell (mean)"))


def markdown_table(points: dict[str, list[OperatingPoint]]) -> str:
    """One markdown table: per plan, four rows (below, clears, undecided, trials) across the rates."""
    lines = ["| plan | | " + " | ".join(f"p = {p:g}" for p in RATES) + " |", "|---|---|" + "---|" * len(RATES)]
    for label, row in points.items():
        for i, (field, name) in enumerate(ROWS):
            cells = [f"{getattr(pt, field):.1f}" if field == "trials" else _percent(getattr(pt, field)) for pt in row]
            lines.append(f"| {label if i == 0 else ''} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(x: float) -> str:
    """A chance as a percent; `0` and `100%` only when exact (up to rounding of the sums)."""
    if x < 1e-12 or x > 1 - 1e-12:
        return "0" if x < 0.5 else "100%"
    return "<0.1%" if x < 0.001 else ">99.9%" if x > 0.999 else f"{x:.1%}"
