"""`niah compare` and `niah card` on two real short runs: native 8K against 2x YaRN 16K (tiny model, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from niah.cli import main
from niah.publish.results import CellResult, ResultsFile, load_cells, read_header

pytestmark = pytest.mark.server
LENGTH = 1024
DEPTHS = "0,50,100"


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 1K × 3-depth grid run under two launch profiles, through the CLI."""
    runs = tmp_path_factory.mktemp("runs")
    for name, profile in (("native", "tiny-native-8k"), ("yarn", "tiny-yarn-16k")):
        code = main(["run", "--model", str(tiny_model), "--profile", profile, "--lengths", str(LENGTH),
                     "--depths", DEPTHS, "--out", str(runs / name), "--no-progress"])
        assert code in (0, 1), f"{profile} run ended with exit code {code}"
    return runs / "native", runs / "yarn"


def test_compare_two_real_runs(two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    native, yarn = two_runs
    capsys.readouterr()
    code = main(["compare", str(native), str(yarn), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["paired_trials"] == 3 and not report["missing_trials"] and not report["only_b"]
    assert code == report["exit_code"] == (1 if report["regressions"] else 0)
    assert {c["a_factor"] for c in report["cells"]} == {"native"}
    assert {c["b_factor"] for c in report["cells"]} == {"2x YaRN"}
    assert any(name.startswith("launches.") for name in report["fingerprint_changes"])
    a, b = load_cells(native / "results.jsonl"), load_cells(yarn / "results.jsonl")
    for cell in report["cells"]:
        outcome_a = a.loc[a["depth"] == cell["depth"], "outcome"].item()
        outcome_b = b.loc[b["depth"] == cell["depth"], "outcome"].item()
        assert (cell["a_label"], cell["b_label"]) == (outcome_a, outcome_b)
        if (outcome_a, outcome_b) == ("PASS", "FAIL"):
            assert cell["change"] == "regression"
    assert main(["compare", str(native), str(native)]) == 0
    out = capsys.readouterr().out
    assert "3 paired trials in 3 cells; cells: same 3; lengths: same 1; tasks: same 1." in out and "verdict: no regression" in out


def test_a_crafted_flip_in_a_real_run_is_down_and_a_clamp_breaks_it(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    native, _ = two_runs
    copy = tmp_path / "tampered"
    copy.mkdir()
    (copy / "results.jsonl").write_bytes((native / "results.jsonl").read_bytes())
    cells = load_cells(copy / "results.jsonl")
    results = ResultsFile(copy / "results.jsonl", read_header(copy / "results.jsonl")["fingerprint"])
    first = cells.iloc[0]
    flipped = "FAIL" if first["outcome"] == "PASS" else "PASS"
    results.append(CellResult(length=LENGTH, depth=float(first["depth"]), trial=0, outcome=flipped, factor="native",
                              needle_value=str(first["needle_value"])))
    before, after = (native, copy) if flipped == "FAIL" else (copy, native)
    assert main(["compare", str(before), str(after)]) == 0  # one flip of one trial: p = 0.5, shown, not failed
    out = capsys.readouterr().out
    assert f"| {LENGTH} | {first['depth']:g}% | PASS | FAIL | native | native | 1 | 0 |" in out
    assert "| down |" in out and "**regression**" not in out
    clamped = ResultsFile(copy / "results.jsonl", read_header(copy / "results.jsonl")["fingerprint"])
    clamped.append(CellResult(length=LENGTH, depth=float(first["depth"]), trial=0, outcome="CLAMPED", factor="native",
                              needle_value=str(first["needle_value"])))
    assert main(["compare", str(native), str(copy)]) == 1
    assert "**broke**" in capsys.readouterr().out


def test_card_of_a_real_run_shows_the_served_context(two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, yarn = two_runs
    assert (yarn / "card.md").is_file()  # niah run renders the report, card included
    assert main(["card", str(yarn)]) == 0
    card = capsys.readouterr().out
    assert f"16,384 ≥ {LENGTH:,} + 32 (not clamped)" in card
    assert "--rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 8192" in card
    assert "3 of 3 sent prompts were served at exactly the cell's length" in card
    assert str(yarn.parent) not in card and "--profile tiny-yarn-16k" in card


def test_compare_of_confirmed_screens_pairs_confirmations_and_a_passed_cell_needs_none(
    llama_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A: a real SmolLM2 screen with `--confirm all` (each cell of its longest length rerun one needle per
    prompt). B: A with its (1024, 0%) screen cell a PASS and that cell's confirmation gone, as a B whose
    screen passed it and confirmed only failures would be. The confirmations pair with B's; the one B
    lacks is not missing; the screen cells pair with the screen's."""
    a = tmp_path / "a"
    code = main(["run", "--url", llama_server.url, "--lengths", "1024", "--depths", "0,100", "--haystack", "shared",
                 "--confirm", "all", "--no-progress", "--out", str(a)])
    assert code in (0, 1)
    lines = [json.loads(line) for line in (a / "results.jsonl").read_text().splitlines()]
    cell, twin = ("single@shared", 1024, 0.0, 0), ("single", 1024, 0.0, 0)
    key = [(r.get("task"), r.get("length"), r.get("depth"), r.get("trial")) for r in lines]
    assert key.count(twin) == key.count(cell) == 1
    b = tmp_path / "b"
    b.mkdir()
    kept = [dict(r, outcome="PASS") if k == cell else r for r, k in zip(lines, key) if k != twin]
    (b / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["screen_passed"] == 1 and report["missing"] == 0 and not report["incomplete"]
    tasks = {c["task"] for c in report["cells"]}
    assert tasks == {"single", "single@shared"}
    assert sum(c["pairs"] for c in report["cells"] if c["task"] == "single") == 1  # (1024, 100%)'s confirmations
    assert set(report["verdicts"]["a"]) == {"single@shared"}
