"""The run's progress bar: current cell, prefill progress (tokens, t/s) and an ETA from measured rates."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from tqdm import tqdm

from niah.cells import shared_prefix

if TYPE_CHECKING:
    from niah.cells import Cell


def expected_prefill(cells: list[Cell], launch_of: dict[int, object] | None = None) -> list[int]:
    """Tokens each cell is expected to compute when the previous cell's prefix is reused: all but the
    haystack it shares with the cell sent before it on the same launch (`launch_of`: length → launch;
    each launch's cells go in plan order)."""
    launch_of = launch_of or {}
    expected: list[int] = []
    previous: dict[object, Cell] = {}
    for cell in cells:
        launch = launch_of.get(cell.length)
        expected.append(max(1, round(cell.length - shared_prefix(previous.get(launch), cell))))
        previous[launch] = cell
    return expected


class RunProgress:
    """A tqdm bar over cells; its postfix shows prefill tokens, rate and an ETA."""

    def __init__(
        self,
        cells: list[Cell],
        enabled: bool = True,
        stream: TextIO | None = None,
        delay_s: float = 1.0,
        launch_of: dict[int, object] | None = None,
    ) -> None:
        self._remaining = dict(zip((c.key for c in cells), expected_prefill(cells, launch_of)))
        self._lines = stream
        """Where the one-line-per-cell results go (stdout by default; the bar's stream when given)."""
        self._bar = tqdm(
            total=len(cells), unit="cell", disable=not enabled, file=stream or sys.stderr,
            dynamic_ncols=True, delay=delay_s, mininterval=0 if stream else 0.1,
        )
        self._tokens_done = 0
        self._seconds_done = 0.0
        self._cell: Cell | None = None
        self._started: dict[tuple[int, float, int], tuple[float, str | None]] = {}
        """Cells in flight (several with several servers): when each started and on which server."""

    def add(self, cells: list[Cell]) -> None:
        """More cells to run (the next rounds of `--trials auto`)."""
        self._remaining.update(zip((c.key for c in cells), expected_prefill(cells)))
        self._bar.total = (self._bar.total or 0) + len(cells)
        self._bar.refresh()

    def skip(self, cells: list[Cell]) -> None:
        """Cells already finished in an earlier run (resume): counted done, left out of the ETA and the rate."""
        fresh = [c for c in cells if self._remaining.pop(c.key, None) is not None]
        if self._bar.disable:
            return
        self._bar.n += len(fresh)
        self._bar.initial += len(fresh)
        self._bar.last_print_n = self._bar.n
        self._bar.refresh()

    @property
    def tokens_left(self) -> int:
        """Prefill tokens the cells not yet started are expected to compute."""
        current = self._cell.key if self._cell else None
        return sum(n for key, n in self._remaining.items() if key != current)

    def start_cell(self, cell: Cell, endpoint: str | None = None) -> None:
        """`cell` starts (on `endpoint`, named when the run has several servers)."""
        self._cell = cell
        self._started[cell.key] = (time.monotonic(), endpoint)
        self._bar.set_description(self._label(cell, endpoint))

    def prefill(self, event: dict[str, object], phase: str = "prefill") -> None:
        """A `prompt_progress` event: {total, cache, processed, time_ms}; `phase` is `prime` while a
        primer computes the prompt up to its needle."""
        total = int(event.get("total", 0) or 0)  # type: ignore[call-overload]
        cache = int(event.get("cache", 0) or 0)  # type: ignore[call-overload]
        processed = int(event.get("processed", 0) or 0)  # type: ignore[call-overload]
        time_ms = float(event.get("time_ms", 0) or 0)  # type: ignore[arg-type]
        computed = max(0, processed - cache)
        rate = computed / (time_ms / 1000) if time_ms > 0 else 0.0
        self._bar.set_postfix_str(
            f"{phase} {processed:,}/{total:,} tok, {rate:,.0f} t/s, ETA {self._eta(rate, total - processed)}",
            refresh=True,
        )

    def _eta(self, current_rate: float, left_in_cell: int) -> str:
        rate = self._tokens_done / self._seconds_done if self._seconds_done > 0 else current_rate
        if rate <= 0:
            return "?"
        seconds = (left_in_cell + self.tokens_left) / rate
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"

    def end_cell(
        self, outcome: str, computed_tokens: int = 0, prompt_ms: float | None = None, cell: Cell | None = None,
        again: bool = False,
    ) -> None:
        """The current cell (or `cell`, when several are in flight) ended with `outcome`; `again`:
        it is run again (a CRASH retried after a restart or on another server), so it is not counted done."""
        cell = cell or self._cell
        started, endpoint = self._started.pop(cell.key, (time.monotonic(), None)) if cell else (time.monotonic(), None)
        if cell is not None and not again:
            self._remaining.pop(cell.key, None)
        if computed_tokens and prompt_ms:
            self._tokens_done += computed_tokens
            self._seconds_done += prompt_ms / 1000
        self._bar.set_postfix_str(f"ETA {self._eta(0.0, 0)}", refresh=False)
        self._bar.update(0 if again else 1)
        label = self._label(cell, endpoint) if cell else "cell"
        retry = ", to be retried" if again else ""
        self._bar.write(f"{label}: {outcome} ({time.monotonic() - started:.1f} s{retry})", file=self._lines)

    @staticmethod
    def _label(cell: Cell, endpoint: str | None = None) -> str:
        task = "" if cell.task == "single" else f"{cell.task} "
        where = f" @ {endpoint}" if endpoint else ""
        return f"{task}L={cell.length:,} D={cell.depth:g}% t{cell.trial}{where}"

    def close(self) -> None:
        self._bar.close()
