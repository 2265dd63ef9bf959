"""A costed plan for people (a table, each launch's curves and memory, the totals) and as JSON."""

from __future__ import annotations

from typing import Any

from niah.run.fit import DecodePoint, Fit, PrefillPoint
from niah.run.plan import Estimate, LaunchCost, Plan, hms


def factor_text(factor: float | None) -> str:
    """`15.4x past the probe`, `within`, or `-` when nothing was probed."""
    if factor is None:
        return "-"
    return f"{factor:,.1f}x" if factor > 1.0 else "within"


def curve_lines(fit: Fit) -> list[str]:
    """A fitted curve, how far it can be trusted, and how it meets its points."""
    first, second = fit.terms if fit.identified else (fit.ends[0][0], fit.ends[1][1])
    if fit.kind == "prefill":
        formula = f"T(n) = a·n + b·n², a = {first:.4g} s/token, b = {second:.4g} s/token²"
    elif not fit.points:
        formula = f"{1 / first:,.1f} tokens/s at any context"
    else:
        formula = f"per token d(n) = c + e·n, c = {first:.4g} s, e = {second:.4g} s per context token"
    if not fit.identified:
        formula += " (the two ends of the range: all one term, or all the other)"
    lines = [f"{fit.kind} from {fit.source}: {formula}", f"  {fit.note()}"]
    if fit.points:
        lines.append(f"  longest observed: {fit.reach:,} tokens; estimates past it are extrapolated")
    shown = sorted(fit.points, key=_order)
    for p in shown[:12]:
        fitted = fit.value(p.row)
        lines.append(f"  {_point_text(p)}: {p.seconds:,.2f} s observed, {fitted:,.2f} s fitted ({round(fitted / p.seconds - 1, 2) + 0.0:+.0%})")
    if len(shown) > 12:
        lines.append(f"  ... and {len(shown) - 12} more points")
    return lines


def _order(p: PrefillPoint | DecodePoint) -> tuple[int, int]:
    return (p.length, p.cached) if isinstance(p, PrefillPoint) else (p.context, p.tokens)


def _point_text(p: PrefillPoint | DecodePoint) -> str:
    if isinstance(p, DecodePoint):
        return f"{p.tokens} tokens decoded at {p.context:,}"
    return f"{p.cached:,}→{p.length:,} tokens" if p.cached else f"{p.length:,} tokens"


def launch_lines(launch: LaunchCost) -> list[str]:
    name = launch.name or "server"
    lengths = ", ".join(f"{n:,}" for n in launch.lengths)
    serves = f", serves {launch.served:,} per slot" if launch.served else ""
    lines = [(f"launch {name} (lengths {lengths}{serves}): {hms(launch.seconds)}, {launch.estimate.label} "
             f"{launch.estimate.text()}{_past(launch.extrapolation, launch.costs.prefill)}")]
    probe = launch.costs.probe
    if probe is not None:
        lines.append(f"  probed on {probe.where}" + (f": {' '.join(probe.args)}" if probe.args else "")
                     + f" ({probe.seconds:,.0f} s; {probe.stopped})")
    lines += [f"  {line}" for line in curve_lines(launch.costs.prefill) + curve_lines(launch.costs.decode)]
    if launch.memory is not None:
        lines += [f"  {line}" for line in launch.memory.lines()]
    elif launch.name is not None:
        lines.append(f"  memory: {launch.memory_note}")
    return lines


def _past(factor: float | None, fit: Fit) -> str:
    if not factor or factor <= 1.0:
        return ""
    return f", up to {factor:,.1f}x past the longest observed prefill ({fit.reach:,})"


def plan_text(plan: Plan) -> str:
    """The plan as a table, each launch, and the totals."""
    lines = []
    if not plan.cache_reuse:
        lines.append("prompt cache reuse off: every cell computes its whole length")
    header = ("launch", "length", "depth", "trial", "compute", "seconds", "interval", "past probe", "cumulative")
    rows = [header] + [
        (p.launch or "-", f"{p.cell.length:,}", f"{p.cell.depth:g}%", str(p.cell.trial),
         "CLAMPED" if p.clamped else f"{p.compute_tokens:,}", f"{p.seconds:,.1f}",
         _seconds_range(p.estimate), "-" if p.clamped else factor_text(p.extrapolation), hms(p.cumulative_s))
        for p in plan.cells
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    lines.append("(interval: 90% from the fits' bootstrap over the probe's timings, blind to the machine's speed changing "
                 "after the probe: docs/plan.md; `~` marks a range where a fit could not tell its terms apart)")
    for launch in plan.launches:
        lines += ["", *launch_lines(launch)]
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
        f"prefill time: {hms(plan.prefill.seconds)} ({plan.prefill.label} {plan.prefill.text()})",
        (f"decode time: {hms(plan.decode.seconds)} at most ({plan.answer_budget} tokens per cell at its context; "
        f"{plan.decode.label} {plan.decode.text()})"),
        f"total time: {hms(plan.seconds)} ({plan.seconds / 3600:.2f} h), {plan.total.label} {plan.total.text()}",
    ]
    if plan.extrapolation and plan.extrapolation > 1.0:
        worst = max(plan.launches, key=lambda launch: launch.extrapolation or 0.0)
        lines.append(f"extrapolated: up to {plan.extrapolation:,.1f}x past the longest observed prefill "
                     f"({worst.name or 'server'}); probe further with --probe-up-to to narrow it")
    return "\n".join(lines)


def _seconds_range(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    return f"{'~' if estimate.ranged else ''}{estimate.low:,.1f}–{estimate.high:,.1f}"


def estimate_json(estimate: Estimate) -> dict[str, Any]:
    return {"seconds": estimate.seconds, "low_s": estimate.low, "high_s": estimate.high,
            "interval": "range" if estimate.ranged else f"{estimate.label}"}


def fit_json(fit: Fit) -> dict[str, Any]:
    """A curve: its terms, how far it can be trusted and its points with their fitted values."""
    points: list[dict[str, Any]] = []
    for p in fit.points:
        entry = vars(p).copy()
        entry["fitted_s"] = fit.value(p.row)
        points.append(entry)
    return {
        "source": fit.source, "terms": list(fit.terms), "identified": fit.identified, "note": fit.note(),
        "noise": fit.noise, "reach": fit.reach, "ends": [list(end) for end in fit.ends] if not fit.identified else None,
        "points": points,
        "model": "T(n) = a*n + b*n^2" if fit.kind == "prefill" else "seconds per token d(n) = c + e*n",
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    """The same plan as one JSON object."""
    return {
        "answer_budget": plan.answer_budget,
        "cache_reuse": plan.cache_reuse,
        "cells": [
            {
                "launch": p.launch, "length": p.cell.length, "depth": p.cell.depth, "trial": p.cell.trial,
                "clamped": p.clamped,
                "compute_tokens": p.compute_tokens, "cached_tokens": 0 if p.clamped else p.cell.length - p.compute_tokens,
                "prefill_s": p.prefill_s, "decode_s": p.decode_s, "seconds": p.seconds, "cumulative_s": p.cumulative_s,
                "low_s": p.estimate.low if p.estimate else None, "high_s": p.estimate.high if p.estimate else None,
                "extrapolation": p.extrapolation,
            }
            for p in plan.cells
        ],
        "launches": [launch_json(launch) for launch in plan.launches],
        "totals": {
            "cells": len(plan.cells),
            "clamped_cells": len(plan.clamped),
            "compute_tokens": plan.compute_tokens,
            "naive_tokens": plan.naive_tokens,
            "prefill": estimate_json(plan.prefill),
            "decode": estimate_json(plan.decode),
            "seconds": plan.seconds,
            "low_s": plan.total.low,
            "high_s": plan.total.high,
            "interval": estimate_json(plan.total)["interval"],
            "extrapolation": plan.extrapolation,
        },
    }


def launch_json(launch: LaunchCost) -> dict[str, Any]:
    probe = launch.costs.probe
    return {
        "name": launch.name, "lengths": list(launch.lengths), "served": launch.served,
        **estimate_json(launch.estimate), "extrapolation": launch.extrapolation,
        "prefill": fit_json(launch.costs.prefill), "decode": fit_json(launch.costs.decode),
        "probe": None if probe is None else {
            "where": probe.where, "args": list(probe.args), "served": probe.served, "lengths": list(probe.lengths),
            "seconds": probe.seconds, "stopped": probe.stopped,
        },
        "memory": None if launch.memory is None else launch.memory.as_json(), "memory_note": launch.memory_note or None,
    }

