"""Reports rendered from the results JSONL alone: the seed's grid, CSV, JSON, PNG, escaped HTML, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from niah.cli import main
from niah.publish.grid import cell_label, grid_markdown
from niah.publish.report import render_report
from niah.publish.results import CellResult, ResultsFile, load_cells

FINGERPRINT = {"model": {"path": "m.gguf", "size": 1}, "needle_seed": 0}
FIXTURES = Path(__file__).parent / "fixtures"


def write_run(path: Path) -> Path:
    """A small run: 2 trials per cell, one length with untested depths, mixed and clamped cells."""
    results = ResultsFile(path, FINGERPRINT)
    plan = {
        (4096, 0.0): ["PASS", "PASS"],
        (4096, 25.0): ["PASS", "FAIL"],
        (4096, 50.0): ["FAIL", "FAIL"],
        (4096, 75.0): ["PASS", "TIMEOUT"],
        (4096, 100.0): ["PASS", "PASS"],
        (12288, 0.0): ["PASS", "PASS"],
        (12288, 50.0): ["CONTEXT_ERROR", "CONTEXT_ERROR"],
        (12288, 100.0): ["CLAMPED", "CLAMPED"],
    }
    factor = {4096: "native", 12288: "1.5x YaRN"}
    for (length, depth), outcomes in plan.items():
        for trial, outcome in enumerate(outcomes):
            answer = "<script>alert('x')</script> 7391" if outcome == "PASS" else "no idea"
            results.append(
                CellResult(
                    length=length,
                    depth=depth,
                    trial=trial,
                    outcome=outcome,
                    needle_value="7391",
                    answer=answer,
                    prompt_tokens_planned=length,
                    prompt_tokens_served=None if outcome == "CLAMPED" else length,
                    prompt_n=None if outcome == "CLAMPED" else 1000,
                    cache_n=None if outcome == "CLAMPED" else length - 1000,
                    prompt_ms=None if outcome == "CLAMPED" else 2000.0,
                    factor=factor[length],
                    profile=f"p{length}",
                )
            )
    return path


def test_grid_is_the_seeds_format_exactly(tmp_path: Path) -> None:
    df = load_cells(write_run(tmp_path / "results.jsonl"))
    assert grid_markdown(df) == (
        "length 0% 25% 50% 75% 100% factor\n"
        "4096 PASS 1/2 FAIL 1/1,TIMEOUT PASS native\n"
        "12288 PASS - CONTEXT_ERROR - CLAMPED 1.5x YaRN\n"
    )


@pytest.mark.parametrize(
    ("outcomes", "label"),
    [
        ([], "-"),
        (["PASS"], "PASS"),
        (["FAIL", "FAIL", "FAIL"], "FAIL"),
        (["PASS", "FAIL", "PASS"], "2/3"),
        (["TIMEOUT", "TIMEOUT"], "TIMEOUT"),
        (["CRASH", "PASS", "CLAMPED"], "1/1,CLAMPED,CRASH"),  # never-answered trials are not in n
        (["PASS", "FAIL", "TRUNCATED"], "1/3,TRUNCATED"),  # a truncated answer is in n, and named
        (["TRUNCATED", "PASS", "TIMEOUT"], "1/2,TRUNCATED,TIMEOUT"),
    ],
)
def test_cell_label_rule(outcomes: list[str], label: str) -> None:
    assert cell_label(outcomes) == label


def test_render_writes_every_file_from_the_jsonl(tmp_path: Path) -> None:
    results = write_run(tmp_path / "results.jsonl")
    paths = render_report(results, tmp_path / "out")

    assert paths.grid_md.read_text() == paths.grid_markdown == grid_markdown(load_cells(results))
    cells = pd.read_csv(paths.cells_csv)
    assert len(cells) == 16 and {"length", "depth", "trial", "outcome", "answer", "factor"} <= set(cells.columns)

    summary = json.loads(paths.summary_json.read_text())
    assert summary["cells"] == 16
    assert summary["outcomes"]["PASS"] == 8 and summary["outcomes"]["CLAMPED"] == 2
    assert summary["outcomes"]["TRUNCATED"] == 0
    assert summary["per_length"]["12288"] == {"PASS": 2, "CONTEXT_ERROR": 2, "CLAMPED": 2}
    assert summary["prefill"]["prompt_tokens_computed"] == 14 * 1000
    assert summary["prefill"]["cache_tokens_reused"] == 10 * 3096 + 4 * 11288
    assert summary["fingerprint"] == FINGERPRINT

    assert paths.heatmap_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    html = paths.report_html.read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; 7391" in html
    assert "data:image/png;base64," in html and "src=\"http" not in html  # self-contained
    assert "1/1,TIMEOUT" in html


def test_committed_v1_file_renders(tmp_path: Path) -> None:
    paths = render_report(FIXTURES / "results-v1.jsonl", tmp_path)
    assert paths.grid_markdown == (
        "length 0% 50% 100% factor\n"
        "2048 PASS FAIL PASS native\n"
        "12288 PASS - TRUNCATED 1.5x YaRN\n"
        "16384 - CLAMPED - 2x YaRN\n"
    )


def test_niah_report_cli_rerenders_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "results.jsonl")
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("length 0% 25% 50% 75% 100% factor\n4096 PASS 1/2 FAIL 1/1,TIMEOUT PASS native\n")
    for name in ("grid.md", "cells.csv", "summary.json", "heatmap.png", "report.html"):
        assert (tmp_path / name).is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no results.jsonl in"),
        (b"", "not a niah results file"),
        (b"\x00\x01garbage\n", "line 1 is not a niah results record"),
    ],
)
def test_niah_report_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "results.jsonl").write_bytes(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("niah: error: ") and message in err


def test_report_per_task_with_the_lengths_interval(tmp_path: Path) -> None:
    """Several tasks: a grid per task, summary.json rows per task and length with the ends of the
    length's confidence sequence (stats.confidence_sequence) and its decision, the same as the
    verdict's, mean scores, the planted pieces as JSON in cells.csv."""
    from niah.publish.stats import confidence_sequence

    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, {"needle_seed": 0})
    piece = {"text": "t", "value": "1", "role": "target", "depth": 50.0, "token_offset": 9, "tokens": 3, "depth_actual": 49.0}
    for trial, (single, multi) in enumerate([("PASS", 1.0), ("PASS", 0.5), ("PASS", 1.0)]):
        results.append(CellResult(2048, 50.0, trial, single, score=1.0, factor="native", planted=(piece,)))
        results.append(CellResult(2048, 50.0, trial, "PASS" if multi == 1.0 else "FAIL", task="multiquery:2",
                                  score=multi, factor="native", planted=(piece, piece)))
    results.append(CellResult(4096, 50.0, 0, "CLAMPED", task="multiquery:2", factor="native"))
    paths = render_report(path, tmp_path)
    assert paths.grid_markdown == (
        "task single\nlength 50% factor\n2048 PASS native\n\n"
        "task multiquery:2\nlength 50% factor\n2048 2/3 native\n4096 CLAMPED native\n"
    )
    summary = json.loads(paths.summary_json.read_text())
    row = summary["tasks"]["multiquery:2"]["per_length"][0]
    low, high = confidence_sequence([1.0, 0.0, 1.0])
    assert (row["passes"], row["answered"], row["low"], row["high"]) == (2, 3, round(low, 4), round(high, 4))
    (judged, _) = summary["tasks"]["multiquery:2"]["verdict"]["lengths"]
    assert (judged["low"], judged["high"], judged["decision"]) == (row["low"], row["high"], row["decision"])
    assert summary["tasks"]["multiquery:2"]["verdict"]["interval"] == "95% confidence sequence"
    assert row["mean_score"] == round(2.5 / 3, 4)
    assert summary["tasks"]["multiquery:2"]["per_length"][1]["answered"] == 0  # CLAMPED was never answered
    assert summary["tasks"]["single"]["cells"][0]["label"] == "PASS"
    cells = pd.read_csv(paths.cells_csv)
    assert json.loads(cells["planted"].dropna().iloc[0])[0]["token_offset"] == 9
    assert paths.heatmap_png.read_bytes().startswith(b"\x89PNG")
    assert "multiquery:2" in paths.report_html.read_text()


def test_truncated_answers_count_in_one_denominator_everywhere(tmp_path: Path) -> None:
    """3/3 PASS at native and PASS, PASS, TRUNCATED beyond: the grid's k/n, summary.json's rows and the
    card's per-length table all say 2 of 3 (not 2/2, better than native), TRUNCATED named beside it."""
    from niah.publish.card import CARD_NAME

    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, {"needle_seed": 0})
    for trial, outcome in enumerate(["PASS", "PASS", "PASS"]):
        results.append(CellResult(4096, 50.0, trial, outcome, factor="native", profile="p"))
    for trial, outcome in enumerate(["PASS", "TRUNCATED", "PASS"]):
        results.append(CellResult(8192, 50.0, trial, outcome, factor="2x YaRN", profile="p"))
    paths = render_report(path, tmp_path)
    assert paths.grid_markdown == "length 50% factor\n4096 PASS native\n8192 2/3,TRUNCATED 2x YaRN\n"
    rows = {r["length"]: r for r in paths.summary["tasks"]["single"]["per_length"]}
    assert (rows[8192]["passes"], rows[8192]["answered"], rows[8192]["pass_rate"]) == (2, 3, 0.6667)
    assert rows[8192]["other"] == "TRUNCATED:1" and rows[8192]["high"] < 1.0
    cell = paths.summary["tasks"]["single"]["cells"][1]
    assert (cell["passes"], cell["answered"], cell["label"]) == (2, 3, "2/3,TRUNCATED")
    card = (tmp_path / CARD_NAME).read_text()
    assert "| 8,192 | 2x YaRN | 3 | 2/3 | 67% (4.8%–99.8%) | undecided | TRUNCATED 1 |" in card


def test_wrong_key_answers_are_named_and_count_as_not_retrieved(tmp_path: Path) -> None:
    """A multikey answer holding a distractor's value: its own name in the grid, the per-length table,
    summary.json's outcomes and the card, and in the denominator as not passed."""
    from niah.publish.card import CARD_NAME

    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, {"needle_seed": 0})
    for trial, outcome in enumerate(["PASS", "WRONG_KEY", "PASS"]):
        results.append(CellResult(4096, 50.0, trial, outcome, task="multikey:4", factor="native", profile="p"))
    results.append(CellResult(4096, 0.0, 0, "WRONG_KEY", task="multikey:4", factor="native", profile="p"))
    paths = render_report(path, tmp_path)
    assert paths.grid_markdown == "task multikey:4\nlength 0% 50% factor\n4096 WRONG_KEY 2/3,WRONG_KEY native\n"
    assert paths.summary["outcomes"]["WRONG_KEY"] == 2
    (row,) = paths.summary["tasks"]["multikey:4"]["per_length"]
    assert (row["passes"], row["answered"], row["other"]) == (2, 4, "WRONG_KEY:2")
    card = (tmp_path / CARD_NAME).read_text()
    assert "| 4,096 | native | 4 | 2/4 | 50% (3.0%–97.0%) | undecided | WRONG_KEY 2 |" in card
    assert "`WRONG_KEY`: the answer held a value planted for another key" in card
    assert cell_label(["WRONG_KEY", "FAIL"]) == "0/2,WRONG_KEY"
