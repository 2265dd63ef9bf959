"""Cost curves fitted to timings, with how far to trust them.

Prefill: T(n) = a·n + b·n² seconds to compute n prompt tokens (a span from c cached tokens to n
costs T(n) − T(c)). Decode: d(n) = c + e·n seconds per token at context n (each new token reads the
KV of the n tokens before it), so k tokens after a prompt of L cost k·c + e·(k·L + k(k−1)/2).

Both terms are fitted non-negative, each timing's error relative to itself. An estimate is a sum of
rows (what a cell or a launch computes) times the two terms; its interval comes from a parametric
bootstrap over the timings: each timing redrawn with the noise the fit's residuals show (the noise
level itself drawn from its chi-square uncertainty, since a probe has few residuals), then refitted. A fit whose points cannot tell the two terms apart (one length, lengths
too close, a single rate) says so, and its interval is the whole range from "all linear" to "all
quadratic" through the points instead of one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from niah.errors import NiahError

if TYPE_CHECKING:
    import numpy as np

SPREAD_MIN = 2.0
"""Observed lengths must span at least this ratio (longest ÷ shortest) to identify the second term."""
ASSUMED_NOISE = 0.05
"""Relative timing noise assumed when no residual is left to measure it (as many points as terms,
e.g. `--rates` with two rates); stated as an assumption wherever it is used."""
ASSUMED_DECODE_RATE = 20.0
"""Decode tokens/s assumed when nothing measured one (stated as an assumption wherever it is used)."""
DRAWS = 1000
LEVEL = 0.90
"""The intervals are central 90% bootstrap intervals."""


@dataclass(frozen=True)
class PrefillPoint:
    """One observed prefill: computing from `cached` to `length` tokens took `seconds`."""

    length: int
    seconds: float
    cached: int = 0
    """Prompt tokens the server already held (reused from its cache) before computing."""

    @property
    def row(self) -> tuple[float, float]:
        return prefill_row(self.cached, self.length)

    @property
    def position(self) -> float:
        """Where the span sits: the ratio of its quadratic to its linear work (n + c)."""
        return self.length + self.cached


@dataclass(frozen=True)
class DecodePoint:
    """One observed decode: `tokens` tokens after a prompt of `context` tokens took `seconds`."""

    context: int
    tokens: int
    seconds: float

    @property
    def row(self) -> tuple[float, float]:
        return decode_row(self.context, self.tokens)

    @property
    def position(self) -> float:
        return self.context + (self.tokens - 1) / 2


def prefill_row(cached: float, length: float) -> tuple[float, float]:
    """The span cached → length in prefill terms: (tokens computed, n² − c²)."""
    return (length - cached, length * length - cached * cached)


def decode_row(context: float, tokens: float) -> tuple[float, float]:
    """`tokens` decoded after `context` prompt tokens: (tokens, the contexts they each read, summed)."""
    return (tokens, tokens * context + tokens * (tokens - 1) / 2)


@dataclass(frozen=True)
class Fit:
    """Two non-negative terms fitted to timings, with bootstrap draws of them."""

    kind: str
    """`prefill` or `decode`."""
    terms: tuple[float, float]
    """The point fit: (a, b) for prefill, (c, e) for decode."""
    source: str
    """Where the timings came from, in words."""
    points: tuple[PrefillPoint | DecodePoint, ...]
    reach: int
    """The longest length (prefill) or context (decode) observed: estimates beyond it extrapolate."""
    identified: bool = True
    """False when the points cannot tell the two terms apart: estimates give the whole range."""
    why: str = ""
    """Why the second term is not identified, or what the interval assumes."""
    noise: float = 0.0
    """Relative timing noise the bootstrap drew from (rms log residual over the degrees of freedom)."""
    ends: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 0.0), (0.0, 0.0))
    """Not identified: the all-linear and all-quadratic terms through the points."""
    draws: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Bootstrap draws of the terms (DRAWS × 2); None when not identified or nothing varies."""

    def value(self, row: Sequence[float]) -> float:
        """The estimate for `row` (a sum of rows): the fit; not identified, the geometric middle of
        the range."""
        if self.identified:
            return self.terms[0] * row[0] + self.terms[1] * row[1]
        low, high = self.interval(row)
        return math.sqrt(low * high)

    def interval(self, row: Sequence[float]) -> tuple[float, float]:
        """The 90% bootstrap interval of the estimate for `row`; not identified, the whole range."""
        if not self.identified:
            values = [t[0] * row[0] + t[1] * row[1] for t in self.ends]
            return min(values), max(values)
        if self.draws is None:
            value = self.value(row)
            return value, value
        import numpy as np

        samples = self.draws @ np.asarray(row, dtype=float)
        low, high = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        return float(low), float(high)

    def samples(self, row: Sequence[float]) -> np.ndarray | None:
        """The bootstrap draws of the estimate for `row` (None when the fit has none)."""
        import numpy as np

        if not self.identified or self.draws is None:
            return None
        return self.draws @ np.asarray(row, dtype=float)

    def note(self) -> str:
        """One line on how far the fit can be trusted."""
        if not self.identified:
            return f"the {SECOND[self.kind]} term is NOT identified ({self.why}): estimates give the whole range"
        if not self.points:
            return self.why
        how = f"{LEVEL:.0%} intervals from a bootstrap over {len(self.points)} timings"
        return f"{how} ({self.why})" if self.why else f"{how} (residual noise {self.noise:.1%})"


SECOND = {"prefill": "quadratic (attention)", "decode": "per-context (KV read)"}


def constant_decode(rate: float, source: str) -> Fit:
    """Decode at one rate whatever the context (`--decode-rate`, or the assumed one)."""
    return Fit("decode", (1 / rate, 0.0), source, (), 0, why="one rate, not by context")


def assumed_decode() -> Fit:
    return constant_decode(ASSUMED_DECODE_RATE, f"ASSUMED {ASSUMED_DECODE_RATE:g} tokens/s (nothing measured it; "
                           "--decode-rate sets it)")


def fit_prefill(points: Sequence[PrefillPoint], source: str) -> Fit:
    usable = [p for p in points if p.seconds > 0 and p.length > p.cached >= 0]
    if not usable:
        raise NiahError(f"no usable prefill points in {source} (need prefills with a positive time)")
    return fit_terms("prefill", usable, source, max(p.length for p in usable))


def fit_decode(points: Sequence[DecodePoint], source: str) -> Fit | None:
    """The decode curve, or None when nothing decoded more than one token."""
    usable = [p for p in points if p.seconds > 0 and p.tokens > 1]
    if not usable:
        return None
    return fit_terms("decode", usable, source, max(p.context for p in usable))


def fit_terms(kind: str, points: Sequence[PrefillPoint | DecodePoint], source: str, reach: int) -> Fit:
    """Fit, judge identifiability by the spread of the points, and bootstrap the residuals."""
    import numpy as np

    rows = np.array([p.row for p in points], dtype=float)
    times = np.array([p.seconds for p in points], dtype=float)
    terms = _solve(rows, times)
    positions = [p.position for p in points]
    spread = max(positions) / min(positions)
    if spread < SPREAD_MIN:
        lengths = sorted({round(p) for p in positions})
        why = (f"one {LENGTH[kind]} ({lengths[0]:,})" if len(lengths) == 1
               else f"{LENGTH[kind]}s only {spread:.2f}x apart, {SPREAD_MIN:g}x needed")
        ends = (_one_term(rows, times, 0), _one_term(rows, times, 1))
        return Fit(kind, ends[0], source, tuple(points), reach, identified=False, why=why, ends=ends)
    fitted = rows @ terms
    free = len(points) - int(np.count_nonzero(terms))  # residual degrees of freedom
    if free >= 1:
        noise, why = float(np.sqrt(np.sum(np.log(times / fitted) ** 2) / free)), ""
    else:
        noise, why = ASSUMED_NOISE, f"as many timings as terms: ASSUMED {ASSUMED_NOISE:.0%} noise on each"
    rng = np.random.default_rng(0)  # the same timings give the same interval
    # the noise level is itself uncertain with few residuals: each draw takes its own
    levels = noise * np.sqrt(free / rng.chisquare(free, DRAWS)) if free >= 1 else np.full(DRAWS, noise)
    shocks = np.clip(rng.normal(0.0, 1.0, (DRAWS, len(points))) * levels[:, None], -3.0, 3.0)
    draws = _solve(rows, fitted * np.exp(shocks))
    return Fit(kind, (float(terms[0]), float(terms[1])), source, tuple(points), reach, why=why, noise=noise,
               draws=draws)


LENGTH = {"prefill": "probe length", "decode": "context"}


def _solve(rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Least squares of relative errors with both terms ≥ 0 for each row of `times` (draws × points,
    or one vector of points): the two-term fit when both terms come out non-negative, else the
    better of the two one-term fits."""
    import numpy as np

    many = np.atleast_2d(times)
    scale = rows.max(axis=0)
    scale[scale == 0] = 1.0
    design = (rows / scale)[None, :, :] / many[:, :, None]  # columns scaled to 1, rows ÷ their time
    gram = np.einsum("mij,mik->mjk", design, design)
    moment = design.sum(axis=1)  # design' · 1: every point's target is a relative error of 0
    candidates = []
    for column in (0, 1):
        coef = np.zeros_like(moment)
        diagonal = gram[:, column, column]
        safe = np.where(diagonal > 0, diagonal, 1.0)
        coef[:, column] = np.where(diagonal > 0, np.maximum(moment[:, column], 0) / safe, 0.0)
        candidates.append(coef)
    det = gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] ** 2
    solvable = det > 1e-12 * gram[:, 0, 0] * gram[:, 1, 1]
    both = np.zeros_like(moment)
    both[solvable] = np.linalg.solve(gram[solvable], moment[solvable][:, :, None])[:, :, 0]
    valid = solvable & (both.min(axis=1) >= 0)
    candidates.append(np.where(valid[:, None], both, np.nan))
    losses = np.stack([np.nansum((np.einsum("mij,mj->mi", design, c) - 1) ** 2, axis=1) for c in candidates])
    losses[2][~valid] = np.inf
    best = np.take_along_axis(np.stack(candidates), losses.argmin(axis=0)[None, :, None], axis=0)[0]
    best = best / scale
    return best if np.ndim(times) == 2 else best[0]


def _one_term(rows: np.ndarray, times: np.ndarray, column: int) -> tuple[float, float]:
    """The best relative-error fit with only `column`'s term."""
    import numpy as np

    x = rows[:, column] / times
    value = max(0.0, float(x.sum() / (x @ x))) if x @ x > 0 else 0.0
    out = np.zeros(2)
    out[column] = value
    return (float(out[0]), float(out[1]))
