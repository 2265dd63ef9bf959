"""Verdicts on pass rates: the 95% interval of a length's pass rate (Wilson or exact Clopper-Pearson,
over independent trials or clustered ones), whether it lies wholly above or below the threshold, and
the effective length (the longest length that clears, every shorter tested one clearing too).

`--trials auto` (niah.run.rounds) adds trials until the decision is made; reports, the card and compare
read the same decision back from the results (the policy is in the fingerprint, `trials`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from niah.errors import NiahError
from niah.publish.stats import ANSWERED_OUTCOMES, wilson_interval

RULER_PASS_RATE = 0.856
"""RULER's threshold: a length counts as handled when its pass rate clears it."""
MAX_TRIALS = 20
"""Trials per cell `--trials auto` stops at when the interval still straddles the threshold."""
INTERVALS = ("wilson", "exact")
CLUSTERS = {
    "independent": "independent trials",
    "haystack": "questions on one haystack counted as one cluster (a design effect widens the interval)",
}
"""How trials are counted: each on its own prompt, or clustered by the haystack they share."""
CLEARS, BELOW, UNDECIDED = "clears", "below", "undecided"
ALPHA = 0.05


@dataclass(frozen=True)
class TrialPolicy:
    """How pass rates are decided: the threshold, the interval and how trials are counted; with
    `auto`, trials are added per length until decided or `max_trials` per cell (`--trials auto`)."""

    auto: bool = False
    pass_rate: float = RULER_PASS_RATE
    max_trials: int = MAX_TRIALS
    interval: str = "wilson"
    """`wilson` (score interval) or `exact` (Clopper-Pearson); never the normal approximation."""
    clusters: str = "independent"
    """A CLUSTERS key: `haystack` when questions sharing a trial's haystack are not independent."""

    def __post_init__(self) -> None:
        if not 0 < self.pass_rate < 1:
            raise NiahError(f"--pass-rate must lie between 0 and 1, not {self.pass_rate:g}")
        if self.max_trials < 1:
            raise NiahError(f"--max-trials must be at least 1, not {self.max_trials}")
        if self.interval not in INTERVALS:
            raise NiahError(f"--interval must be one of {', '.join(INTERVALS)}, not {self.interval!r}")
        if self.clusters not in CLUSTERS:
            raise NiahError(f"unknown trial clustering {self.clusters!r}; expected one of {', '.join(CLUSTERS)}")

    def record(self) -> dict[str, Any]:
        """The policy as the fingerprint's `trials` entry (a resume or compare reads it back)."""
        skip = ("auto",) if self.auto else ("auto", "max_trials")
        return {"mode": "auto" if self.auto else "fixed", **{k: v for k, v in asdict(self).items() if k not in skip}}

    def describe(self) -> str:
        """One sentence for the card."""
        interval = "Wilson score" if self.interval == "wilson" else "exact Clopper-Pearson"
        how = (f"per length, trials were added (new values, keys and positions at every depth) until the 95% "
               f"{interval} interval of the pass rate lay wholly above or below {self.pass_rate:.1%}, or "
               f"{self.max_trials} trials per cell" if self.auto else
               f"a length clears when the lower bound of its 95% {interval} interval lies above {self.pass_rate:.1%}")
        return f"{how}; {CLUSTERS[self.clusters]}"


def policy_of(fingerprint: dict[str, Any]) -> TrialPolicy:
    """The policy a run recorded (`trials` in its fingerprint), or the default one for runs without."""
    recorded = fingerprint.get("trials")
    if not isinstance(recorded, dict):
        return TrialPolicy()
    known = {k: recorded[k] for k in ("pass_rate", "max_trials", "interval", "clusters") if k in recorded}
    return TrialPolicy(auto=recorded.get("mode") == "auto", **known)


def clopper_pearson(passes: int, trials: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95% interval of `passes / trials`, by bisection on the binomial tails."""
    if trials < 0 or not 0 <= passes <= trials:
        raise ValueError(f"need 0 <= passes <= trials, got {passes}/{trials}")
    if trials == 0:
        return (0.0, 1.0)

    def at_least(p: float) -> float:  # P(X >= passes)
        return sum(math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(passes, trials + 1))

    def solve(tail: Any, rising: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (tail(mid) < ALPHA / 2) == rising:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = 0.0 if passes == 0 else solve(at_least, rising=True)
    high = 1.0 if passes == trials else solve(lambda p: 1 - at_least(p) + _pmf(trials, passes, p), rising=False)
    return (low, high)


def _pmf(n: int, k: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


def design_effect(clusters: Sequence[tuple[int, int]]) -> float:
    """How much clustering inflates the variance of the pooled pass rate (1.0 = independent trials):
    the between-cluster variance of the ratio estimate over the binomial one, at least 1 and at most
    the mean cluster size (all questions on a haystack agreeing). With every answer the same there is
    no variation to measure the correlation from, so the worst case, the mean cluster size, is taken."""
    clusters = [(p, n) for p, n in clusters if n]
    total = sum(n for _, n in clusters)
    if len(clusters) < 2 or all(n == 1 for _, n in clusters):
        return 1.0
    mean_size = total / len(clusters)
    rate = sum(p for p, _ in clusters) / total
    binomial = rate * (1 - rate) / total
    if binomial == 0:
        return mean_size
    m = len(clusters)
    between = m / (m - 1) * sum((p - rate * n) ** 2 for p, n in clusters) / total**2
    return min(mean_size, max(1.0, between / binomial))


def pass_interval(clusters: Sequence[tuple[int, int]], interval: str = "wilson") -> tuple[float, float]:
    """The 95% interval of the pooled pass rate over clusters of (passes, answered); one trial per
    cluster is the independent case. Clustered trials count as their effective number (answered ÷
    design effect, rounded down for the exact interval)."""
    passes, answered = sum(p for p, _ in clusters), sum(n for _, n in clusters)
    if not answered:
        return (0.0, 1.0)
    effect = design_effect(clusters)
    if interval == "exact":
        n = max(1, math.floor(answered / effect))
        return clopper_pearson(round(passes / answered * n), n)
    n_eff = answered / effect
    return wilson_interval(passes / answered * n_eff, n_eff)


def decide(low: float, high: float, pass_rate: float) -> str:
    """CLEARS when the interval lies wholly above `pass_rate`, BELOW when wholly below, else UNDECIDED."""
    if low > pass_rate:
        return CLEARS
    if high < pass_rate:
        return BELOW
    return UNDECIDED


def clusters_of(trials: Iterable[tuple[int, str]], policy: TrialPolicy) -> list[tuple[int, int]]:
    """(passes, answered) per cluster from (trial, outcome) pairs: one per answered trial when
    independent, one per trial index when questions share its haystack."""
    if policy.clusters == "independent":
        return [(int(o == "PASS"), 1) for _, o in trials if o in ANSWERED_OUTCOMES]
    by_trial: dict[int, list[int]] = {}
    for trial, outcome in trials:
        if outcome in ANSWERED_OUTCOMES:
            by_trial.setdefault(trial, []).append(int(outcome == "PASS"))
    return [(sum(v), len(v)) for _, v in sorted(by_trial.items())]


@dataclass(frozen=True)
class LengthVerdict:
    """One length's pass rate over all its depths and trials, and the decision."""

    length: int
    passes: int
    answered: int
    trials: int
    """Trials per cell run (the most any depth ran)."""
    low: float
    high: float
    decision: str


def length_verdict(length: int, trials: Iterable[tuple[int, str]], policy: TrialPolicy) -> LengthVerdict:
    """The verdict on one length from its cells' (trial, outcome) pairs."""
    trials = list(trials)
    clusters = clusters_of(trials, policy)
    low, high = pass_interval(clusters, policy.interval)
    return LengthVerdict(
        length=length, passes=sum(p for p, _ in clusters), answered=sum(n for _, n in clusters),
        trials=max((t for t, _ in trials), default=-1) + 1, low=round(low, 4), high=round(high, 4),
        decision=decide(low, high, policy.pass_rate),
    )


@dataclass(frozen=True)
class Verdict:
    """A task's lengths judged against the threshold, and its effective length."""

    policy: TrialPolicy
    lengths: tuple[LengthVerdict, ...]
    effective_length: int | None
    """The longest length that clears with every shorter tested length clearing too; None when the
    shortest does not clear."""
    late: tuple[str, ...]
    """Lengths that clear after a shorter one did not (the nearest such one named), e.g.
    "131072 clears after 65536 failed"."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "effective_length": self.effective_length,
            "text": self.text(),
            "policy": self.policy.record(),
            "lengths": [asdict(v) for v in self.lengths],
            "clears_after_a_failure": list(self.late),
        }

    def text(self) -> str:
        """One line: the effective length and the lengths that clear after a failure."""
        threshold = f"{self.policy.pass_rate:.1%}"
        if self.effective_length is None:
            shortest = self.lengths[0] if self.lengths else None
            head = (f"no effective length: the shortest length, {shortest.length:,}, does not clear {threshold} "
                    f"(95% interval {shortest.low:.0%}–{shortest.high:.0%}, {shortest.decision})"
                    if shortest else "no effective length: nothing answered")
        else:
            head = f"effective length {self.effective_length:,} (every length up to it clears {threshold})"
        return head + "".join(f"; {late}" for late in self.late)


def judge_lengths(trials: Iterable[tuple[int, int, str]], policy: TrialPolicy) -> Verdict:
    """The verdict over (length, trial, outcome) rows of one task."""
    by_length: dict[int, list[tuple[int, str]]] = {}
    for length, trial, outcome in trials:
        by_length.setdefault(int(length), []).append((int(trial), str(outcome)))
    verdicts = tuple(length_verdict(n, by_length[n], policy) for n in sorted(by_length))
    effective, late, failed = None, [], None
    for v in verdicts:
        if v.decision != CLEARS:
            failed = v
            continue
        if failed is None:
            effective = v.length
        else:
            how = "failed" if failed.decision == BELOW else "did not clear (undecided)"
            late.append(f"{v.length} clears after {failed.length} {how}")
    return Verdict(policy, verdicts, effective, tuple(late))
