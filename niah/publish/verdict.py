"""Verdicts on pass rates: each length's interval and decision from the statistics core
(niah.publish.stats), the policy that says how a run decides, and the effective length (the longest
length that clears, every shorter tested one clearing too).

`--trials auto` (niah.run.rounds) adds trials until the decision is made; reports, the card and compare
read the same decision back from the results (the policy is in the fingerprint, `trials`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from niah.errors import NiahError
from niah.publish.stats import (
    ALPHA,
    ANSWERED_OUTCOMES,
    BELOW,
    CLEARS,
    CLUSTERS,
    METHOD,
    RULER_PASS_RATE,
    confidence_sequence,
    decide,
    interval_text,
    units_of,
)

MAX_TRIALS = 20
"""Trials per cell `--trials auto` stops at when the interval still straddles the threshold."""
MAX_HAYSTACKS = 40
"""The same cap for a shared haystack, where a length that never fails needs 35 haystacks to clear
85.6% (each haystack is one observation, however many questions it holds)."""


def default_max_trials(clusters: str) -> int:
    """The cap `--trials auto` uses unless `--max-trials` is given: MAX_TRIALS, or MAX_HAYSTACKS when
    a trial's questions share a haystack."""
    return MAX_HAYSTACKS if clusters == "haystack" else MAX_TRIALS


@dataclass(frozen=True)
class TrialPolicy:
    """How pass rates are decided: the threshold and what one observation is; with `auto`, trials
    are added per length until decided or `max_trials` per cell (`--trials auto`). The interval is
    always the statistics core's confidence sequence."""

    auto: bool = False
    pass_rate: float = RULER_PASS_RATE
    max_trials: int = MAX_TRIALS
    clusters: str = "independent"
    """A CLUSTERS key: `haystack` when the questions of a trial share one haystack."""

    def __post_init__(self) -> None:
        if not 0 < self.pass_rate < 1:
            raise NiahError(f"--pass-rate must lie between 0 and 1, not {self.pass_rate:g}")
        if self.max_trials < 1:
            raise NiahError(f"--max-trials must be at least 1, not {self.max_trials}")
        if self.clusters not in CLUSTERS:
            raise NiahError(f"unknown trial clustering {self.clusters!r}; expected one of {', '.join(CLUSTERS)}")

    def record(self) -> dict[str, Any]:
        """The policy as the fingerprint's `trials` entry (a resume or compare reads it back)."""
        skip = ("auto",) if self.auto else ("auto", "max_trials")
        return {"mode": "auto" if self.auto else "fixed", **{k: v for k, v in asdict(self).items() if k not in skip}}

    def describe(self) -> str:
        """The method and its guarantee in one sentence, for the card."""
        when = (f"here after every round, up to {self.max_trials} trials per cell" if self.auto
                else "here once, after a fixed number of trials")
        return (f"a length clears {self.pass_rate:.1%} when the lower end of its {METHOD} (betting, Waudby-Smith & "
                f"Ramdas 2023, {CLUSTERS[self.clusters]}) lies above it, and is below when the upper end lies under "
                f"it; valid whenever it is read ({when}), it calls a true pass rate of at least "
                f"{self.pass_rate:.1%} below, and one of at most {self.pass_rate:.1%} clears, each at most "
                f"{ALPHA:.1%} of the time")


def policy_of(fingerprint: dict[str, Any]) -> TrialPolicy:
    """The policy a run recorded (`trials` in its fingerprint), or the default one for runs without.
    An `interval` recorded by older runs (Wilson, Clopper-Pearson) is read past: every run is judged
    by the confidence sequence."""
    recorded = fingerprint.get("trials")
    if not isinstance(recorded, dict):
        return TrialPolicy()
    known = {k: recorded[k] for k in ("pass_rate", "max_trials", "clusters") if k in recorded}
    return TrialPolicy(auto=recorded.get("mode") == "auto", **known)


@dataclass(frozen=True)
class LengthVerdict:
    """One length's pass rate over all its depths and trials, its interval and the decision."""

    length: int
    passes: int
    answered: int
    trials: int
    """Trials per cell run (the most any depth ran)."""
    observations: int
    """What the interval counted: answered cells, or haystacks with an answered cell."""
    low: float
    high: float
    """The ends of the length's confidence sequence (rounded to 4 places, as every output prints them)."""
    decision: str


def length_verdict(length: int, trials: Iterable[tuple[int, str]], policy: TrialPolicy) -> LengthVerdict:
    """The verdict on one length from its cells' (trial, outcome) pairs."""
    trials = list(trials)
    units = units_of(trials, policy.clusters)
    low, high = confidence_sequence(units)
    return LengthVerdict(
        length=length, passes=sum(o == "PASS" for _, o in trials),
        answered=sum(o in ANSWERED_OUTCOMES for _, o in trials),
        trials=max((t for t, _ in trials), default=-1) + 1, observations=len(units),
        low=round(low, 4), high=round(high, 4), decision=decide(units, policy.pass_rate),
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
            "interval": METHOD,
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
                    f"({interval_text(shortest.low, shortest.high)}, {shortest.decision})"
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
