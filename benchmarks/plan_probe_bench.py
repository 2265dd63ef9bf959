"""How close `niah plan --probe` comes to the measured wall of the longest cells this CPU can run.

One launch per bed: the 1M rehearsal model (qwen35 test bed, native 262,144) on `yarn-1m` with
131,072-token cells, or SmolLM2-135M on `tiny-yarn-32k` with 31,508-token cells. On it: the probe
`niah plan --probe --probe-up-to N` runs (N/4, N/2, N, two rounds, prompt cache off, 16 decoded
tokens each) for N = 1/8 and 1/2 of the cell length, then `niah run` of the cells, then the 1/8 probe
again (how far the machine's load moved meanwhile). Each probe's plan for the cells (its estimate,
90% interval and extrapolation factor) is set against the cells' measured wall. Nothing is asserted.

    python benchmarks/plan_probe_bench.py --bed rehearsal|smollm2 [--depths 50] [--save FILE]
    python benchmarks/plan_probe_bench.py --replay FILE      (the comparison again from saved timings)
    python benchmarks/plan_probe_bench.py --coverage         (how often the 90% interval holds the truth)

--coverage needs no server: a curve through the issue's rates (12k=2590, 262k=1090, 1m=390), and one
with a quarter of its attention term (a hybrid with 1 attention layer in 4), probed at 16K/32K/64K
twice with log-normal timing noise, each fit's 90% interval for 1,010,000 tokens against the truth.

Measured 2026-12-06 on 2 shared cores (load 11-15 from other work): docs/plan.md has the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from niah.cells import ANSWER_BUDGET, plan_cells
from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.profiles import launch_spec, load_profile
from niah.launch.server import find_tiny_model
from niah.launch.session import ServerSession
from niah.prompts.corpus import get_corpus
from niah.run.fit import DecodePoint, PrefillPoint, fit_decode, fit_prefill
from niah.run.plan import Costs, hms, make_plan
from niah.run.probe import probe_ceiling, probe_session, up_to_lengths
from niah.testbed.model import build_testbed

BEDS = {"rehearsal": ("yarn-1m", 131_072), "smollm2": ("tiny-yarn-32k", 31_508)}


def model_of(bed: str, work: Path) -> Path:
    if bed == "smollm2":
        return find_tiny_model()
    model = work / "rehearsal.gguf"
    if not model.is_file():
        build_testbed("qwen35", model, layers=4, context=262144, heads=1, kv_heads=1, head_dim=64)
    return model


def measure(bed: str, profile_name: str, length: int, depths: str, work: Path) -> dict[str, Any]:
    """Probes, the cells' run and the probe again on one launch; the raw timings."""
    model = model_of(bed, work)
    profile = load_profile(profile_name)
    spec = launch_spec(profile, read_gguf_facts(model), model, work / "logs", name=f"bench-{bed}", start_timeout_s=1800)
    saved: dict[str, Any] = {"bed": bed, "profile": profile_name, "length": length, "depths": depths,
                             "args": list(spec.args), "probes": {}}
    text = get_corpus("builtin").text
    with ServerSession(spec) as session:
        def probe(fraction: int) -> dict[str, Any]:
            ceiling = probe_ceiling(length, session.props()["default_generation_settings"]["n_ctx"])
            result = probe_session(session, text, where=bed, ceiling=ceiling,
                                   lengths=up_to_lengths(length // fraction, ceiling), log=print)
            return {"prefills": [vars(p) for p in result.prefills], "decodes": [vars(d) for d in result.decodes],
                    "seconds": result.seconds, "served": result.served}

        saved["probes"]["1/8"] = probe(8)
        saved["probes"]["1/2"] = probe(2)
        out = work / f"run-{bed}"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "niah", "run", "--url", session.url, "--lengths", str(length),
                               "--depths", depths, "--out", str(out), "--no-progress"],
                              capture_output=True, text=True, check=False)
        saved["run"] = {"rc": done.returncode, "wall_s": time.monotonic() - started}
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        saved["cells"] = [r for r in rows if r.get("record") == "cell"]
        saved["probes"]["1/8 after"] = probe(8)
    return saved


def compare(saved: dict[str, Any]) -> list[dict[str, Any]]:
    """Each probe's plan for the measured cells against their measured wall."""
    length, cells = saved["length"], saved["cells"]
    grid = plan_cells(((length, tuple(float(c["depth"]) for c in cells)),), trials=1)
    measured_wall = sum(c["wall_s"] for c in cells)
    measured_prefill = sum((c.get("prompt_ms") or 0) + (c.get("prime_ms") or 0) for c in cells) / 1000
    measured_decode = sum(c.get("predicted_ms") or 0 for c in cells) / 1000
    rows = []
    for name, probe in saved["probes"].items():
        prefill = fit_prefill([PrefillPoint(**p) for p in probe["prefills"]], f"probe {name}")
        decode = fit_decode([DecodePoint(**d) for d in probe["decodes"]], f"probe {name}")
        assert decode is not None
        plan = make_plan(grid, Costs(prefill, decode), answer_budget=ANSWER_BUDGET)
        rows.append({
            "probe": name, "probed": sorted({p["length"] for p in probe["prefills"]}), "probe_s": probe["seconds"],
            "identified": prefill.identified, "noise": prefill.noise, "extrapolation": plan.extrapolation,
            "predicted_s": plan.seconds, "low_s": plan.total.low, "high_s": plan.total.high,
            "predicted_prefill_s": plan.prefill.seconds, "predicted_decode_s": plan.decode.seconds,
            "measured_wall_s": measured_wall, "measured_prefill_s": measured_prefill,
            "measured_decode_s": measured_decode, "inside": plan.total.low <= measured_wall <= plan.total.high,
        })
    return rows


def coverage(trials: int = 400) -> None:
    """Simulated probes: how often the interval for a 1,010,000-token prefill holds the true time."""
    import numpy as np

    from niah.run.fit import prefill_row
    from niah.run.plan import parse_rates

    a, b = fit_prefill(parse_rates("12k=2590,262k=1090,1m=390"), "rates").terms
    target = 1_010_000
    print(f"{'curve':<8} {'noise':>6} {'covered':>8} {'median low/true':>16} {'median high/true':>17}")
    for name, quadratic in (("dense", b), ("hybrid", b / 4)):
        truth = a * target + quadratic * target**2
        for noise in (0.03, 0.05, 0.10):
            rng = np.random.default_rng(1)
            bounds = []
            for _ in range(trials):
                points = [PrefillPoint(n, (a * n + quadratic * n * n) * float(np.exp(rng.normal(0, noise))))
                          for n in (16384, 32768, 65536) * 2]
                bounds.append(fit_prefill(points, "simulated").interval(prefill_row(0, target)))
            ratios = np.array(bounds) / truth
            covered = np.mean((ratios[:, 0] <= 1) & (ratios[:, 1] >= 1))
            print(f"{name:<8} {noise:>6.0%} {covered:>8.1%} {np.median(ratios[:, 0]):>16.2f} {np.median(ratios[:, 1]):>17.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bed", choices=sorted(BEDS), default="smollm2")
    parser.add_argument("--depths", default="50", help="the cells' depths (default one cell at 50%%)")
    parser.add_argument("--profile", help="the launch profile (default: the bed's, yarn-1m or tiny-yarn-32k)")
    parser.add_argument("--length", type=int, help="the cells' length (default: the bed's, 131,072 or 31,508)")
    parser.add_argument("--work", type=Path, help="folder for the model, the run and the logs (default: temporary)")
    parser.add_argument("--save", type=Path, help="write the raw timings here (for --replay)")
    parser.add_argument("--replay", type=Path, help="compare again from timings saved by --save")
    parser.add_argument("--coverage", action="store_true", help="simulated probes: the interval's coverage")
    args = parser.parse_args()
    if args.coverage:
        coverage()
        return
    if args.replay:
        saved = json.loads(args.replay.read_text())
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="niah-plan-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        profile, length = BEDS[args.bed]
        saved = measure(args.bed, args.profile or profile, args.length or length, args.depths, work)
        if args.save:
            args.save.write_text(json.dumps(saved, indent=1))
    cells = saved["cells"]
    print(f"{saved['bed']}: {saved['profile']}, {len(cells)} cell(s) of {saved['length']:,} tokens "
          f"(depths {', '.join(str(c['depth']) for c in cells)}); outcomes {[c['outcome'] for c in cells]}")
    print(f"{'probe':<10} {'probed':<24} {'past':>6} {'predicted':>10} {'90% interval':>21} {'measured':>10} {'ratio':>6}")
    for row in compare(saved):
        probed = " ".join(f"{n:,}" for n in row["probed"])  # the prompt lengths the probe sent
        print(f"{row['probe']:<10} {probed:<24} {row['extrapolation']:>5.1f}x {hms(row['predicted_s']):>10} "
              f"{hms(row['low_s']) + '–' + hms(row['high_s']):>21} {hms(row['measured_wall_s']):>10} "
              f"{row['predicted_s'] / row['measured_wall_s']:>6.2f}"
              f"{'' if row['inside'] else '  (outside)'}{'' if row['identified'] else '  (range)'}")
        print(f"{'':<10} prefill {row['predicted_prefill_s']:,.0f} s planned, {row['measured_prefill_s']:,.0f} s measured; "
              f"decode {row['predicted_decode_s']:,.1f} s planned, {row['measured_decode_s']:,.1f} s measured; "
              f"probe took {row['probe_s']:,.0f} s, residual noise {row['noise']:.1%}")


if __name__ == "__main__":
    main()
