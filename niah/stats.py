"""Small statistics shared by reports: pass rates and their Wilson score intervals."""

from __future__ import annotations

import math

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


def pass_rate(passes: int, trials: int) -> float | None:
    """passes / trials, or None with no trials."""
    return passes / trials if trials else None
