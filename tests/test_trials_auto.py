"""`--trials auto`, WRONG_KEY and the effective length against a real llama-server with SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from niah.cli import main
from niah.prompts.tasks import parse_tasks
from niah.publish.verdict import TrialPolicy
from niah.run.runner import RunConfig, run

pytestmark = pytest.mark.server


def cells(path: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("record") == "cell"]


def auto_config(urls: list[str], out: Path, lengths: tuple[int, ...], depths: tuple[float, ...], task: str = "single",
                **policy: object) -> RunConfig:
    return RunConfig(
        grid=tuple((length, depths) for length in lengths), out_dir=out, url=urls[0], urls=tuple(urls[1:]),
        tasks=parse_tasks(task), policy=TrialPolicy(auto=True, **policy),  # type: ignore[arg-type]
        show_progress=False,
    )


def test_a_passing_length_stops_early_and_a_failing_one_is_decided(llama_server, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """SmolLM2 finds one needle in 512 tokens: with a 50% threshold 3 rounds of 3 depths clear it (of
    4 allowed; 8 passing answers are the fewest that clear 50%). It mixes up multikey:4's keys at 512
    tokens: answers naming a distractor's number are WRONG_KEY, and the length is decided below 85.6%
    before the cap of 3 rounds."""
    passing = run(auto_config([llama_server.url], tmp_path / "pass", (512,), (0.0, 50.0, 100.0),
                              pass_rate=0.5, max_trials=4))
    records = cells(passing.results_path)
    assert [r["trial"] for r in records] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and {r["outcome"] for r in records} == {"PASS"}
    summary = json.loads((tmp_path / "pass" / "summary.json").read_text())
    assert summary["effective_length"] == 512 and passing.exit_code == 0
    (verdict,) = summary["tasks"]["single"]["verdict"]["lengths"]
    assert (verdict["passes"], verdict["trials"], verdict["decision"]) == (9, 3, "clears")
    assert summary["fingerprint"]["trials"] == {"mode": "auto", "pass_rate": 0.5, "max_trials": 4,
                                                "clusters": "independent"}
    card = (tmp_path / "pass" / "card.md").read_text()
    assert "**Effective length 512 (every length up to it clears 50.0%).**" in card
    assert "--trials auto" in card and "--pass-rate 0.5" in card and "each answered cell one observation" in card
    assert "up to 4 trials per cell" in card

    failing = run(auto_config([llama_server.url], tmp_path / "fail", (512,), (0.0, 50.0, 100.0), "multikey:4",
                              max_trials=3))
    records = cells(failing.results_path)
    assert "WRONG_KEY" in {r["outcome"] for r in records}  # a distractor's number, not FAIL
    wrong = next(r for r in records if r["outcome"] == "WRONG_KEY")
    assert "not asked" in str(wrong["error"]) and wrong["needle_value"] not in str(wrong["error"])
    summary = json.loads((tmp_path / "fail" / "summary.json").read_text())
    (verdict,) = summary["tasks"]["multikey:4"]["verdict"]["lengths"]
    assert verdict["decision"] == "below" or verdict["trials"] == 3
    assert len(records) == 3 * verdict["trials"] and summary["effective_length"] is None
    assert failing.exit_code == 1
    assert "WRONG_KEY" in (tmp_path / "fail" / "grid.md").read_text()

    assert main(["compare", str(tmp_path / "pass"), str(tmp_path / "pass")]) == 0
    assert "effective length: A 512 → B 512" in capsys.readouterr().out


def test_a_resumed_auto_run_continues_deciding_from_its_results(llama_server, tmp_path: Path) -> None:
    """A run cut off in its last round sends only that round's missing cell, then decides as before."""
    config = auto_config([llama_server.url], tmp_path, (512,), (0.0, 50.0, 100.0), pass_rate=0.5, max_trials=4)
    run(config)
    lines = config.results_path.read_text().splitlines(keepends=True)
    assert [r["trial"] for r in cells(config.results_path)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    config.results_path.write_text("".join(lines[:-1]))  # the last cell never finished
    again = run(config)
    records = cells(again.results_path)
    assert [(r["depth"], r["trial"]) for r in records[8:]] == [(100.0, 2)]
    assert again.exit_code == 0 and again.verdicts["single"]["effective_length"] == 512


def test_auto_rounds_are_shared_by_two_servers(start_llama_server, tmp_path: Path) -> None:
    urls = [start_llama_server("-c", "2048", "--parallel", "1").url for _ in range(2)]
    summary = run(auto_config(urls, tmp_path, (256, 512), (0.0, 50.0, 100.0), pass_rate=0.5, max_trials=3))
    records = cells(summary.results_path)
    keys = [(r["length"], r["depth"], r["trial"]) for r in records]
    assert sorted(keys) == sorted((n, d, t) for n in (256, 512) for d in (0.0, 50.0, 100.0) for t in (0, 1, 2))
    assert {r["endpoint"] for r in records} == set(urls)
    assert [v["decision"] for v in summary.verdicts["single"]["lengths"]] == ["clears", "clears"]
