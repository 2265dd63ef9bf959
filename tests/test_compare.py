"""`niah compare`: crafted runs for every kind of change, the regression rule and the exit codes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from niah.cli import main
from niah.compare import compare, compare_runs, to_markdown
from niah.results import CellResult, ResultsFile
from niah.runs import load_run

FINGERPRINT = {"model": {"file": "m.gguf"}, "launches": {"p": ["-c", "8192"]}, "needle_seed": 0}


def write_run(path: Path, plan: dict[tuple[int, float], str], fingerprint: dict[str, object] = FINGERPRINT) -> Path:
    """A run whose cell (length, depth) has one trial per letter: P PASS, F FAIL, C CLAMPED, X CRASH, T TIMEOUT."""
    names = {"P": "PASS", "F": "FAIL", "C": "CLAMPED", "X": "CRASH", "T": "TIMEOUT"}
    results = ResultsFile(path / "results.jsonl", fingerprint)
    for (length, depth), letters in plan.items():
        for trial, letter in enumerate(letters):
            results.append(
                CellResult(length=length, depth=depth, trial=trial, outcome=names[letter], factor="native", profile="p")
            )
    return path


def changes(tmp_path: Path, before: str, after: str) -> str:
    a = write_run(tmp_path / "a", {(1024, 50.0): before})
    b = write_run(tmp_path / "b", {(1024, 50.0): after})
    return str(compare_runs(a, b).cells.loc[0, "change"])


@pytest.mark.parametrize(
    ("before", "after", "change"),
    [
        ("P", "F", "regression"),  # single trials: PASS -> FAIL
        ("F", "P", "improved"),
        ("P", "P", "same"),
        ("F", "F", "same"),
        ("P", "C", "broke"),  # the launch got worse: not FAIL, still a regression
        ("F", "X", "broke"),
        ("C", "P", "fixed"),
        ("C", "C", "same"),
        ("PPPPPPPPPP", "PPFFFFFFFF", "regression"),  # 10/10 -> 2/10: Wilson intervals apart
        ("PPFFFFFFFF", "PPPPPPPPPP", "improved"),
        ("PPPPP", "PPPFF", "down"),  # 5/5 -> 3/5: intervals overlap, not judged
        ("PPPFF", "PPPPP", "up"),
        ("P", "PPPPF", "down"),  # one trial against five: intervals overlap
        ("PPPPT", "PPPPP", "fixed"),
        ("PPPPP", "PPPPT", "broke"),
        ("PPPPT", "FFFFF", "regression"),  # fewer non-retrieval trials, yet retrieval fell apart
    ],
)
def test_change_rule(tmp_path: Path, before: str, after: str, change: str) -> None:
    assert changes(tmp_path, before, after) == change


def test_cells_are_matched_on_length_and_depth_and_the_rest_is_listed(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", {(1024, 0.0): "P", (1024, 50.0): "P", (2048, 0.0): "P"})
    b = write_run(tmp_path / "b", {(1024, 0.0): "P", (1024, 50.0): "F", (4096, 0.0): "F"})
    comparison = compare_runs(a, b)
    assert comparison.cells[["length", "depth", "a_label", "b_label", "change"]].values.tolist() == [
        [1024, 0.0, "PASS", "PASS", "same"],
        [1024, 50.0, "PASS", "FAIL", "regression"],
    ]
    assert comparison.only_a.to_dict("records") == [{"task": "single", "length": 2048, "depth": 0.0}]
    assert comparison.only_b.to_dict("records") == [{"task": "single", "length": 4096, "depth": 0.0}]
    assert comparison.exit_code == 1
    text = to_markdown(comparison)
    assert "| 1024 | 50% | PASS | FAIL | native | native | **regression** |" in text
    assert "2 cells in common: regression 1, same 1; 1 regression(s)." in text
    assert "only in A (not compared): 2048@0%" in text and "only in B (not compared): 4096@0%" in text


def test_tasks_are_compared_separately(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", {(1024, 0.0): "P"}))
    b = load_run(write_run(tmp_path / "b", {(1024, 0.0): "P"}))
    b_cells = pd.concat([b.cells, b.cells.assign(task="multikey", outcome="FAIL")], ignore_index=True)
    a_cells = pd.concat([a.cells, a.cells.assign(task="multikey")], ignore_index=True)
    comparison = compare(replace(a, cells=a_cells), replace(b, cells=b_cells))
    assert comparison.cells[["task", "change"]].values.tolist() == [["single", "same"], ["multikey", "regression"]]
    assert "| multikey | 1024 | 0% | PASS | FAIL |" in to_markdown(comparison)


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "a", {(1024, 0.0): "P", (1024, 100.0): "F"})
    same = write_run(tmp_path / "same", {(1024, 0.0): "P", (1024, 100.0): "P"})
    worse = write_run(tmp_path / "worse", {(1024, 0.0): "C", (1024, 100.0): "F"},
                      {**FINGERPRINT, "launches": {"p": ["-c", "1000"]}})
    assert main(["compare", str(base), str(same)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main(["compare", str(base), str(worse), "--json", "--out", str(tmp_path / "diff")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["exit_code"] == 1 and report["regressions"] == 1 and report["common_cells"] == 2
    assert report["changes"]["broke"] == 1 and report["changes"]["same"] == 1
    assert report["fingerprint_changes"] == ["launches.p"]
    first = report["cells"][0]
    assert (first["length"], first["depth"], first["a_trials"]) == (1024, 0.0, 1)
    assert (first["a_label"], first["b_label"], first["b_other"], first["change"]) == ("PASS", "CLAMPED", "CLAMPED:1", "broke")
    assert json.loads((tmp_path / "diff" / "compare.json").read_text()) == report
    assert (tmp_path / "diff" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**broke**" in (tmp_path / "diff" / "compare.md").read_text()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no run folder"),
        ("no_results", "no results.jsonl in"),
        ("bad_json", "line 2 is not a niah results record (bad JSON)"),
        ("no_cells", "holds no finished cells"),
        ("disjoint", "no cell in common"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    a = write_run(tmp_path / "a", {(1024, 0.0): "P"})
    b = tmp_path / "b"
    if setup != "missing":
        b.mkdir()
    if setup == "bad_json":
        (b / "results.jsonl").write_text('{"record": "header", "schema_version": 1}\n{"length": 1\n')
    elif setup == "no_cells":
        ResultsFile(b / "results.jsonl", FINGERPRINT).write_header()
    elif setup == "disjoint":
        write_run(b, {(2048, 0.0): "P"})
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("niah: error: ") and message in err
    assert main(["compare", str(b), str(a), "--json"]) == 2
    assert message in capsys.readouterr().err
