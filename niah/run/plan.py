"""`niah plan` as a library: what a grid costs, cell by cell, on each launch's own cost curves.

A cell computes only what the prompt cache cannot give it (`niah.run.progress.expected_prefill`) on
its launch's prefill curve, then decodes up to the answer budget at the context it sits at. Every
estimate carries an interval from its curves' fit (niah.run.fit) and how far past the longest probed
length it reaches. Curves come from `--rates`, an earlier run (`--from`) or a probe of each launch
(niah.run.probe); nothing here talks to a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from niah.cells import Cell, parse_length
from niah.errors import NiahError
from niah.run.fit import (
    LEVEL,
    DecodePoint,
    Fit,
    PrefillPoint,
    decode_row,
    prefill_row,
)
from niah.run.progress import expected_prefill

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts
    from niah.launch.memory import MemoryEstimate
    from niah.run.probe import ProbeResult

@dataclass(frozen=True)
class Costs:
    """What a launch's cells are costed on."""

    prefill: Fit
    decode: Fit
    probe: ProbeResult | None = None
    """The probe of this launch the curves were fitted to, when they were."""


@dataclass(frozen=True)
class Estimate:
    """Seconds, with the interval of the fits behind them."""

    seconds: float
    low: float
    high: float
    ranged: bool = False
    """True when a fit could not identify its second term: [low, high] is the whole range, not 90%."""

    def text(self) -> str:
        return f"{hms(self.low)}–{hms(self.high)}"

    @property
    def label(self) -> str:
        return "range (a term unidentified)" if self.ranged else f"{LEVEL:.0%} interval"


def estimate(parts: Sequence[tuple[Fit, tuple[float, float]]]) -> Estimate:
    """The sum of `parts` (each a fit and a row): rows on one fit add up before the fit is applied, so
    one draw of a curve prices all its cells; different fits draw independently."""
    rows: dict[int, tuple[Fit, list[float]]] = {}
    for fit, row in parts:
        summed = rows.setdefault(id(fit), (fit, [0.0, 0.0]))[1]
        summed[0] += row[0]
        summed[1] += row[1]
    fits = list(rows.values())
    seconds = sum(fit.value(row) for fit, row in fits)
    if all(fit.identified for fit, _ in fits):
        import numpy as np

        total: Any = 0.0
        for fit, row in fits:
            drawn = fit.samples(row)
            total = total + (fit.value(row) if drawn is None else drawn)
        if isinstance(total, float):
            return Estimate(seconds, total, total)
        low, high = np.quantile(total, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        return Estimate(seconds, float(low), float(high))
    bounds = [fit.interval(row) for fit, row in fits]
    return Estimate(seconds, sum(b[0] for b in bounds), sum(b[1] for b in bounds), ranged=True)


# ---- curve sources ----------------------------------------------------------------------------


def parse_rates(text: str) -> list[PrefillPoint]:
    """`12k=2590,262k=1090,1m=390`: each a full prefill of LEN at an average of RATE tokens/s."""
    points = []
    for item in text.split(","):
        if not item.strip():
            continue
        length_text, sep, rate_text = item.partition("=")
        try:
            rate = float(rate_text)
        except ValueError:
            rate = math.nan
        if not sep or not length_text.strip() or not (rate > 0 and math.isfinite(rate)):
            raise NiahError(f"bad --rates item {item.strip()!r}: use LEN=TOKENS_PER_S, e.g. 12k=2590,262k=1090")
        length = parse_length(length_text)
        points.append(PrefillPoint(length=length, seconds=length / rate))
    if not points:
        raise NiahError("--rates is empty: use LEN=TOKENS_PER_S,..., e.g. 12k=2590,262k=1090,1m=390")
    return points


def results_path(run: Path) -> Path:
    """A run folder's results.jsonl (or the file itself)."""
    path = run / "results.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise NiahError(f"--from {run}: no results.jsonl there (give a run folder or its results file)")
    return path


def points_from_results(run: Path) -> tuple[list[PrefillPoint], list[DecodePoint]]:
    """Each sent cell's prefill (cache_n → cache_n + prompt_n in prompt_ms; a primer is one too) and
    its decode (predicted_n tokens after its prompt in predicted_ms)."""
    from niah.publish.results import load_cells

    frame = load_cells(results_path(run))
    prefills, decodes = [], []
    for row in frame.to_dict("records") if not frame.empty else []:
        for prefix in ("prompt", "prime"):
            computed, ms = _number(row.get(f"{prefix}_n")), _number(row.get(f"{prefix}_ms"))
            cached = int(_number(row.get("cache_n" if prefix == "prompt" else "prime_cache_n")) or 0)
            if computed and ms and computed > 0 and ms > 0:
                prefills.append(PrefillPoint(length=cached + int(computed), seconds=ms / 1000, cached=cached))
        predicted_n, predicted_ms = _number(row.get("predicted_n")), _number(row.get("predicted_ms"))
        prompt = (_number(row.get("prompt_n")) or 0) + (_number(row.get("cache_n")) or 0)
        if predicted_n and predicted_ms and predicted_n > 1 and predicted_ms > 0 and prompt > 0:
            decodes.append(DecodePoint(context=int(prompt), tokens=int(predicted_n), seconds=predicted_ms / 1000))
    if not prefills:
        raise NiahError(f"--from {run}: no cell there recorded a prefill (prompt_n and prompt_ms)")
    return prefills, decodes


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


# ---- memory (the one place plan asks for a launch's memory) -------------------------------------


def launch_memory(
    profile_name: str, facts: GGUFFacts | None, arch: str | None, model: Path | None = None,
    server_bin: str | None = None, answer_budget: int = 32,
) -> tuple[MemoryEstimate | None, str, int | None]:
    """The memory of one launch profile: llama.cpp's own projection (`llama-fit-params`) when the
    model file and the tool are there, else niah's formula (niah.launch.memory.project), or None and why
    not; and the per-slot context the launch will serve (None when unknown)."""
    from niah.launch.flag_numbers import LaunchOutOfRange
    from niah.launch.memory import project
    from niah.launch.profiles import load_profile, plan_launch
    from niah.launch.server import find_server_binary

    profile = load_profile(profile_name)
    try:
        plan = plan_launch(profile, facts, None, arch, answer_budget)
        binary = find_server_binary(server_bin) if model is not None else None
    except LaunchOutOfRange:
        raise
    except NiahError as exc:
        return None, str(exc), None
    memory = project(plan.memory, model, binary, plan.args)
    if memory is None:
        return None, "unknown (give --model GGUF, or --arch with a known shape)", plan.predicted_slot_context
    return memory, "", plan.predicted_slot_context


# ---- the costed schedule ----------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedCell:
    """One cell in sending order with what it is expected to compute and cost."""

    cell: Cell
    launch: str | None
    compute_tokens: int
    """Prompt tokens expected to be computed (the rest comes from the prompt cache)."""
    prefill_s: float
    decode_s: float
    cumulative_s: float
    estimate: Estimate | None = None
    """Prefill + decode with its interval (None when CLAMPED)."""
    extrapolation: float | None = None
    """The cell's length ÷ the longest length its prefill curve observed (> 1: extrapolated)."""
    clamped: bool = False
    """The launch cannot hold length + answer budget: `niah run` records CLAMPED and sends nothing."""

    @property
    def seconds(self) -> float:
        return self.prefill_s + self.decode_s


@dataclass(frozen=True)
class LaunchCost:
    """One launch's share of the plan, its curves and its memory."""

    name: str | None
    lengths: tuple[int, ...]
    estimate: Estimate
    costs: Costs
    extrapolation: float | None
    memory: MemoryEstimate | None = None
    memory_note: str = ""
    served: int | None = None
    """Per-slot context the launch serves (the probed server's, else predicted from the profile)."""

    @property
    def seconds(self) -> float:
        return self.estimate.seconds


@dataclass(frozen=True)
class Plan:
    """The grid costed on each launch's curves."""

    cells: tuple[PlannedCell, ...]
    answer_budget: int
    launches: tuple[LaunchCost, ...]
    cache_reuse: bool
    total: Estimate
    prefill: Estimate
    decode: Estimate

    @property
    def clamped(self) -> list[PlannedCell]:
        """Cells the launch cannot hold (never sent)."""
        return [c for c in self.cells if c.clamped]

    @property
    def compute_tokens(self) -> int:
        return sum(c.compute_tokens for c in self.cells)

    @property
    def naive_tokens(self) -> int:
        return sum(c.cell.length for c in self.cells if not c.clamped)

    @property
    def seconds(self) -> float:
        return self.total.seconds

    @property
    def extrapolation(self) -> float | None:
        factors = [launch.extrapolation for launch in self.launches if launch.extrapolation]
        return max(factors) if factors else None


def sending_order(cells: list[Cell], launch_of: dict[int, str]) -> list[Cell]:
    """Cells in the order `niah run` sends them: one launch after another, launches by their smallest
    length (as `niah.run.runner.launch_groups`), each launch's cells in plan order."""
    firsts: dict[str | None, int] = {}
    for cell in cells:
        launch = launch_of.get(cell.length)
        firsts[launch] = min(firsts.get(launch, cell.length), cell.length)
    rank = {launch: i for i, launch in enumerate(sorted(firsts, key=lambda name: firsts[name]))}
    return sorted(cells, key=lambda c: rank[launch_of.get(c.length)])  # stable: plan order within a launch


def make_plan(
    cells: list[Cell],
    costs: Costs | dict[str | None, Costs],
    *,
    launch_of: dict[int, str] | None = None,
    answer_budget: int = 32,
    cache_reuse: bool = True,
    memory: dict[str, tuple[MemoryEstimate | None, str, int | None]] | None = None,
    served: int | None = None,
) -> Plan:
    """Cost `cells` (from `plan_cells`): each cell computes from what it shares with the cell before
    it on its launch up to its length, then decodes up to `answer_budget` tokens at that context, on
    its launch's `costs` (one Costs for every launch, or one per launch name). A cell whose length +
    answer budget exceeds what its launch serves (`memory`'s third item, a probe's /props, or
    `served` for the one server of a --url plan) is CLAMPED: costed at nothing, as `niah run` sends
    it nothing."""
    launch_of = launch_of or {}
    memory = memory or {}
    names = list(dict.fromkeys(launch_of.get(c.length) for c in sending_order(cells, launch_of)))
    costs_of = {name: costs if isinstance(costs, Costs) else costs[name] for name in names}
    slots = {name: _served(name, costs_of[name], memory, served) for name in names}
    ordered = sending_order(cells, launch_of)
    fits = [c for c in ordered if not _clamped(c, slots[launch_of.get(c.length)], answer_budget)]
    computed = dict(zip(fits, expected_prefill(fits, launch_of) if cache_reuse else [c.length for c in fits]))
    planned, total = [], 0.0
    prefills: dict[str | None, list[tuple[Fit, tuple[float, float]]]] = {name: [] for name in names}
    decodes: dict[str | None, list[tuple[Fit, tuple[float, float]]]] = {name: [] for name in names}
    for cell in ordered:
        name = launch_of.get(cell.length)
        if cell not in computed:
            planned.append(PlannedCell(cell, name, 0, 0.0, 0.0, total, clamped=True))
            continue
        cost = costs_of[name]
        prefill = (cost.prefill, prefill_row(cell.length - computed[cell], cell.length))
        decode = (cost.decode, decode_row(cell.length, answer_budget))
        prefills[name].append(prefill)
        decodes[name].append(decode)
        prefill_s, decode_s = cost.prefill.value(prefill[1]), cost.decode.value(decode[1])
        total += prefill_s + decode_s
        planned.append(PlannedCell(cell, name, computed[cell], prefill_s, decode_s, total, estimate([prefill, decode]),
                                   _factor(cell.length, cost.prefill)))
    launches = []
    for name in names:
        mine = [p for p in planned if p.launch == name]
        factors = [p.extrapolation for p in mine if p.extrapolation]
        mem, note, _ = memory.get(name or "", (None, "", None))
        launches.append(LaunchCost(
            name, tuple(sorted({p.cell.length for p in mine})), estimate(prefills[name] + decodes[name]), costs_of[name],
            max(factors) if factors else None, mem, note, slots[name],
        ))
    prefill_parts = [part for name in names for part in prefills[name]]
    decode_parts = [part for name in names for part in decodes[name]]
    return Plan(
        tuple(planned), answer_budget, tuple(launches), cache_reuse, estimate(prefill_parts + decode_parts),
        estimate(prefill_parts), estimate(decode_parts),
    )


def _served(name: str | None, costs: Costs, memory: dict[str, tuple[Any, str, int | None]], served: int | None) -> int | None:
    if costs.probe is not None and costs.probe.served:
        return costs.probe.served
    return memory.get(name or "", (None, "", served))[2]


def _factor(length: int, fit: Fit) -> float | None:
    return length / fit.reach if fit.reach else None


def _clamped(cell: Cell, served: int | None, answer_budget: int) -> bool:
    return served is not None and cell.length + answer_budget > served


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
