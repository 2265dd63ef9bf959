"""Cells of the length × depth × trial grid: parsing `--lengths`/`--depths` and the sending order."""

from __future__ import annotations

import re
from dataclasses import dataclass

from niah.errors import NiahError

SUFFIXES = {"": 1, "k": 1024, "m": 1024 * 1024}


@dataclass(frozen=True)
class Cell:
    """One test point: a prompt of exactly `length` tokens with the needle at `depth` percent."""

    length: int
    depth: float
    trial: int

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.length, float(self.depth), self.trial)


def parse_length(text: str) -> int:
    """`1010000`, `131k` (= 131,072) or `1m` (= 1,048,576) as a positive token count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise NiahError(f"bad length {text!r}: use a token count like 1010000, 131k or 1m")
    value = float(match.group(1)) * SUFFIXES[match.group(2).lower()]
    if value != int(value) or value <= 0:
        raise NiahError(f"bad length {text!r}: must be a positive whole number of tokens")
    return int(value)


def parse_lengths(text: str) -> tuple[int, ...]:
    """A comma-separated list of lengths."""
    lengths = tuple(parse_length(part) for part in text.split(",") if part.strip())
    if not lengths:
        raise NiahError("--lengths is empty")
    return lengths


def parse_depths(text: str) -> tuple[float, ...]:
    """`0,25,50,75,100` or `linspace:START:STOP:COUNT`, each depth a percent in 0..100."""
    if text.startswith("linspace:"):
        parts = text.split(":")[1:]
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            raise NiahError(f"bad depths {text!r}: use linspace:START:STOP:COUNT, e.g. linspace:0:100:11") from None
        if count < 1 or len(parts) != 3:
            raise NiahError(f"bad depths {text!r}: COUNT must be at least 1")
        step = (stop - start) / (count - 1) if count > 1 else 0.0
        depths = tuple(round(start + i * step, 6) for i in range(count))
    else:
        try:
            depths = tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise NiahError(f"bad depths {text!r}: use percents like 0,25,50,75,100") from None
    if not depths:
        raise NiahError("--depths is empty")
    for depth in depths:
        if not 0 <= depth <= 100:
            raise NiahError(f"depth {depth:g} is outside 0-100")
    return depths


def plan_cells(grid: tuple[tuple[int, tuple[float, ...]], ...], trials: int) -> list[Cell]:
    """Cells in sending order from (length, depths) rows: lengths ascending; per length and
    trial, depth descending.

    Consecutive prompts of one length share the haystack up to the later cell's needle, so
    descending depth lets the server's prompt cache skip that prefix.
    """
    if trials < 1:
        raise NiahError("--trials must be at least 1")
    return [
        Cell(length, float(depth), trial)
        for length, depths in sorted(grid)
        for trial in range(trials)
        for depth in sorted(set(depths), reverse=True)
    ]
