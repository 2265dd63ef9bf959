"""`niah plan`: the cost curves' fit and how far it is trusted (identified or not, interval, extrapolation),
its sources (--rates, --from, a probe of each launch group's own launch), decode by context, the costed
schedule, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import readme_seed_plan

from niah.cells import plan_cells
from niah.cli import main
from niah.errors import NiahError
from niah.publish.results import CellResult, ResultsFile
from niah.run.fit import (
    DecodePoint,
    Fit,
    PrefillPoint,
    constant_decode,
    decode_row,
    fit_decode,
    fit_prefill,
    prefill_row,
)
from niah.run.plan import Costs, make_plan, parse_rates, points_from_results, sending_order
from niah.run.probe import climb_ladder, ladder, next_rung_fits, up_to_lengths
from niah.run.progress import expected_prefill
from niah.run.runner import RunConfig, launch_groups

A, B = 4e-4, 2e-9


def exact(length: int, cached: int = 0) -> PrefillPoint:
    return PrefillPoint(length=length, cached=cached, seconds=A * (length - cached) + B * (length**2 - cached**2))


def test_fit_recovers_a_and_b_from_full_prefills_and_spans() -> None:
    curve = fit_prefill([exact(12_288), exact(262_144), exact(1_048_576)], "synthetic")
    assert curve.identified and curve.terms == (pytest.approx(A, rel=1e-6), pytest.approx(B, rel=1e-6))
    spans = fit_prefill([exact(4096, 0), exact(4096, 2048), exact(8192, 4096), exact(8192, 6144)], "spans")
    assert spans.terms == (pytest.approx(A, rel=1e-6), pytest.approx(B, rel=1e-6))
    assert spans.value(prefill_row(1000, 3000)) == pytest.approx(spans.value(prefill_row(0, 3000)) - spans.value(prefill_row(0, 1000)))
    # exact timings leave no noise: the interval closes on the fit
    low, high = curve.interval(prefill_row(0, 2_000_000))
    assert low == pytest.approx(high, rel=1e-6) == pytest.approx(A * 2e6 + B * 4e12, rel=1e-6)


def test_fit_keeps_both_terms_non_negative() -> None:
    # Rates that rise with length would need a negative attention term: it is held at zero.
    curve = fit_prefill([PrefillPoint(1000, 10.0), PrefillPoint(100_000, 500.0)], "faster when longer")
    assert curve.identified and curve.terms[0] > 0 and curve.terms[1] == 0
    with pytest.raises(NiahError, match="no usable prefill points"):
        fit_prefill([PrefillPoint(1000, 0.0)], "nothing")


@pytest.mark.parametrize(
    ("points", "why"),
    [
        ([exact(12_288)], "one probe length (12,288)"),
        ([exact(12_288), exact(12_288)], "one probe length (12,288)"),
        ([exact(16_384), exact(20_480)], "only 1.25x apart"),
    ],
)
def test_a_fit_that_cannot_identify_the_quadratic_term_says_so_and_gives_the_whole_range(
    points: list[PrefillPoint], why: str
) -> None:
    fit = fit_prefill(points, "test")
    assert not fit.identified and why in fit.why and "NOT identified" in fit.note()
    reach = max(p.length for p in points)
    n = 1_010_000
    observed = points[-1].seconds
    low, high = fit.interval(prefill_row(0, n))
    # the range runs from the straight line through the points to the pure parabola through them,
    # and the estimate is neither end
    assert low == pytest.approx(observed * n / reach, rel=0.05) and high == pytest.approx(observed * (n / reach) ** 2, rel=0.1)
    assert low < fit.value(prefill_row(0, n)) < high
    truth = A * n + B * n * n
    assert low < truth < high


def test_single_rate_warns_and_widens_instead_of_drawing_a_line() -> None:
    """`--rates 12k=2590` alone: the straight line through it says 1M takes 0.16x of the truth (the
    issue's 399 s for 2,515 s); the plan says the term is unidentified and gives the range."""
    result = niah("plan", "--lengths", "1m", "--depths", "50", "--rates", "12k=2590")
    assert result.returncode == 0, result.stderr
    assert "quadratic (attention) term is NOT identified (one probe length (12,288))" in result.stdout
    data = json.loads(niah("plan", "--lengths", "1m", "--depths", "50", "--rates", "12k=2590", "--json").stdout)
    line = 1_048_576 / 2590
    totals, launch = data["totals"], data["launches"][0]
    assert totals["interval"] == "range" and launch["prefill"]["identified"] is False
    assert totals["low_s"] == pytest.approx(line + 32 / 20, rel=0.01)
    assert totals["high_s"] > 10 * totals["seconds"] / 10 > 5 * line
    assert totals["extrapolation"] == pytest.approx(1_048_576 / 12_288)
    # two rates far apart identify it; with nothing left to measure the noise, 5% is assumed and said
    data = json.loads(niah("plan", "--lengths", "1m", "--rates", "12k=2590,262k=1090", "--json").stdout)
    assert data["launches"][0]["prefill"]["identified"] is True and "ASSUMED 5% noise" in data["launches"][0]["prefill"]["note"]
    assert data["totals"]["interval"] == "90% interval"


def test_parse_rates_takes_niah_lengths() -> None:
    points = parse_rates("12k=2590, 262k=1090,1m=390")
    assert [p.length for p in points] == [12_288, 262_144, 1_048_576]
    assert points[0].seconds == pytest.approx(12_288 / 2590)


@pytest.mark.parametrize("text", ["12k", "12k=", "=100", "12k=fast", "12k=0", "12k=-3", "12k=nan", ",", "zz=5"])
def test_parse_rates_rejects_bad_items(text: str) -> None:
    with pytest.raises(NiahError):
        parse_rates(text)


def niah(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "niah", *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--lengths", "4k", "--rates", "4k=lots"], 2, "bad --rates item"),
        (["--lengths", "4k"], 2, "no cost curve"),
        (["--lengths", "4k", "--rates", "4k=100", "--probe"], 2, "one cost curve source"),
        (["--lengths", "4k", "--rates", "4k=100", "--probe-up-to", "2k"], 2, "go with --probe"),
        (["--lengths", "4k", "--probe", "--probe-up-to", "2k", "--probe-lengths", "1k"], 2, "not both"),
        (["--lengths", "4k", "--probe", "--probe-budget", "0"], 2, "--probe-budget must be"),
        (["--lengths", "4k", "--from", "/nonexistent/run"], 2, "no results.jsonl"),
        (["--lengths", "4k", "--probe"], 2, "--probe needs a server"),
        (["--lengths", "4k", "--probe", "--url", "http://127.0.0.1:9"], 3, "unreachable"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], code: int, message: str) -> None:
    result = niah("plan", *argv)
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_with_rates_imports_no_heavy_library() -> None:
    probe = (
        "import sys\nfrom niah.cli import main\n"
        "code = main(['plan', '--lengths', '4k', '--rates', '4k=100', '--json'])\n"
        "print('LOADED', [m for m in ('pandas', 'matplotlib', 'transformers', 'jinja2') if m in sys.modules], code,"
        " file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "LOADED [] 0", result.stderr


def exact_costs(decode: Fit | None = None) -> Costs:
    return Costs(fit_prefill([exact(4096), exact(8192), exact(16384)], "test"), decode or constant_decode(5.0, "given"))


def test_schedule_costs_each_cell_from_its_reused_prefix() -> None:
    grid = ((8192, (0.0, 50.0, 100.0)), (4096, (0.0, 50.0, 100.0)))
    cells = plan_cells(grid, trials=1)
    launch_of = {4096: "small", 8192: "big"}
    costs = exact_costs()
    plan = make_plan(cells, {"small": costs, "big": costs}, launch_of=launch_of, answer_budget=10)
    order = [p.cell for p in plan.cells]
    assert order == sending_order(cells, launch_of)
    config = RunConfig(grid=grid, out_dir=Path("unused"), profiles=tuple(launch_of.items()))
    assert [p.launch for p in plan.cells] == [name for name, lengths in launch_groups(config) for c in order if c.length in lengths]
    assert [p.compute_tokens for p in plan.cells] == expected_prefill(order, launch_of)
    for p in plan.cells:
        assert p.prefill_s == pytest.approx(A * p.compute_tokens + B * (p.cell.length**2 - (p.cell.length - p.compute_tokens) ** 2))
        assert p.decode_s == pytest.approx(2.0)
        assert p.extrapolation == pytest.approx(p.cell.length / 16384)
    assert plan.cells[-1].cumulative_s == pytest.approx(plan.seconds)
    assert plan.compute_tokens < plan.naive_tokens
    naive = make_plan(cells, costs, launch_of=launch_of, cache_reuse=False)
    assert naive.compute_tokens == naive.naive_tokens


def test_every_estimate_past_the_longest_probe_carries_its_factor_and_an_interval() -> None:
    """Noisy timings up to 64K (two rounds, as a probe takes them) costing 64K, 262K and 1M cells:
    each cell says how far past 64K it reaches, its interval holds its estimate and widens with the
    distance, and each launch and the total have one too."""
    noise = (1.03, 0.97, 1.02, 0.98, 0.96, 1.04)
    points = [PrefillPoint(n, (A * n + B * n * n) * k) for n, k in zip((16384, 32768, 65536) * 2, noise)]
    probed = Costs(fit_prefill(points, "noisy probe"), constant_decode(20.0, "given"))
    launch_of = {65536: "short", 262144: "long", 1048576: "long"}
    cells = plan_cells(tuple((n, (50.0,)) for n in launch_of), trials=1)
    plan = make_plan(cells, {"short": probed, "long": probed}, launch_of=launch_of, cache_reuse=False)
    widths = []
    for p in plan.cells:
        assert p.extrapolation == pytest.approx(p.cell.length / 65536)
        assert p.estimate is not None and p.estimate.low < p.seconds < p.estimate.high and not p.estimate.ranged
        widths.append((p.estimate.high - p.estimate.low) / p.seconds)
    assert widths == sorted(widths) and widths[-1] > 3 * widths[0]
    assert [launch.extrapolation for launch in plan.launches] == [pytest.approx(1.0), pytest.approx(16.0)]
    assert plan.extrapolation == pytest.approx(16.0)
    for whole in (plan.total, *(launch.estimate for launch in plan.launches)):
        assert whole.low < whole.seconds < whole.high
    # the same points without noise: nothing to widen
    clean = Costs(fit_prefill([exact(n) for n in (16384, 32768, 65536) * 2], "clean"), constant_decode(20.0, "given"))
    assert make_plan(cells, clean, launch_of=launch_of).total.high == pytest.approx(
        make_plan(cells, clean, launch_of=launch_of).total.low, rel=1e-6)
    text = niah("plan", "--lengths", "64k,1m", "--depths", "50", "--rates", "16k=1400,32k=1200,64k=900")
    assert "past probe" in text.stdout and "16.0x" in text.stdout and "90% interval" in text.stdout
    assert "extrapolated: up to 16.0x past the longest observed prefill" in text.stdout


def test_decode_is_costed_by_context() -> None:
    """Decode time per token grows with the KV each token reads: fitted from decodes at a few contexts,
    a 4,096-token thinking budget at 1M costs what d(n) = c + e·n says there, not what it costs at 64K."""
    c, e = 0.02, 4e-8
    points = [DecodePoint(n, 16, 16 * c + e * (16 * n + 16 * 15 / 2)) for n in (16384, 32768, 65536)]
    decode = fit_decode(points, "probe")
    assert decode is not None and decode.identified and decode.terms == (pytest.approx(c), pytest.approx(e))
    assert decode.reach == 65536
    costs = exact_costs(decode)
    cells = plan_cells(((65536, (50.0,)), (1_048_576, (50.0,))), trials=1)
    plan = make_plan(cells, costs, answer_budget=4096, cache_reuse=False)
    near, far = plan.cells
    for p in plan.cells:
        n = p.cell.length
        assert p.decode_s == pytest.approx(4096 * c + e * (4096 * n + 4096 * 4095 / 2))
    assert far.decode_s > 2 * near.decode_s
    assert plan.decode.seconds == pytest.approx(near.decode_s + far.decode_s)
    assert decode_row(1000, 1) == (1, 1000)


def test_json_shape_for_the_readme_seed_grid() -> None:
    args = readme_seed_plan()
    assert "--rates" in args and "yarn-1m" in " ".join(args)
    result = niah(*args, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"answer_budget", "cache_reuse", "cells", "launches", "totals"}
    prefill = data["launches"][0]["prefill"]
    assert prefill["terms"][0] > 0 and prefill["terms"][1] > 0 and prefill["identified"]
    assert len(prefill["points"]) == 3
    assert data["launches"][0]["decode"]["source"].startswith("ASSUMED")
    assert len(data["cells"]) == 25
    assert set(data["cells"][0]) == {
        "launch", "length", "depth", "trial", "clamped", "compute_tokens", "cached_tokens",
        "prefill_s", "decode_s", "seconds", "cumulative_s", "low_s", "high_s", "extrapolation",
    }
    assert not any(c["clamped"] for c in data["cells"]) and data["totals"]["clamped_cells"] == 0
    cumulative = [c["cumulative_s"] for c in data["cells"]]
    assert cumulative == sorted(cumulative) and cumulative[-1] == pytest.approx(data["totals"]["seconds"])
    assert [launch["name"] for launch in data["launches"]] == [
        "native-131k", "native-262k", "yarn-393k", "yarn-512k", "yarn-1m"
    ]
    assert all(launch["memory"]["kv_bytes"] > 0 for launch in data["launches"])
    assert all(launch["memory"]["prompt_cache_bytes"] == 8192 * 2**20 for launch in data["launches"])
    assert all(launch["served"] >= max(launch["lengths"]) + 32 for launch in data["launches"])
    totals = data["totals"]
    assert totals["cells"] == 25 and totals["naive_tokens"] == 5 * (131072 + 262112 + 393216 + 524288 + 1010000)
    assert totals["compute_tokens"] < totals["naive_tokens"]


def test_cells_a_launch_cannot_hold_are_marked_clamped_and_exit_3() -> None:
    # A native launch cannot hold 262,144 + the answer; with thinking on, not even 262,112 + 4,096.
    for lengths, thinking in (("131072,262144", "off"), ("131072,262112", "on")):
        result = niah(
            "plan", "--lengths", lengths, "--depths", "0,50", "--arch", "qwen35", "--thinking", thinking,
            "--profile-for-length", lengths.replace(",", "=native-131k,", 1).split(",")[0] + ","
            + lengths.split(",")[1] + "=native-262k", "--rates", "12k=2590,262k=1090",
        )
        assert result.returncode == 3, result.stderr
        lines = result.stdout.splitlines()
        clamped_rows = [line for line in lines if "CLAMPED" in line and line.startswith("native-262k")]
        assert len(clamped_rows) == 2, result.stdout
        assert any(line.startswith("CLAMPED: 2 cell(s)") for line in lines)
        assert not any("CLAMPED" in line for line in lines if line.startswith("native-131k "))


def write_results(path: Path, cells: list[tuple[int, int, int, float, int, float]]) -> None:
    """A results file with cells (length, prompt_n, cache_n, prompt_ms, predicted_n, predicted_ms)."""
    results = ResultsFile(path, {"niah": "test"})
    for i, (length, prompt_n, cache_n, prompt_ms, predicted_n, predicted_ms) in enumerate(cells):
        results.append(CellResult(
            length=length, depth=float(i), trial=0, outcome="PASS", prompt_n=prompt_n, cache_n=cache_n,
            prompt_ms=prompt_ms, predicted_n=predicted_n, predicted_ms=predicted_ms,
        ))
    results.append(CellResult(length=99, depth=0.0, trial=0, outcome="CLAMPED"))  # never sent: no point


def test_from_an_earlier_run_fits_its_cells(tmp_path: Path) -> None:
    rows = []
    for length, cached in ((4096, 0), (4096, 2048), (8192, 0), (8192, 6144), (16384, 4096)):
        seconds = exact(length, cached).seconds
        rows.append((length, length - cached, cached, seconds * 1000, 20, 1000.0))
    write_results(tmp_path / "results.jsonl", rows)
    points, decodes = points_from_results(tmp_path)
    assert len(points) == 5 and [d.context for d in decodes] == [4096, 4096, 8192, 8192, 16384]
    assert all(d.tokens == 20 and d.seconds == 1.0 for d in decodes)
    curve = fit_prefill(points, "results")
    assert curve.terms == (pytest.approx(A, rel=1e-6), pytest.approx(B, rel=1e-6))
    result = niah("plan", "--lengths", "4k,8k", "--depths", "0,100", "--from", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    decode = data["launches"][0]["decode"]
    assert decode["identified"] and decode["reach"] == 16384 and len(decode["points"]) == 5
    assert 1 / decode["terms"][0] == pytest.approx(20.0, rel=0.01)  # the same rate at every context
    assert len(data["cells"]) == 4


def test_from_a_run_without_prefills_is_bad_input(tmp_path: Path) -> None:
    ResultsFile(tmp_path / "results.jsonl", {"niah": "test"}).append(CellResult(length=9, depth=0.0, trial=0, outcome="CLAMPED"))
    with pytest.raises(NiahError, match="no cell there recorded a prefill"):
        points_from_results(tmp_path / "results.jsonl")


def test_text_output_names_the_total_and_the_assumption(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--lengths", "4k", "--depths", "50,100", "--rates", "4k=100,8k=80"]) == 0
    out = capsys.readouterr().out
    assert "total time:" in out and "ASSUMED" in out and "prefill tokens: 6,144 computed of 8,192 naive" in out


def test_probe_lengths_reach_as_far_as_allowed() -> None:
    assert up_to_lengths(65536, 1_010_000) == [16384, 32768, 65536]
    assert up_to_lengths(1 << 20, 131072) == [32768, 65536, 131072]  # never past the launch's longest length
    assert up_to_lengths(512, 100_000) == [256, 512]
    assert ladder(1_010_000) == [15781, 31562, 63124, 126248, 252496, 504992, 1_010_000]
    assert ladder(8160)[0] == 256 and ladder(8160)[-1] == 8160
    # the budget ladder climbs while the first round so far plus the next rung at its worst (n²)
    # fits, twice over for the second round
    assert next_rung_fits(10.0, (16384, 8.0), 32768, budget_s=90.0, rounds=2)  # 2·(10 + 32) = 84
    assert not next_rung_fits(10.0, (16384, 8.0), 32768, budget_s=80.0, rounds=2)


def test_the_budget_ladder_stops_before_the_rung_that_could_overrun_and_says_so() -> None:
    seconds = {256: 1.0, 512: 3.0, 1024: 10.0, 2048: 35.0}
    probed: list[int] = []

    def one(n: int) -> float:
        probed.append(n)
        return seconds[n]

    # 2·(1 + 4) = 10 and 2·(4 + 12) = 32 fit 40 s; 2·(14 + 40) = 108 does not
    chosen, stopped = climb_ladder(one, [256, 512, 1024, 2048], budget_s=40.0, rounds=2)
    assert chosen == probed == [256, 512, 1024]
    assert stopped == "probe budget 40 s per launch: stopped before 2,048 tokens (up to 40 s a request)"
    chosen, stopped = climb_ladder(one, [256, 512], budget_s=40.0, rounds=2)
    assert chosen == [256, 512] and stopped.endswith("reached 512 tokens, all the launch holds")


@pytest.mark.server
def test_probe_measures_a_real_server(llama_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    argv = ["plan", "--url", llama_server.url, "--lengths", "1024,2048", "--depths", "0,50,100",
            "--probe", "--probe-lengths", "128,256,512", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    (launch,) = data["launches"]
    points = launch["prefill"]["points"]
    assert len(points) == 6 and all(p["seconds"] > 0 and p["cached"] == 0 for p in points)
    lengths = [p["length"] for p in points]
    assert lengths[:3] == sorted(lengths[:3]) and lengths[3:] == lengths[2::-1]  # ascending, then descending
    assert sum(launch["prefill"]["terms"]) > 0 and launch["probe"]["served"] == launch["served"]
    # each probe decodes its 16 tokens whatever the model says (end of text ignored), at its context
    decodes = launch["decode"]["points"]
    assert [d["tokens"] for d in decodes] == [16] * 6 and [d["context"] for d in decodes] == lengths
    planned = {(c["length"], c["depth"]) for c in data["cells"]}
    assert planned == {(n, d) for n in (1024, 2048) for d in (0.0, 50.0, 100.0)}
    assert all(c["seconds"] > 0 and c["low_s"] <= c["high_s"] for c in data["cells"])
    assert all(c["extrapolation"] > 1 for c in data["cells"])
    assert "probe:" in captured.err


@pytest.mark.server
def test_probe_without_lengths_climbs_within_its_stated_budget(llama_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["plan", "--url", llama_server.url, "--lengths", "1024", "--depths", "50", "--probe",
                 "--probe-budget", "1"]) == 0
    out = capsys.readouterr().out
    assert "probe budget 1 s per launch:" in out
    data_line = [line for line in out.splitlines() if line.startswith("  probed on ")]
    assert len(data_line) == 1 and data_line[0].startswith(f"  probed on {llama_server.url} (")


@pytest.mark.server
def test_probe_runs_each_launch_groups_own_launch(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two groups, two launches: the native one (f16 cache, no rope flags, one slot) and a YaRN one
    with a q8_0 K cache and two slots. Each group's probe ran on its own launch, as the flags and the
    per-slot context its /props served say, and reached --probe-up-to within its own longest length."""
    stretched_profile = tmp_path / "tiny-yarn-12k-q8.toml"
    stretched_profile.write_text(
        (Path(__file__).resolve().parents[1] / "launch_profiles" / "tiny-yarn-12k.toml").read_text()
        .replace("parallel = 1", 'parallel = 2\ncache_type_k = "q8_0"\nflash_attn = "on"')
    )
    argv = ["plan", "--model", str(tiny_model), "--lengths", "512,1024", "--depths", "50",
            "--profile-for-length", f"512=tiny-native-8k,1024={stretched_profile}",
            "--probe", "--probe-up-to", "512", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    native, stretched = data["launches"]
    assert native["name"] == "tiny-native-8k" and stretched["name"] == str(stretched_profile)
    assert "--rope-scaling" not in native["probe"]["args"] and "q8_0" not in native["probe"]["args"]
    args = stretched["probe"]["args"]
    assert args[args.index("--rope-scaling") + 1] == "yarn" and args[args.index("--cache-type-k") + 1] == "q8_0"
    assert args[args.index("--parallel") + 1] == "2"
    assert (native["probe"]["served"], stretched["probe"]["served"]) == (8192, 12288)
    assert native["probe"]["lengths"] == stretched["probe"]["lengths"] == [256, 512]
    assert len(stretched["prefill"]["points"]) == len(native["prefill"]["points"]) == 4
    assert native["extrapolation"] <= 1.0 and 1.8 < stretched["extrapolation"] < 2.0
