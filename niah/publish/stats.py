"""The statistics core every output reads: pass tallies, the one interval of a length's pass rate (a
95% confidence sequence, valid whenever it is read), the verdict against the threshold, and the exact
paired test compare uses.

The interval bets against each candidate pass rate m (Waudby-Smith & Ramdas, "Estimating means of
bounded random variables by betting", JRSS-B 2023): every observation x in [0, 1] multiplies a
bettor's wealth by 1 + f·(x − m)/m (betting that the rate exceeds m) for each fraction f of a fixed
grid, and the wealth averaged over the grid is a nonnegative supermartingale when the true rate is at
most m. By Ville's inequality it reaches 1/α with probability at most α, at any observation, so m is
ruled out from below once it does; the lower end is the largest m ruled out (the upper end bets on
1 − x the same way). Each end errs at most α = 2.5% of the time however often it is read and
wherever the reading stops, which is what `--trials auto` needs.

An observation is a unit the guarantee holds for without guessing correlations: each answered cell
(0 or 1) when trials are independent, each haystack's pass fraction at the length when the questions
of a trial share one haystack (any correlation inside it allowed). Independent cells of one round
(one trial at every depth) may differ in difficulty by depth: the grid's bets are fixed, so the
product over a round has expectation at most (1 + f·(p̄ − m)/m)^depths ≤ 1 (p̄ ≤ m) by the AM-GM
inequality, and the guarantee holds for the mean over depths p̄ at every round's end. More passes
only raise the lower end: every bet's factor grows with x, so turning a PASS into a non-PASS never
helps.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from niah.publish.results import RETRIEVAL_OUTCOMES

ANSWERED_OUTCOMES = (*RETRIEVAL_OUTCOMES, "TRUNCATED")
"""Cells the model answered: the pass rate's denominator. A TRUNCATED answer ran out of tokens
without the needle, so it did not retrieve it (shown by name beside the rate, never dropped)."""

RULER_PASS_RATE = 0.856
"""RULER's threshold: a length counts as handled when its pass rate clears it."""
ALPHA = 0.025
"""Each end's error: the lower end lies above the true rate, or the upper end below it, at most this
often, whenever it is read (together a 95% confidence sequence)."""
METHOD = "95% confidence sequence"
"""The interval's name wherever it is printed."""
BET_FRACTIONS = (np.arange(100) + 0.5) / 100
"""The bets averaged over: a uniform grid of fractions f in (0, 1), i.e. of alternative rates
m + f·(1 − m) above the candidate m."""
CLUSTERS = {
    "independent": "each answered cell one observation",
    "haystack": "each haystack's pass fraction at the length one observation, however its questions correlate",
}
"""What one observation is: an answered cell, or a haystack shared by one trial's questions."""
CLEARS, BELOW, UNDECIDED = "clears", "below", "undecided"

_LOG_LIMIT = math.log(1 / ALPHA)


def pass_tally(outcomes: Iterable[str]) -> tuple[int, int]:
    """(passes, answered) over some trials' outcomes: the one numerator and denominator of every
    pass rate (grid `k/n`, per-length table, summary.json, card)."""
    outcomes = list(outcomes)
    return outcomes.count("PASS"), sum(o in ANSWERED_OUTCOMES for o in outcomes)


def units_of(trials: Iterable[tuple[int, str]], clusters: str) -> list[float]:
    """The observations of one length from its cells' (trial, outcome) pairs: 1.0 or 0.0 per answered
    cell when independent, a trial's pass fraction over its answered cells when they share a haystack.
    Cells that did not answer (CLAMPED, TIMEOUT, ...) are no observation."""
    answered = [(trial, float(outcome == "PASS")) for trial, outcome in trials if outcome in ANSWERED_OUTCOMES]
    if clusters == "independent":
        return [x for _, x in answered]
    if clusters != "haystack":
        raise ValueError(f"unknown clustering {clusters!r}; expected one of {', '.join(CLUSTERS)}")
    by_trial: dict[int, list[float]] = {}
    for trial, x in answered:
        by_trial.setdefault(trial, []).append(x)
    return [sum(xs) / len(xs) for _, xs in sorted(by_trial.items())]


def log_wealth(values: np.ndarray, counts: np.ndarray, rate: float) -> np.ndarray:
    """The log of the wealth bet on the pass rate exceeding `rate`, for each row of `counts` (how many
    observations took each of `values`), averaged over BET_FRACTIONS."""
    f = BET_FRACTIONS[None, :]
    logs = counts @ np.log(1 - f + f * values[:, None] / rate)
    top = logs.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(logs - top).mean(axis=1))


def decisions(values: np.ndarray, counts: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(clears, below) for each row of `counts`: the threshold ruled out from below, or from above."""
    up = log_wealth(values, counts, threshold) >= _LOG_LIMIT
    down = log_wealth(1 - values, counts, 1 - threshold) >= _LOG_LIMIT
    return up & ~down, down & ~up


def _tally(units: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    seen = Counter(float(x) for x in units)
    if any(not 0 <= x <= 1 for x in seen):
        raise ValueError("observations must lie in [0, 1]")
    values = sorted(seen)
    return np.array(values), np.array([[seen[v] for v in values]], dtype=float)


def decide(units: Sequence[float], threshold: float = RULER_PASS_RATE) -> str:
    """CLEARS when the confidence sequence lies wholly above `threshold`, BELOW when wholly below,
    else UNDECIDED (also with no observations)."""
    if not units:
        return UNDECIDED
    clears, below = decisions(*_tally(units), threshold)
    return CLEARS if clears[0] else BELOW if below[0] else UNDECIDED


def _lowest_end(values: np.ndarray, counts: np.ndarray) -> float:
    """The largest rate the bets rule out from below (0.0 when none is)."""
    if not (values > 0).any():
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        if log_wealth(values, counts, mid)[0] >= _LOG_LIMIT:
            low = mid
        else:
            high = mid
    return low


def confidence_sequence(units: Sequence[float]) -> tuple[float, float]:
    """The 95% confidence sequence (lower, upper) of the mean of `units` (pass rates in [0, 1]); with
    no observations nothing is known: (0.0, 1.0)."""
    if not units:
        return (0.0, 1.0)
    values, counts = _tally(units)
    return (_lowest_end(values, counts), 1 - _lowest_end(1 - values, counts))


def interval_text(low: float, high: float) -> str:
    """The interval as every output prints it, e.g. `95% confidence sequence 89.2%–100.0%`."""
    return f"{METHOD} {low:.1%}–{high:.1%}"


def sign_test(worse: int, better: int) -> float:
    """One-sided exact sign test (exact McNemar) on discordant pairs: the chance of at least `worse`
    of the `worse + better` pairs going the worse way if either way were equally likely. 1.0 with none."""
    if worse < 0 or better < 0:
        raise ValueError(f"need non-negative counts, got {worse} and {better}")
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n
