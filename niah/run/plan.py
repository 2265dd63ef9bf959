"""`niah plan` as a library: a prefill-time curve T(n) = a·n + b·n² and what a grid costs on it.

The curve is fitted to measured or stated points (`--rates`, a `--probe` against a server, an earlier
run's results); the grid is costed cell by cell in sending order, each cell computing only what the
prompt cache cannot give it (`niah.run.progress.expected_prefill`). Nothing here talks to a server except
`probe_points`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from niah.cells import Cell, parse_length
from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.run.progress import expected_prefill

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts
    from niah.launch.profiles import MemoryEstimate
    from niah.launch.session import ServerSession

ASSUMED_DECODE_RATE = 20.0
"""Decode tokens/s assumed when nothing measured one (stated as an assumption wherever it is used)."""
PROBE_FRACTIONS = (8, 4, 2)
"""A probe prefills 1/8, 1/4 and 1/2 of the grid's smallest length (unless lengths are given)."""
PROBE_MIN_TOKENS = 256
PROBE_DECODE_TOKENS = 16
PROBE_ROUNDS = 2
"""Each probe length is prefilled this many times, ascending then descending, so a load that drifts
during the probe weighs on every length alike."""


@dataclass(frozen=True)
class PrefillPoint:
    """One observed prefill: computing from `cached` to `length` tokens took `seconds`."""

    length: int
    seconds: float
    cached: int = 0
    """Prompt tokens the server already held (reused from its cache) before computing."""


@dataclass(frozen=True)
class PrefillCurve:
    """Seconds to prefill from 0 to n tokens: a·n + b·n² (linear work plus the attention term)."""

    a: float
    """Seconds per token of the linear work."""
    b: float
    """Seconds per token² of the attention term."""
    source: str
    """Where the points came from, in words (`--rates 12k=2590,...`, `probe of ...`, `results ...`)."""
    points: tuple[PrefillPoint, ...] = ()
    """The points the curve was fitted to."""

    def seconds(self, n: float) -> float:
        """T(n): seconds to prefill n tokens from an empty cache."""
        return self.a * n + self.b * n * n

    def span(self, cached: float, length: float) -> float:
        """Seconds to compute from `cached` to `length` tokens: T(length) − T(cached)."""
        return self.seconds(length) - self.seconds(cached)

    def rate(self, n: float) -> float:
        """Average prefill tokens/s of a full prefill of n tokens."""
        return n / self.seconds(n) if self.seconds(n) > 0 else math.inf


def fit_curve(points: list[PrefillPoint] | tuple[PrefillPoint, ...], source: str) -> PrefillCurve:
    """Least-squares a, b ≥ 0 with each point's error relative to its time (points span orders of
    magnitude: a 12K and a 1M prefill weigh the same). One point, or points that cannot tell the
    two terms apart, give the linear curve through them."""
    import numpy as np

    usable = [p for p in points if p.seconds > 0 and p.length > p.cached >= 0]
    if not usable:
        raise NiahError(f"no usable prefill points in {source} (need prefills with a positive time)")
    scale = float(max(p.length for p in usable))
    rows = np.array([[(p.length - p.cached) / scale, (p.length**2 - p.cached**2) / scale**2] for p in usable])
    times = np.array([p.seconds for p in usable])
    design, target = rows / times[:, None], np.ones(len(usable))  # relative error: divide by each time

    def residual(coef: np.ndarray) -> float:
        return float(np.sum((design @ coef - target) ** 2))

    def one_term(column: int) -> np.ndarray:  # the best fit with the other term held at zero
        x, coef = design[:, column], np.zeros(2)
        coef[column] = max(0.0, float(x @ target / (x @ x)))
        return coef

    if len(usable) < 2 or np.linalg.matrix_rank(design) < 2:
        best = one_term(0)  # underdetermined: the linear curve
    else:
        candidates = [one_term(0), one_term(1)]
        coef = np.linalg.lstsq(design, target, rcond=None)[0]
        if coef[0] >= 0 and coef[1] >= 0:
            candidates.append(coef)
        best = min(candidates, key=residual)
    return PrefillCurve(a=float(best[0]) / scale, b=float(best[1]) / scale**2, source=source, points=tuple(usable))


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


def points_from_results(run: Path) -> tuple[list[PrefillPoint], float | None]:
    """Each sent cell's prefill (cache_n → cache_n + prompt_n in prompt_ms) and the decode rate
    over all cells (predicted tokens ÷ predicted seconds; None when no cell decoded)."""
    from niah.publish.results import load_cells

    frame = load_cells(results_path(run))
    points, decoded, decode_s = [], 0, 0.0
    for row in frame.to_dict("records") if not frame.empty else []:
        prompt_n, prompt_ms = _number(row.get("prompt_n")), _number(row.get("prompt_ms"))
        cached = int(_number(row.get("cache_n")) or 0)
        if prompt_n and prompt_ms and prompt_n > 0 and prompt_ms > 0:
            points.append(PrefillPoint(length=cached + int(prompt_n), seconds=prompt_ms / 1000, cached=cached))
        prime_n, prime_ms = _number(row.get("prime_n")), _number(row.get("prime_ms"))
        if prime_n and prime_ms and prime_n > 0 and prime_ms > 0:  # a primer is a prefill too
            prime_cached = int(_number(row.get("prime_cache_n")) or 0)
            points.append(PrefillPoint(length=prime_cached + int(prime_n), seconds=prime_ms / 1000, cached=prime_cached))
        predicted_n, predicted_ms = _number(row.get("predicted_n")), _number(row.get("predicted_ms"))
        if predicted_n and predicted_ms and predicted_n > 1 and predicted_ms > 0:
            decoded += int(predicted_n)
            decode_s += predicted_ms / 1000
    if not points:
        raise NiahError(f"--from {run}: no cell there recorded a prefill (prompt_n and prompt_ms)")
    return points, (decoded / decode_s if decode_s > 0 else None)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def probe_lengths(grid_lengths: list[int] | tuple[int, ...], served: int | None = None) -> list[int]:
    """1/8, 1/4 and 1/2 of the smallest grid length (at least 256 tokens), below the served context."""
    smallest = min(grid_lengths)
    lengths = sorted({max(PROBE_MIN_TOKENS, smallest // k) for k in PROBE_FRACTIONS})
    if served:
        lengths = [n for n in lengths if n + PROBE_DECODE_TOKENS + 64 <= served]
    return lengths


def probe_points(
    session: ServerSession, lengths: list[int], text: str, log: Any = None, rounds: int = PROBE_ROUNDS
) -> tuple[list[PrefillPoint], float | None]:
    """Prefill a prompt of about each length (corpus text cut to that many tokens) with the prompt
    cache off, `rounds` times (ascending, then descending, ...); the server's own timings give the
    points (prompt_n, cache_n, prompt_ms) and the decode rate. One short warm-up request comes
    first and is not counted."""
    ids = session.tokenize(_enough_text(text, max(lengths)))
    if len(ids) < max(lengths):
        raise NiahError(f"the probe text has only {len(ids):,} tokens, fewer than {max(lengths):,}")
    points, decoded, decode_s = [], 0, 0.0
    lengths = sorted(lengths)
    order = [n for r in range(rounds) for n in (lengths if r % 2 == 0 else lengths[::-1])]
    for index, n in enumerate([max(16, min(lengths) // 4), *order]):
        content = session.detokenize(ids[:n])
        chat = session.chat([{"role": "user", "content": content}], max_tokens=PROBE_DECODE_TOKENS, cache_prompt=False)
        if chat.status != "ok" or not chat.prompt_ms or not chat.prompt_n:
            raise NiahError(
                f"probe prefill of {n:,} tokens at {session.url} failed: {chat.error or 'no timings returned'}",
                EXIT_LAUNCH_INVALID,
            )
        if index == 0:
            continue  # warm-up
        cached = chat.cache_n or 0
        points.append(PrefillPoint(length=cached + chat.prompt_n, seconds=chat.prompt_ms / 1000, cached=cached))
        if log:
            log(f"probe: {chat.prompt_n:,} tokens computed ({cached:,} cached) in {chat.prompt_ms / 1000:.2f} s")
        if chat.predicted_n and chat.predicted_ms and chat.predicted_n > 1:
            decoded += chat.predicted_n
            decode_s += chat.predicted_ms / 1000
    return points, (decoded / decode_s if decode_s > 0 else None)


def _enough_text(text: str, tokens: int) -> str:
    """A prefix of `text` long enough for `tokens` tokens (about 4 characters each, doubled), repeated
    when the text is shorter."""
    want = tokens * 8 + 1000
    return (text * (want // max(1, len(text)) + 1))[:want]


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
    clamped: bool = False
    """The launch cannot hold length + answer budget: `niah run` records CLAMPED and sends nothing."""

    @property
    def seconds(self) -> float:
        return self.prefill_s + self.decode_s


@dataclass(frozen=True)
class LaunchCost:
    """One launch's share of the plan and its memory."""

    name: str | None
    lengths: tuple[int, ...]
    seconds: float
    memory: MemoryEstimate | None = None
    memory_note: str = ""
    served: int | None = None
    """Per-slot context the launch serves (predicted from the profile, or the probed server's)."""


@dataclass(frozen=True)
class Plan:
    """The grid costed on a curve."""

    cells: tuple[PlannedCell, ...]
    curve: PrefillCurve
    decode_rate: float
    decode_source: str
    """`measured`, `given` (--decode-rate) or `ASSUMED` (nothing measured it)."""
    answer_budget: int
    launches: tuple[LaunchCost, ...]
    cache_reuse: bool

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
    def prefill_s(self) -> float:
        return sum(c.prefill_s for c in self.cells)

    @property
    def naive_prefill_s(self) -> float:
        return sum(self.curve.seconds(c.cell.length) for c in self.cells if not c.clamped)

    @property
    def decode_s(self) -> float:
        return sum(c.decode_s for c in self.cells)

    @property
    def seconds(self) -> float:
        return self.prefill_s + self.decode_s


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
    curve: PrefillCurve,
    *,
    launch_of: dict[int, str] | None = None,
    answer_budget: int = 32,
    decode_rate: float | None = None,
    decode_source: str = "measured",
    cache_reuse: bool = True,
    memory: dict[str, tuple[MemoryEstimate | None, str, int | None]] | None = None,
    served: int | None = None,
) -> Plan:
    """Cost `cells` (from `plan_cells`) on `curve`: each cell computes from what it shares with the cell
    before it on its launch up to its length, then decodes up to `answer_budget` tokens (at
    `decode_rate`; without one, at ASSUMED_DECODE_RATE, labelled so). A cell whose length + answer
    budget exceeds what its launch serves (`memory`'s third item; `served` for the one server of a
    --url plan) is CLAMPED: costed at nothing, as `niah run` sends it nothing."""
    launch_of = launch_of or {}
    memory = memory or {}
    ordered = sending_order(cells, launch_of)
    slots = {name: memory.get(name or "", (None, "", served))[2] for name in set(launch_of.values()) | {None}}
    fits = [c for c in ordered if not _clamped(c, slots.get(launch_of.get(c.length)), answer_budget)]
    computed = dict(zip(fits, expected_prefill(fits, launch_of) if cache_reuse else [c.length for c in fits]))
    rate = decode_rate or ASSUMED_DECODE_RATE
    planned, total = [], 0.0
    for cell in ordered:
        if cell not in computed:
            planned.append(PlannedCell(cell, launch_of.get(cell.length), 0, 0.0, 0.0, total, clamped=True))
            continue
        prefill = curve.span(cell.length - computed[cell], cell.length)
        decode = answer_budget / rate
        total += prefill + decode
        planned.append(PlannedCell(cell, launch_of.get(cell.length), computed[cell], prefill, decode, total))
    launches = []
    for name in dict.fromkeys(p.launch for p in planned):
        mine = [p for p in planned if p.launch == name]
        mem, note, slot = memory.get(name or "", (None, "", served))
        launches.append(LaunchCost(
            name, tuple(sorted({p.cell.length for p in mine})), sum(p.seconds for p in mine), mem, note, slot
        ))
    source = decode_source if decode_rate else "ASSUMED"
    return Plan(tuple(planned), curve, rate, source, answer_budget, tuple(launches), cache_reuse)


def _clamped(cell: Cell, served: int | None, answer_budget: int) -> bool:
    return served is not None and cell.length + answer_budget > served


# ---- rendering --------------------------------------------------------------------------------


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def curve_lines(curve: PrefillCurve) -> list[str]:
    """The fitted curve and how it meets its points."""
    lines = [
        f"prefill curve from {curve.source}: T(n) = a·n + b·n², a = {curve.a:.4g} s/token, b = {curve.b:.4g} s/token²",
    ]
    for p in sorted(curve.points, key=lambda p: (p.length, p.cached))[:12]:
        fitted = curve.span(p.cached, p.length)
        span = f"{p.cached:,}→{p.length:,}" if p.cached else f"{p.length:,}"
        lines.append(
            f"  {span} tokens: {p.seconds:,.2f} s observed, {fitted:,.2f} s fitted ({fitted / p.seconds - 1:+.0%})"
        )
    if len(curve.points) > 12:
        lines.append(f"  ... and {len(curve.points) - 12} more points")
    return lines


def plan_text(plan: Plan) -> str:
    """The plan as a table and totals, for people."""
    lines = curve_lines(plan.curve)
    source = plan.decode_source
    if source == "ASSUMED":
        source = "ASSUMED (nothing measured it; --decode-rate sets it)"
    lines.append(
        f"decode: up to {plan.answer_budget} answer tokens per cell at {plan.decode_rate:,.1f} tokens/s, {source}"
    )
    if not plan.cache_reuse:
        lines.append("prompt cache reuse off: every cell computes its whole length")
    lines.append("")
    header = ("launch", "length", "depth", "trial", "compute", "seconds", "cumulative")
    rows = [header] + [
        (p.launch or "-", f"{p.cell.length:,}", f"{p.cell.depth:g}%", str(p.cell.trial),
         "CLAMPED" if p.clamped else f"{p.compute_tokens:,}", f"{p.seconds:,.1f}", hms(p.cumulative_s))
        for p in plan.cells
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    lines.append("")
    for launch in plan.launches:
        name = launch.name or "server"
        lengths = ", ".join(f"{n:,}" for n in launch.lengths)
        serves = f", serves {launch.served:,} per slot" if launch.served else ""
        lines.append(f"launch {name} (lengths {lengths}{serves}): {hms(launch.seconds)}")
        if launch.memory is not None:
            lines += [f"  {line}" for line in launch.memory.lines()]
        elif launch.name is not None:
            lines.append(f"  memory: {launch.memory_note}")
    ratio = plan.compute_tokens / plan.naive_tokens if plan.naive_tokens else 0.0
    lines += ["", f"cells: {len(plan.cells)}"]
    if plan.clamped:
        lengths = ", ".join(f"{n:,}" for n in sorted({p.cell.length for p in plan.clamped}))
        lines.append(
            f"CLAMPED: {len(plan.clamped)} cell(s) (lengths {lengths}) do not fit length + {plan.answer_budget} "
            "answer tokens in what their launch serves; `niah run` would send them nothing"
        )
    lines += [
        f"prefill tokens: {plan.compute_tokens:,} computed of {plan.naive_tokens:,} naive ({ratio:.3f})",
        f"prefill time: {hms(plan.prefill_s)} (naive, no reuse: {hms(plan.naive_prefill_s)})",
        f"decode time: {hms(plan.decode_s)} at most",
        f"total time: {hms(plan.seconds)} ({plan.seconds / 3600:.2f} h)",
    ]
    return "\n".join(lines)


def memory_json(memory: MemoryEstimate | None) -> dict[str, Any] | None:
    return None if memory is None else memory.as_json()


def plan_json(plan: Plan) -> dict[str, Any]:
    """The same plan as one JSON object."""
    curve = plan.curve
    return {
        "curve": {
            "source": curve.source,
            "a_s_per_token": curve.a,
            "b_s_per_token2": curve.b,
            "points": [
                {"cached": p.cached, "length": p.length, "seconds": p.seconds, "fitted_s": curve.span(p.cached, p.length)}
                for p in curve.points
            ],
        },
        "decode": {"tokens_per_s": plan.decode_rate, "source": plan.decode_source, "answer_budget": plan.answer_budget},
        "cache_reuse": plan.cache_reuse,
        "cells": [
            {
                "launch": p.launch, "length": p.cell.length, "depth": p.cell.depth, "trial": p.cell.trial,
                "clamped": p.clamped,
                "compute_tokens": p.compute_tokens, "cached_tokens": 0 if p.clamped else p.cell.length - p.compute_tokens,
                "prefill_s": p.prefill_s, "decode_s": p.decode_s, "seconds": p.seconds, "cumulative_s": p.cumulative_s,
            }
            for p in plan.cells
        ],
        "launches": [
            {"name": launch.name, "lengths": list(launch.lengths), "seconds": launch.seconds, "served": launch.served,
             "memory": memory_json(launch.memory), "memory_note": launch.memory_note or None}
            for launch in plan.launches
        ],
        "totals": {
            "cells": len(plan.cells),
            "clamped_cells": len(plan.clamped),
            "compute_tokens": plan.compute_tokens,
            "naive_tokens": plan.naive_tokens,
            "prefill_s": plan.prefill_s,
            "naive_prefill_s": plan.naive_prefill_s,
            "decode_s": plan.decode_s,
            "seconds": plan.seconds,
        },
    }

