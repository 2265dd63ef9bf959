"""`niah plan`: the prefill curve fit, its sources (--rates, --from, --probe), the costed schedule, JSON."""

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
from niah.run.plan import (
    PrefillCurve,
    PrefillPoint,
    fit_curve,
    make_plan,
    parse_rates,
    points_from_results,
    probe_lengths,
    sending_order,
)
from niah.run.progress import expected_prefill
from niah.run.runner import RunConfig, launch_groups

A, B = 4e-4, 2e-9


def exact(length: int, cached: int = 0) -> PrefillPoint:
    return PrefillPoint(length=length, cached=cached, seconds=A * (length - cached) + B * (length**2 - cached**2))


def test_fit_recovers_a_and_b_from_full_prefills_and_spans() -> None:
    curve = fit_curve([exact(12_288), exact(262_144), exact(1_048_576)], "synthetic")
    assert curve.a == pytest.approx(A, rel=1e-6)
    assert curve.b == pytest.approx(B, rel=1e-6)
    spans = fit_curve([exact(4096, 0), exact(4096, 2048), exact(8192, 4096), exact(8192, 6144)], "spans")
    assert (spans.a, spans.b) == (pytest.approx(A, rel=1e-6), pytest.approx(B, rel=1e-6))
    assert spans.span(1000, 3000) == pytest.approx(spans.seconds(3000) - spans.seconds(1000))


def test_fit_keeps_both_terms_non_negative_and_one_point_is_linear() -> None:
    # Rates that rise with length would need a negative attention term: it is held at zero.
    curve = fit_curve([PrefillPoint(1000, 10.0), PrefillPoint(100_000, 500.0)], "faster when longer")
    assert curve.a > 0 and curve.b == 0
    one = fit_curve([PrefillPoint(10_000, 5.0)], "one point")
    assert one.b == 0 and one.a == pytest.approx(5.0 / 10_000)
    with pytest.raises(NiahError, match="no usable prefill points"):
        fit_curve([PrefillPoint(1000, 0.0)], "nothing")


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
        (["--lengths", "4k"], 2, "no prefill curve"),
        (["--lengths", "4k", "--rates", "4k=100", "--probe"], 2, "one prefill curve source"),
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


def test_schedule_costs_each_cell_from_its_reused_prefix() -> None:
    grid = ((8192, (0.0, 50.0, 100.0)), (4096, (0.0, 50.0, 100.0)))
    cells = plan_cells(grid, trials=1)
    launch_of = {4096: "small", 8192: "big"}
    curve = PrefillCurve(a=A, b=B, source="test")
    plan = make_plan(cells, curve, launch_of=launch_of, answer_budget=10, decode_rate=5.0)
    order = [p.cell for p in plan.cells]
    assert order == sending_order(cells, launch_of)
    config = RunConfig(grid=grid, out_dir=Path("unused"), profiles=tuple(launch_of.items()))
    assert [p.launch for p in plan.cells] == [name for name, lengths in launch_groups(config) for c in order if c.length in lengths]
    assert [p.compute_tokens for p in plan.cells] == expected_prefill(order, launch_of)
    for p in plan.cells:
        assert p.prefill_s == pytest.approx(curve.span(p.cell.length - p.compute_tokens, p.cell.length))
        assert p.decode_s == pytest.approx(2.0)
    assert plan.cells[-1].cumulative_s == pytest.approx(plan.seconds)
    assert plan.compute_tokens < plan.naive_tokens and plan.prefill_s < plan.naive_prefill_s
    naive = make_plan(cells, curve, launch_of=launch_of, cache_reuse=False)
    assert naive.compute_tokens == naive.naive_tokens and naive.decode_source == "ASSUMED"


def test_json_shape_for_the_readme_seed_grid() -> None:
    args = readme_seed_plan()
    assert "--rates" in args and "yarn-1m" in " ".join(args)
    result = niah(*args, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"curve", "decode", "cache_reuse", "cells", "launches", "totals"}
    assert data["curve"]["a_s_per_token"] > 0 and data["curve"]["b_s_per_token2"] > 0
    assert len(data["curve"]["points"]) == 3
    assert data["decode"]["source"] == "ASSUMED"
    assert len(data["cells"]) == 25
    assert set(data["cells"][0]) == {
        "launch", "length", "depth", "trial", "clamped", "compute_tokens", "cached_tokens",
        "prefill_s", "decode_s", "seconds", "cumulative_s",
    }
    assert not any(c["clamped"] for c in data["cells"]) and data["totals"]["clamped_cells"] == 0
    cumulative = [c["cumulative_s"] for c in data["cells"]]
    assert cumulative == sorted(cumulative) and cumulative[-1] == pytest.approx(data["totals"]["seconds"])
    assert [launch["name"] for launch in data["launches"]] == [
        "native-131k", "native-262k", "yarn-393k", "yarn-512k", "yarn-1m"
    ]
    assert all(launch["memory"]["kv_bytes"] > 0 for launch in data["launches"])
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
    points, decode_rate = points_from_results(tmp_path)
    assert len(points) == 5 and decode_rate == pytest.approx(20.0)
    curve = fit_curve(points, "results")
    assert (curve.a, curve.b) == (pytest.approx(A, rel=1e-6), pytest.approx(B, rel=1e-6))
    result = niah("plan", "--lengths", "4k,8k", "--depths", "0,100", "--from", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["decode"] == {"tokens_per_s": pytest.approx(20.0), "source": "measured", "answer_budget": 32}
    assert len(data["cells"]) == 4


def test_from_a_run_without_prefills_is_bad_input(tmp_path: Path) -> None:
    ResultsFile(tmp_path / "results.jsonl", {"niah": "test"}).append(CellResult(length=9, depth=0.0, trial=0, outcome="CLAMPED"))
    with pytest.raises(NiahError, match="no cell there recorded a prefill"):
        points_from_results(tmp_path / "results.jsonl")


def test_text_output_names_the_total_and_the_assumption(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--lengths", "4k", "--depths", "50,100", "--rates", "4k=100,8k=80"]) == 0
    out = capsys.readouterr().out
    assert "total time:" in out and "ASSUMED" in out and "prefill tokens: 6,144 computed of 8,192 naive" in out


def test_probe_lengths_follow_the_smallest_length_and_the_served_context() -> None:
    assert probe_lengths([131072, 1010000]) == [16384, 32768, 65536]
    assert probe_lengths([2048]) == [256, 512, 1024]
    assert probe_lengths([2048], served=500) == [256]


@pytest.mark.server
def test_probe_measures_a_real_server(llama_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    argv = ["plan", "--url", llama_server.url, "--lengths", "1024,2048", "--depths", "0,50,100",
            "--probe", "--probe-lengths", "128,256,512", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    points = data["curve"]["points"]
    assert len(points) == 6 and all(p["seconds"] > 0 and p["cached"] == 0 for p in points)
    lengths = [p["length"] for p in points]
    assert lengths[:3] == sorted(lengths[:3]) and lengths[3:] == lengths[2::-1]  # ascending, then descending
    assert data["curve"]["a_s_per_token"] + data["curve"]["b_s_per_token2"] > 0
    assert data["decode"]["source"] == "measured" and data["decode"]["tokens_per_s"] > 0
    planned = {(c["length"], c["depth"]) for c in data["cells"]}
    assert planned == {(n, d) for n in (1024, 2048) for d in (0.0, 50.0, 100.0)}
    assert all(c["seconds"] > 0 for c in data["cells"])
    assert "probe:" in captured.err
