"""The one gate rule of `niah compare`, as properties over crafted pairs: a pool fails the gate only by
the exact sign test at its level's α or a broken pair, so more trials never make the gate more lenient."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from niah.cli import main
from niah.publish.compare import ALPHA, REGRESSIONS, change_of
from niah.publish.stats import ANSWERED_OUTCOMES

OUTCOMES = ("PASS", "FAIL", "WRONG_KEY", "TRUNCATED", "TIMEOUT", "HTTP_ERROR", "CLAMPED", "CRASH", "CONTEXT_ERROR")
OUTCOME = st.one_of(st.sampled_from(("PASS", "FAIL")), st.sampled_from(OUTCOMES))  # mostly PASS and FAIL
PAIR = st.tuples(OUTCOME, OUTCOME)
PAIRS = st.lists(PAIR, max_size=20)
LEVELS = st.sampled_from([ALPHA, ALPHA / 5, ALPHA / 25, ALPHA / 120])
"""A length's or a task's α, and a cell's in grids of 5, 25 and 120 cells."""


def b_wins(pair: tuple[str, str]) -> bool:
    """B did better on this pair: it passed where A answered without a PASS, or answered where A did not."""
    a, b = pair
    answered = a in ANSWERED_OUTCOMES, b in ANSWERED_OUTCOMES
    return (all(answered) and a != "PASS" and b == "PASS") or (not answered[0] and answered[1])


def fails(pairs: list[tuple[str, str]], alpha: float) -> bool:
    return change_of(pairs, alpha) in REGRESSIONS


@given(PAIRS, st.lists(PAIR.filter(lambda p: not b_wins(p)), min_size=1, max_size=20), LEVELS)
@example([("PASS", "FAIL")], [("PASS", "PASS"), ("PASS", "PASS")], ALPHA)  # 1/1 -> 0/1, then 3/3 -> 1/3
def test_trials_b_did_not_win_never_lift_a_failure(pairs: list[tuple[str, str]], more: list[tuple[str, str]],
                                                   alpha: float) -> None:
    """Adding trials (lost, concordant or broken in B) to a pool that fails the gate keeps it failing."""
    if fails(pairs, alpha):
        assert fails(pairs + more, alpha)


@given(PAIRS, st.integers(2, 5), LEVELS)
def test_the_same_outcomes_over_more_trials_never_lift_a_failure(pairs: list[tuple[str, str]], times: int,
                                                                 alpha: float) -> None:
    """The same mix of pairs, `times` as many of them: a failing pool still fails."""
    if fails(pairs, alpha):
        assert fails(pairs * times, alpha)


@given(st.integers(0, 40), st.integers(0, 40))
def test_concordant_trials_never_change_the_verdict(lost: int, kept: int) -> None:
    """3/3 -> 1/3 is judged as 1/1 -> 0/1 with two PASS-PASS pairs added: by its 2 lost pairs alone."""
    pairs = [("PASS", "FAIL")] * lost
    assert fails(pairs, ALPHA) == fails(pairs + [("PASS", "PASS")] * kept + [("FAIL", "FAIL")] * kept, ALPHA)


def test_one_flip_with_one_trial_is_shown_not_failed() -> None:
    """--trials 1: a single PASS -> FAIL is `down` (p = 0.5); it takes 5 lost of 5 at α = 0.05."""
    assert change_of([("PASS", "FAIL")]) == "down"
    assert change_of([("PASS", "FAIL")] * 4) == "down" and change_of([("PASS", "FAIL")] * 5) == "regression"
    assert change_of([("PASS", "FAIL")] * 5, ALPHA / 25) == "down"  # one cell of 25: p ≤ 0.002 needs 9
    assert change_of([("PASS", "FAIL")] * 9, ALPHA / 25) == "regression"


def test_a_timeout_or_http_error_where_a_answered_counts_against_b() -> None:
    for outcome in ("TIMEOUT", "HTTP_ERROR"):
        assert change_of([("PASS", "PASS")] * 4 + [("FAIL", outcome)]) == "broke"
    assert change_of([("TIMEOUT", "PASS")]) == "fixed" and change_of([("TIMEOUT", "TIMEOUT")]) == "same"


def test_the_rule_is_written_in_the_readme_and_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    root = Path(__file__).parents[1]
    assert "(docs/compare.md)" in (root / "README.md").read_text(encoding="utf-8")  # the front page links the manual
    readme = " ".join((root / "docs" / "compare.md").read_text(encoding="utf-8").split())
    assert "exact one-sided sign test (exact McNemar) on its discordant pairs" in help_text
    assert f"gives p <= {ALPHA:g}; a cell, the same test at {ALPHA:g} / the number of cells compared" in help_text
    assert "TIMEOUT or HTTP_ERROR in B where A answered" in help_text
    assert f"gives p ≤ α = {ALPHA:g}" in readme and "at α divided by the number of cells compared" in readme
    assert "more trials never make the gate more lenient" in readme and "more trials never make the gate more lenient" in help_text
