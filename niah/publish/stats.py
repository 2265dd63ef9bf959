"""Small statistics shared by reports and compare: pass rates over answered cells, Wilson score
intervals, and the exact paired test compare uses."""

from __future__ import annotations

import math
from collections.abc import Iterable

from niah.publish.results import RETRIEVAL_OUTCOMES

ANSWERED_OUTCOMES = (*RETRIEVAL_OUTCOMES, "TRUNCATED")
"""Cells the model answered: the pass rate's denominator. A TRUNCATED answer ran out of tokens
without the needle, so it did not retrieve it (shown by name beside the rate, never dropped)."""

Z_95 = 1.959963984540054
"""The two-sided 95% normal quantile."""


def wilson_interval(passes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a pass rate `passes / trials`.

    With no trials nothing is known: (0.0, 1.0). Unlike the normal approximation it stays
    inside [0, 1] and is not zero-width at 0/n or n/n (1/1 gives about 0.21..1).
    """
    if trials < 0 or not 0 <= passes <= trials:
        raise ValueError(f"need 0 <= passes <= trials, got {passes}/{trials}")
    if trials == 0:
        return (0.0, 1.0)
    p = passes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    low = 0.0 if passes == 0 else max(0.0, centre - half)
    high = 1.0 if passes == trials else min(1.0, centre + half)
    return (low, high)


def wilson_lower(passes: int, trials: int, z: float = Z_95) -> float:
    """The lower bound of the Wilson interval: the pass rate one can claim with 95% confidence."""
    return wilson_interval(passes, trials, z)[0]


def pass_tally(outcomes: Iterable[str]) -> tuple[int, int]:
    """(passes, answered) over some trials' outcomes: the one numerator and denominator of every
    pass rate (grid `k/n`, per-length table, summary.json, card)."""
    outcomes = list(outcomes)
    return outcomes.count("PASS"), sum(o in ANSWERED_OUTCOMES for o in outcomes)


def sign_test(worse: int, better: int) -> float:
    """One-sided exact sign test (exact McNemar) on discordant pairs: the chance of at least `worse`
    of the `worse + better` pairs going the worse way if either way were equally likely. 1.0 with none."""
    if worse < 0 or better < 0:
        raise ValueError(f"need non-negative counts, got {worse} and {better}")
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n
