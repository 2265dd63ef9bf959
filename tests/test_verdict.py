"""Pass-rate verdicts: the intervals, the decision, clustered trials, the rounds `--trials auto` adds,
and the effective length."""

from __future__ import annotations

import pytest

from niah.cells import Cell, plan_cells
from niah.errors import NiahError
from niah.publish.stats import wilson_interval
from niah.publish.verdict import (
    BELOW,
    CLEARS,
    UNDECIDED,
    TrialPolicy,
    clopper_pearson,
    decide,
    design_effect,
    judge_lengths,
    pass_interval,
    policy_of,
)
from niah.run.rounds import Rounds, next_trial


@pytest.mark.parametrize(
    ("passes", "trials", "low", "high"),
    [(0, 5, 0.0, 0.5218), (5, 5, 0.4782, 1.0), (3, 10, 0.0667, 0.6525), (25, 25, 0.8628, 1.0), (0, 0, 0.0, 1.0)],
)
def test_clopper_pearson_matches_the_published_values(passes: int, trials: int, low: float, high: float) -> None:
    assert [round(x, 4) for x in clopper_pearson(passes, trials)] == [low, high]


def test_all_passing_trials_clear_rulers_threshold_first_at_23_wilson_and_24_exact() -> None:
    def first(interval: str) -> int:
        return next(n for n in range(1, 100) if decide(*pass_interval([(1, 1)] * n, interval), 0.856) == CLEARS)

    assert (first("wilson"), first("exact")) == (23, 24)


def test_decision_is_clears_below_or_undecided() -> None:
    assert decide(*wilson_interval(25, 25), 0.856) == CLEARS
    assert decide(*wilson_interval(0, 5), 0.856) == BELOW  # 0/5: at most 43%
    assert decide(*wilson_interval(4, 5), 0.856) == UNDECIDED


def test_clustered_trials_widen_the_interval_by_the_design_effect() -> None:
    independent = [(1, 1)] * 15 + [(0, 1)] * 5
    clustered = [(5, 5), (5, 5), (5, 5), (0, 5)]  # the same 15/20, one haystack failing whole
    assert design_effect(independent) == 1.0
    assert design_effect(clustered) == 5.0  # capped at the cluster size: one observation per haystack
    assert design_effect([(5, 5)] * 4) == 5.0  # no variation to measure: the worst case
    assert design_effect([(3, 5), (4, 5), (5, 5), (3, 5)]) == 1.0  # no more spread than chance: at least 1
    assert 1.0 < design_effect([(2, 5), (5, 5), (5, 5), (1, 5)]) < 5.0
    low_i, high_i = pass_interval(independent)
    low_c, high_c = pass_interval(clustered)
    assert low_c < low_i and high_c > high_i
    assert pass_interval(clustered) == pytest.approx(wilson_interval(3, 4))


def test_policy_checks_and_round_trips_through_the_fingerprint() -> None:
    policy = TrialPolicy(auto=True, pass_rate=0.9, max_trials=8, interval="exact")
    assert policy_of({"trials": policy.record()}) == policy
    assert policy_of({}) == TrialPolicy() and "max_trials" not in TrialPolicy().record()
    for bad in ({"pass_rate": 1.0}, {"max_trials": 0}, {"interval": "normal"}, {"clusters": "x"}):
        with pytest.raises(NiahError):
            TrialPolicy(**bad)  # type: ignore[arg-type]
    assert "independent trials" in TrialPolicy(auto=True).describe()


def rows(plan: dict[int, str]) -> list[tuple[int, int, str]]:
    """(length, trial, outcome) rows: one trial per letter, P PASS, F FAIL, W WRONG_KEY, C CLAMPED."""
    names = {"P": "PASS", "F": "FAIL", "W": "WRONG_KEY", "C": "CLAMPED"}
    return [(length, t, names[x]) for length, letters in plan.items() for t, x in enumerate(letters)]


def test_effective_length_is_the_longest_with_every_shorter_one_clearing() -> None:
    verdict = judge_lengths(rows({1024: "P" * 25, 2048: "P" * 25, 4096: "PPPPF", 8192: "P" * 25}), TrialPolicy())
    assert [v.decision for v in verdict.lengths] == [CLEARS, CLEARS, UNDECIDED, CLEARS]
    assert verdict.effective_length == 2048
    assert verdict.late == ("8192 clears after 4096 did not clear (undecided)",)
    failed = judge_lengths(rows({65536: "FFFFF", 131072: "P" * 25}), TrialPolicy())
    assert failed.effective_length is None and failed.late == ("131072 clears after 65536 failed",)
    assert failed.text().startswith("no effective length: the shortest length, 65,536, does not clear 85.6%")
    assert failed.to_dict()["clears_after_a_failure"] == ["131072 clears after 65536 failed"]


def test_wrong_key_and_non_retrieval_outcomes_in_the_verdict() -> None:
    verdict = judge_lengths(rows({1024: "WWWWW", 2048: "CCCCC"}), TrialPolicy())
    first, second = verdict.lengths
    assert (first.passes, first.answered, first.decision) == (0, 5, BELOW)  # WRONG_KEY: answered, not passed
    assert (second.answered, second.decision) == (0, UNDECIDED)  # nothing answered: nothing known


def test_next_trial_stops_when_decided_capped_or_nothing_answered() -> None:
    policy = TrialPolicy(auto=True, max_trials=20)
    depths = [0.0, 50.0, 100.0, 25.0, 75.0]

    def outcomes(per_trial: list[str]):
        return lambda depth, trial: per_trial[trial] if trial < len(per_trial) else None

    assert next_trial(depths, outcomes([]), policy) == 0
    assert next_trial(depths, outcomes(["PASS"] * 4), policy) == 4  # 20/20: 84% not yet above 85.6%
    assert next_trial(depths, outcomes(["PASS"] * 5), policy) is None  # 25/25 clears
    assert next_trial(depths, outcomes(["FAIL"]), policy) is None  # 0/5 is below
    assert next_trial(depths, outcomes(["CLAMPED"]), policy) is None  # nothing answered
    assert next_trial(depths, outcomes(["PASS"] * 2), TrialPolicy(auto=True, max_trials=2)) is None  # the cap
    partial = lambda depth, trial: "PASS" if trial == 0 and depth < 100 else None
    assert next_trial(depths, partial, policy) == 0  # a round with a cell missing (a resume) is finished first


def test_rounds_hand_out_each_undecided_length_a_round_at_a_time() -> None:
    grid = ((1024, (0.0, 100.0)), (2048, (0.0, 100.0)))
    cells = plan_cells(grid, 20)
    recorded: dict[tuple[str, int, float, int], str] = {}
    rounds = Rounds(cells, TrialPolicy(auto=True), recorded.get)
    first = rounds.next()
    assert [(c.length, c.trial) for c in first] == [(1024, 0), (2048, 0), (1024, 0), (2048, 0)]
    assert rounds.next() == []  # handed out, not recorded yet: nothing more
    recorded.update({c.key: "PASS" for c in first if c.length == 1024})
    recorded.update({c.key: "FAIL" for c in first if c.length == 2048})
    in_flight = {Cell(2048, 0.0, 1).key}
    assert rounds.next(in_flight) == [c for c in cells if c.length == 1024 and c.trial == 1]
    assert rounds.next() == []  # 2048 is below (0/2: at most 66%), 1024's next round is handed out


def test_rounds_resume_from_the_recorded_cells_and_retry_only_when_asked() -> None:
    cells = plan_cells(((1024, (0.0, 100.0)),), 20)
    recorded = {Cell(1024, 0.0, 0).key: "PASS", Cell(1024, 100.0, 0).key: "TIMEOUT", Cell(1024, 0.0, 1).key: "PASS"}
    assert [(c.depth, c.trial) for c in Rounds(cells, TrialPolicy(auto=True), recorded.get).next()] == [(100.0, 1)]
    retried = Rounds(cells, TrialPolicy(auto=True), recorded.get, redo=("TIMEOUT",))
    assert [(c.depth, c.trial) for c in retried.next()] == [(100.0, 0)]
