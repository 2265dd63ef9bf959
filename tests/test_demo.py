"""`niah demo`: the miniature keeps the seed's factors, and every row fits its launch."""

from __future__ import annotations

from niah.cli.demo import ALL_DEPTHS, DEMO_ROWS
from niah.profiles import load_profile
from niah.runner import ANSWER_BUDGET

SMOLLM2_NATIVE = 8192


def test_rows_use_the_seeds_factors_and_fit_their_context() -> None:
    factors = []
    for length, profile_name, depths in DEMO_ROWS:
        profile = load_profile(profile_name)
        assert length + ANSWER_BUDGET <= profile.context
        assert set(depths) <= set(ALL_DEPTHS)
        factors.append(profile.factor_label(SMOLLM2_NATIVE))
    assert factors == ["native", "native", "1.5x YaRN", "2x YaRN", "3.85x YaRN"]
