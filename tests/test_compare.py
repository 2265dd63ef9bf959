"""`niah compare`: crafted and real runs for every kind of change, pooling, missing trials, runs that
measured different things, and the exit codes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from niah.cli import main
from niah.prompts.shared_haystack import SharedHaystack
from niah.publish.compare import compare, compare_runs
from niah.publish.compare_outputs import to_markdown
from niah.publish.results import CellResult, ResultsFile
from niah.publish.runs import load_run
from niah.publish.stats import sign_test

FINGERPRINT = {"model": {"file": "m.gguf"}, "launches": {"p": ["-c", "8192"]}, "needle_seed": 0}
NAMES = {"P": "PASS", "F": "FAIL", "C": "CLAMPED", "X": "CRASH", "T": "TIMEOUT", "H": "HTTP_ERROR", "N": "TRUNCATED", "W": "WRONG_KEY"}
REAL = Path(__file__).parent.parent / "reports" / "tasks-smollm2" / "results.jsonl"


def write_run(path: Path, plan: dict[tuple[int, float], str], fingerprint: dict[str, object] = FINGERPRINT) -> Path:
    """A run whose cell (length, depth) has one trial per letter of NAMES (P PASS, F FAIL, N TRUNCATED, ...)."""
    results = ResultsFile(path / "results.jsonl", fingerprint)
    for (length, depth), letters in plan.items():
        for trial, letter in enumerate(letters):
            results.append(
                CellResult(length=length, depth=depth, trial=trial, outcome=NAMES[letter], factor="native", profile="p",
                           needle_value=f"{length}{depth:g}{trial}")
            )
    return path


def changes(tmp_path: Path, before: str, after: str) -> str:
    a = write_run(tmp_path / "a", {(1024, 50.0): before})
    b = write_run(tmp_path / "b", {(1024, 50.0): after})
    return str(compare_runs(a, b, allow_missing=True).cells.loc[0, "change"])


@pytest.mark.parametrize(
    ("before", "after", "change"),
    [
        ("P", "F", "down"),  # one trial: a single flip is p = 0.5, never a regression alone
        ("F", "P", "up"),
        ("P", "P", "same"),
        ("F", "F", "same"),
        ("P", "C", "broke"),  # the launch got worse: not FAIL, still a regression
        ("F", "X", "broke"),
        ("C", "P", "fixed"),
        ("C", "C", "same"),
        ("PPP", "FFF", "down"),  # 3/3 -> 0/3: p = 0.125, as 3/3 -> 1/3 would be no less
        ("PPP", "NNN", "down"),  # truncated answers did not retrieve either
        ("PPP", "PFF", "down"),  # 3/3 -> 1/3: 2 lost, p = 0.25
        ("PPPPP", "FFFFF", "regression"),  # 5 lost: p = 0.031
        ("PPPPP", "WWWWW", "regression"),  # answers naming another key's value did not retrieve
        ("WWWWW", "PPPPP", "improved"),
        ("PPPPPPPPPP", "PPFFFFFFFF", "regression"),  # 8 lost: p = 0.004
        ("PPFFFFFFFF", "PPPPPPPPPP", "improved"),
        ("PPPPP", "PPPFF", "down"),
        ("PPPFF", "PPPPP", "up"),
        ("PFPFP", "FPFPP", "same"),  # 2 lost, 2 gained: no direction
        ("P", "PPPPF", "same"),  # only trial 0 pairs; B's other trials are not judged
        ("PPPPT", "PPPPP", "fixed"),
        ("PPPPP", "PPPPT", "broke"),  # a TIMEOUT where A answered counts against B (rerun it with --retry)
        ("PPPPP", "PPPPH", "broke"),
        ("PPPPP", "PPPPX", "broke"),  # one CRASH is
        ("PPPPT", "FFFFF", "down"),  # a repaired trial does not make 4 lost a fix
        ("PPPPPT", "FFFFFF", "regression"),  # nor hide 5 lost
    ],
)
def test_change_rule(tmp_path: Path, before: str, after: str, change: str) -> None:
    assert changes(tmp_path, before, after) == change


def test_sign_test_is_the_exact_binomial_tail() -> None:
    assert sign_test(3, 0) == 0.125 and sign_test(0, 0) == 1.0 and sign_test(10, 0) == 1 / 1024
    assert sign_test(2, 1) == 0.5 and sign_test(1, 2) == 0.875


def test_drops_spread_over_depths_are_a_regression_of_the_length(tmp_path: Path) -> None:
    """Five depths each 3/3 -> 1/3: no cell is significant alone, the length (15/15 -> 5/15) is."""
    depths = (0.0, 25.0, 50.0, 75.0, 100.0)
    a = write_run(tmp_path / "a", {(2048, d): "PPP" for d in depths} | {(4096, 0.0): "PPP"})
    b = write_run(tmp_path / "b", {(2048, d): "PFF" for d in depths} | {(4096, 0.0): "PPP"})
    comparison = compare_runs(a, b)
    assert set(comparison.cells["change"]) == {"down", "same"}
    row = comparison.lengths.set_index("length").loc[2048]
    assert (row["a_passes"], row["b_passes"], row["lost"], row["gained"]) == (15, 5, 10, 0)
    assert row["change"] == "regression" and row["p_worse"] == 1 / 1024
    assert comparison.lengths.set_index("length").loc[4096, "change"] == "same"
    assert comparison.tasks["change"].tolist() == ["regression"]
    assert comparison.exit_code == 1
    text = to_markdown(comparison)
    assert "per length (depths pooled):" in text and "| 2048 | 15/15 | 5/15 | 10 | 0 | 0.000977 | - | **regression** |" in text
    assert "verdict: REGRESSION (1 lengths, 1 tasks broke or regressed)" in text


def test_a_timeout_in_b_counts_against_it_until_retry_reruns_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One TIMEOUT where A answered is `broke` at its cell, length and task (exit 1, `--retry` named);
    once `niah run --retry` has recorded the cell again, its new outcome is what is compared."""
    a = write_run(tmp_path / "a", {(1024, 0.0): "PP", (1024, 100.0): "PP"})
    b = write_run(tmp_path / "b", {(1024, 0.0): "PT", (1024, 100.0): "PP"})
    comparison = compare_runs(a, b)
    assert comparison.cells["change"].tolist() == ["broke", "same"] and comparison.exit_code == 1
    assert comparison.lengths["change"].tolist() == ["broke"]
    assert main(["compare", str(a), str(b)]) == 1
    assert "`niah run --retry` on B's folder reruns them" in capsys.readouterr().out
    ResultsFile(b / "results.jsonl", FINGERPRINT).append(  # what --retry appends: the cell's new record
        CellResult(length=1024, depth=0.0, trial=1, outcome="PASS", factor="native", profile="p", needle_value="102401"))
    assert compare_runs(a, b).cells["change"].tolist() == ["same", "same"] and compare_runs(a, b).exit_code == 0


def test_a_partial_b_is_incomplete_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", {(1024, 0.0): "PPP", (1024, 50.0): "PPP", (2048, 0.0): "PPP"})
    b = write_run(tmp_path / "b", {(1024, 0.0): "P"})
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "verdict: incomplete: 8 cells of A missing from B; rerun B to finish it, or --allow-missing" in out
    assert "only in A (not compared): single 1024@0%#1" in out
    assert main(["compare", str(a), str(b), "--allow-missing"]) == 0
    assert "incomplete: 8 cells of A missing from B (allowed)" in capsys.readouterr().out
    assert main(["compare", str(b), str(a)]) == 0  # B may hold more than A


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("needle_seed", 1, "needle_seed: 0 → 1"),
        ("corpus_sha256", "ab", 'corpus_sha256: "not recorded" → "ab"'),
        ("needle_spec", {"file": "n.toml", "sha256": "cd"}, "needle_spec: "),
        ("task_files", {"t": {"file": "t.toml", "sha256": "ef"}}, "task_files: "),
        ("answer_budget", 64, "answer_budget: "),
        ("answer_budget_explicit", True, "answer_budget_explicit: "),
        ("thinking", "on", 'thinking: "not recorded" → "on"'),
        ("haystack", "shared", "haystack: "),
    ],
)
def test_runs_that_measured_different_things_are_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object, named: str
) -> None:
    a = write_run(tmp_path / "a", {(1024, 0.0): "PPPPP"})
    b = write_run(tmp_path / "b", {(1024, 0.0): "FFFFF"}, {**FINGERPRINT, key: value})
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "measured different things (" in err and named in err and "--force" in err
    assert main(["compare", str(a), str(b), "--force"]) == 1
    assert "**regression**" in capsys.readouterr().out


def test_paired_trials_with_different_needle_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", {(1024, 0.0): "PP"})
    b = tmp_path / "b"
    results = ResultsFile(b / "results.jsonl", FINGERPRINT)
    for trial in range(2):
        results.append(CellResult(1024, 0.0, trial, "PASS", factor="native", needle_value=f"999{trial}"))
    assert main(["compare", str(a), str(b)]) == 2
    assert "needle values differ in 2 paired trial(s)" in capsys.readouterr().err


def real_copy(tmp_path: Path, name: str, edit=None, keep=None) -> Path:
    """reports/tasks-smollm2 copied: `edit(record)` changes cell records, `keep(record)` filters them."""
    lines = REAL.read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        if record.get("record") == "cell":
            if keep and not keep(record):
                continue
            if edit:
                edit(record)
        out.append(json.dumps(record))
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.jsonl").write_text("\n".join(out) + "\n", encoding="utf-8")
    return folder


def test_real_run_against_itself_is_no_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "a"
    copy.mkdir()
    shutil.copy(REAL, copy / "results.jsonl")
    assert main(["compare", str(REAL.parent), str(copy)]) == 0
    out = capsys.readouterr().out
    assert "27 paired trials in 9 cells; cells: same 9; lengths: same 9; tasks: same 3." in out
    assert "verdict: no regression" in out


def test_real_run_single_collapse_is_judged_by_the_exact_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`single`'s 2,048 and 4,096 trials set to FAIL: each length's 3/3 -> 0/3 is `down` (p = 0.125 is
    not evidence at 0.05), the task's 6/6 -> 0/6 a regression (p = 0.016)."""
    def fail(record: dict) -> None:
        if record["task"] == "single" and record["length"] in (2048, 4096):
            record["outcome"] = "FAIL"

    b = real_copy(tmp_path, "b", edit=fail)
    assert main(["compare", str(REAL.parent), str(b)]) == 1
    out = capsys.readouterr().out
    assert "| single | 2048 | 50% | PASS | FAIL | native | native | 3 | 0 | 0.125 | - | down |" in out
    assert "| single | 6/9 | 0/9 | 6 | 0 | 0.0156 | - | **regression** |" in out
    assert "verdict: REGRESSION (1 tasks broke or regressed)" in out


def test_real_run_partial_b_is_incomplete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: a B holding one of A's 27 trials."""
    b = real_copy(tmp_path, "b", keep=lambda r: (r["task"], r["length"], r["trial"]) == ("single", 2048, 0))
    assert main(["compare", str(REAL.parent), str(b)]) == 1
    assert "incomplete: 26 cells of A missing from B" in capsys.readouterr().out
    assert main(["compare", str(REAL.parent), str(b), "--allow-missing"]) == 0


def test_real_run_with_another_seed_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = real_copy(tmp_path, "b")
    text = (b / "results.jsonl").read_text(encoding="utf-8").replace('"needle_seed": 0', '"needle_seed": 7', 1)
    (b / "results.jsonl").write_text(text, encoding="utf-8")
    assert main(["compare", str(REAL.parent), str(b)]) == 2
    assert "measured different things (needle_seed: 0 → 7)" in capsys.readouterr().err


def test_real_run_one_timeout_is_broke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def timeout(record: dict) -> None:
        if (record["task"], record["length"], record["trial"]) == ("single", 4096, 0):
            record["outcome"] = "TIMEOUT"

    assert main(["compare", str(REAL.parent), str(real_copy(tmp_path, "one", edit=timeout))]) == 1
    out = capsys.readouterr().out
    assert "| single | 4096 | 50% | PASS | 2/2,TIMEOUT | native | native | 0 | 0 | - | transient 1 | **broke** |" in out


def test_cells_are_matched_on_length_and_depth_and_the_rest_is_listed(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", {(1024, 0.0): "P", (1024, 50.0): "P", (2048, 0.0): "P"})
    b = write_run(tmp_path / "b", {(1024, 0.0): "P", (1024, 50.0): "F", (4096, 0.0): "F"})
    comparison = compare_runs(a, b, allow_missing=True)
    assert comparison.cells[["length", "depth", "a_label", "b_label", "change"]].values.tolist() == [
        [1024, 0.0, "PASS", "PASS", "same"],
        [1024, 50.0, "PASS", "FAIL", "down"],
    ]
    assert comparison.missing.to_dict("records") == [{"task": "single", "length": 2048, "depth": 0.0, "trial": 0}]
    assert comparison.only_b.to_dict("records") == [{"task": "single", "length": 4096, "depth": 0.0, "trial": 0}]
    assert comparison.exit_code == 0  # missing allowed; one flip is no regression
    assert compare_runs(a, b).exit_code == 1  # incomplete
    text = to_markdown(comparison)
    assert "| 1024 | 50% | PASS | FAIL | native | native | 1 | 0 | 0.5 | - | down |" in text
    assert "2 paired trials in 2 cells; cells: down 1, same 1; lengths: down 1; tasks: down 1." in text
    assert "only in A (not compared): single 2048@0%#0" in text and "only in B (not compared): single 4096@0%#0" in text


def test_tasks_are_compared_separately(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", {(1024, 0.0): "PPPPPP"}))
    b = load_run(write_run(tmp_path / "b", {(1024, 0.0): "PPPPPP"}))
    b_cells = pd.concat([b.cells, b.cells.assign(task="multikey", outcome="FAIL")], ignore_index=True)
    a_cells = pd.concat([a.cells, a.cells.assign(task="multikey")], ignore_index=True)
    comparison = compare(replace(a, cells=a_cells), replace(b, cells=b_cells))
    assert comparison.cell_alpha == 0.025  # two cells compared; 6 lost: p = 0.016
    assert comparison.cells[["task", "change"]].values.tolist() == [["single", "same"], ["multikey", "regression"]]
    assert comparison.tasks[["task", "change"]].values.tolist() == [["single", "same"], ["multikey", "regression"]]
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
    assert report["exit_code"] == 1 and report["paired_trials"] == 2 and not report["incomplete"]
    assert report["changes"]["cells"]["broke"] == 1 and report["changes"]["cells"]["same"] == 1
    assert report["regressions"] == 3  # the cell, its length, its task
    assert report["fingerprint_changes"] == ["launches.p"]
    first = report["cells"][0]
    assert (first["length"], first["depth"], first["pairs"]) == (1024, 0.0, 1)
    assert (first["a_label"], first["b_label"], first["hard"], first["change"]) == ("PASS", "CLAMPED", 1, "broke")
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
        ("disjoint", "no trial in common"),
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


def test_effective_lengths_and_an_auto_b_that_decided_sooner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A: 1024 and 2048 clear with 35 passing trials each. B (--trials auto): 1024 clears the same way,
    2048 is decided below after one round of 5 FAILs: its 30 other trials are not missing, and the
    effective length falls from 2,048 to 1,024."""
    depths = (0.0, 25.0, 50.0, 75.0, 100.0)
    a = write_run(tmp_path / "a", {(n, d): "P" * 7 for n in (1024, 2048) for d in depths})
    auto = {**FINGERPRINT, "trials": {"mode": "auto", "pass_rate": 0.856, "max_trials": 20, "interval": "wilson",
                                      "clusters": "independent"}}
    b = write_run(tmp_path / "b", {**{(1024, d): "P" * 7 for d in depths}, **{(2048, d): "F" for d in depths}}, auto)
    comparison = compare_runs(a, b)
    assert comparison.decided_sooner == 30 and not comparison.incomplete and len(comparison.missing) == 0
    text = to_markdown(comparison)
    assert "effective length: A 2,048 → B 1,024" in text
    assert "30 of A's trials not in B: B's --trials auto had decided their length" in text
    assert main(["compare", str(a), str(b), "--json"]) == 1  # 5/5 → 0/5 at 2048 is a regression
    report = json.loads(capsys.readouterr().out)
    assert report["effective_length"] == {"a": 2048, "b": 1024} and report["missing"] == 0
    assert report["verdicts"]["b"]["single"]["lengths"][1]["decision"] == "below"
    fixed = write_run(tmp_path / "fixed", {(n, d): "P" for n in (1024, 2048) for d in depths})
    assert compare_runs(a, fixed).incomplete  # a fixed-trial B that ran fewer trials is incomplete, as before
    late = write_run(tmp_path / "late", {**{(1024, d): "F" for d in depths}, **{(2048, d): "P" * 7 for d in depths}})
    assert "B: 2048 clears after 1024 failed" in to_markdown(compare_runs(a, late, allow_missing=True))


def write_screen(path: Path, screen: dict[tuple[int, float], str], confirmed: dict[tuple[int, float], str],
                 identity: dict[str, object] | None = None) -> Path:
    """A shared screen (`single@shared`, one trial) with its confirmations (`single`); `identity`: the
    screen's grid and keys as the fingerprint records them."""
    fingerprint = {**FINGERPRINT, "haystack": "shared", **({"shared": identity} if identity else {})}
    results = ResultsFile(path / "results.jsonl", fingerprint)
    for task, plan in (("single@shared", screen), ("single", confirmed)):
        for (length, depth), letter in plan.items():
            results.append(CellResult(length=length, depth=depth, trial=0, outcome=NAMES[letter], task=task,
                                      factor="native", needle_value=f"{length}{depth:g}"))
    return path


def test_screens_of_different_grids_are_refused_naming_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Cell (1024, 0%) of a 2-depth screen and of a 3-depth one had other keys and other needles beside them."""
    plan = {(n, d): "P" for n in (1024, 2048) for d in (0.0, 100.0)}
    a = write_screen(tmp_path / "a", plan, {}, SharedHaystack.of_grid(((1024, (0, 100)), (2048, (0, 100)))).identity(0, 1))
    b = write_screen(tmp_path / "b", plan, {}, SharedHaystack.of_grid(((1024, (0, 50, 100)), (2048, (0, 50, 100)))).identity(0, 1))
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'shared screen grid: {"1024": [0.0, 100.0], "2048": [0.0, 100.0]} → ' in err
    assert 'shared screen keys_sha256: ' in err
    old = tmp_path / "old"  # a screen recorded before its grid was: not known to be the same screen
    (old / "results.jsonl").parent.mkdir()
    (old / "results.jsonl").write_text((a / "results.jsonl").read_text().replace('"shared": {', '"unrecorded": {', 1))
    assert main(["compare", str(old), str(a)]) == 2
    assert 'shared: "not recorded" → {"grid"' in capsys.readouterr().err


def test_confirmations_pair_with_confirmations_and_a_passed_screen_cell_needs_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A's screen failed (2048, 0%) and confirmed it; B's screen passed it, so B has nothing to confirm
    there: not missing. (1024, 100%) failed in both screens: its confirmations are paired."""
    a = write_screen(tmp_path / "a", {(1024, 0.0): "P", (1024, 100.0): "F", (2048, 0.0): "F", (2048, 100.0): "P"},
                     {(1024, 100.0): "P", (2048, 0.0): "F"})
    b = write_screen(tmp_path / "b", {(1024, 0.0): "P", (1024, 100.0): "F", (2048, 0.0): "P", (2048, 100.0): "P"},
                     {(1024, 100.0): "P"})
    comparison = compare_runs(a, b)
    assert comparison.screen_passed == 1 and len(comparison.missing) == 0 and comparison.exit_code == 0
    assert comparison.cells[["task", "length", "depth", "change"]].values.tolist() == [
        ["single", 1024, 100.0, "same"],  # the confirmations, paired with each other
        ["single@shared", 1024, 0.0, "same"], ["single@shared", 1024, 100.0, "same"],
        ["single@shared", 2048, 0.0, "up"], ["single@shared", 2048, 100.0, "same"],
    ]
    assert set(comparison.verdicts["a"]) == {"single@shared"}  # confirmations are not a task with a verdict
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "1 of A's confirmations not in B: B's screen passed those cells, nothing to confirm (not missing)" in out
    c = write_screen(tmp_path / "c", {(1024, 0.0): "P", (1024, 100.0): "F", (2048, 0.0): "F", (2048, 100.0): "P"},
                     {(1024, 100.0): "P"})
    assert compare_runs(a, c).missing.to_dict("records") == [{"task": "single", "length": 2048, "depth": 0.0, "trial": 0}]
