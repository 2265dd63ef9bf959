"""`niah card`: the model-card block from results alone."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from niah.cli import main
from niah.publish.card import render_card, write_card
from niah.publish.filenames import file_names
from niah.publish.report import render_report
from niah.publish.results import CellResult, ResultsFile, read_header
from niah.publish.runs import load_run
from niah.publish.stats import confidence_sequence

DEMO = Path(__file__).parent.parent / "reports" / "demo"
TASKS = Path(__file__).parent.parent / "reports" / "tasks-smollm2"
FINGERPRINT = {
    "niah": "0.1.0",
    "model": {"file": "m.gguf", "bytes": 1234567, "head_sha256": "ab" * 32},
    "launches": {
        "p-native": ["-c", "4096", "--parallel", "1", "--cache-type-k", "q8_0"],
        "p-yarn": ["-c", "8192", "--parallel", "1", "--override-kv", "llama.context_length=int:8192",
                   "--rope-scaling", "yarn", "--rope-scale", "2", "--yarn-orig-ctx", "4096"],
    },
    "tokenizer": "auto",
    "corpus": "builtin",
    "corpus_sha256": "cd" * 32,
    "needle_seed": 3,
    "needle_spec": "default",
    "answer_budget": 32,
    "thinking": "off",
    "temperature": 0.0,
    "cache_reuse": True,
}


def cell(length: int, depth: float, trial: int, outcome: str, **extra: object) -> CellResult:
    profile = "p-native" if length <= 4000 else "p-yarn"
    fields: dict[str, object] = {
        "needle_value": "1234567",
        "prompt_tokens_planned": length,
        "prompt_tokens_served": None if outcome == "CLAMPED" else length,
        "prompt_n": None if outcome == "CLAMPED" else length // 2,
        "cache_n": None if outcome == "CLAMPED" else length // 2,
        "prompt_ms": None if outcome == "CLAMPED" else length / 2 * 10.0,
        "predicted_n": None if outcome == "CLAMPED" else 10,
        "predicted_ms": None if outcome == "CLAMPED" else 500.0,
        "wall_s": 0.0 if outcome == "CLAMPED" else 30.0,
        "server_n_ctx": 4096 if profile == "p-native" else 8192,
        "profile": profile,
        "factor": "native" if profile == "p-native" else "2x YaRN",
    }
    fields.update(extra)
    return CellResult(length=length, depth=depth, trial=trial, outcome=outcome, **fields)  # type: ignore[arg-type]


def write_run(
    path: Path, cells: list[CellResult], fingerprint: dict[str, object] = FINGERPRINT,
    facts: dict[str, object] | None = None,
) -> Path:
    results = ResultsFile(path / "results.jsonl", fingerprint)
    if facts:
        results.check_facts(facts)  # as the runner records them once a server is up
    for c in cells:
        results.append(c)
    return path


def three_trial_run(path: Path) -> Path:
    outcomes = {(2048, 0.0): "PPP", (2048, 100.0): "PPF", (6144, 0.0): "PFF", (6144, 100.0): "PPT"}
    code = {"P": "PASS", "F": "FAIL", "T": "TRUNCATED"}
    return write_run(path, [cell(n, d, t, code[o]) for (n, d), os in outcomes.items() for t, o in enumerate(os)])


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/home/ann/models/m.gguf", "m.gguf"),
        ("C:\\models\\m.gguf", "m.gguf"),
        ("llama.context_length=int:8192", "llama.context_length=int:8192"),
        ("--chat-template-file=/srv/t/x.jinja", "--chat-template-file=x.jinja"),
        ("files:/home/ann/texts/*.txt", "files:*.txt"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("q8_0", "q8_0"),
    ],
)
def test_file_names_drop_folders(text: str, shown: str) -> None:
    assert file_names(text) == shown


def test_committed_demo_card_is_what_niah_card_writes(tmp_path: Path) -> None:
    committed = write_card(DEMO, tmp_path).read_text(encoding="utf-8")  # == the file: test_committed_reports
    assert (DEMO / "grid.md").read_text(encoding="utf-8") in committed
    header = read_header(DEMO / "results.jsonl")["fingerprint"]
    for profile, argv in header["launches"].items():
        assert f"`{profile}`" in committed and " ".join(argv) in committed
    assert "`llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf -c 12288 --parallel 1 " in committed
    assert "12,288 ≥ 12,256 + 32 (not clamped)" in committed
    assert "25 of 25 sent prompts were served at exactly the cell's length" in committed
    assert "--profile-for-length 4096=tiny-native-8k,8160=tiny-native-8k,12256=tiny-yarn-12k," in committed
    assert "--lengths 4096,8160,12256,16352,31508" in committed
    assert "**llama-server:** `version: 0.6.0-dev (build 0, commit unknown)`" in committed  # the facts line the run recorded


def test_card_method_and_per_length_numbers(tmp_path: Path) -> None:
    run = load_run(three_trial_run(tmp_path))
    card = render_card(run.cells, run.header, run.fingerprint)
    assert "```text\nlength 0% 100% factor\n2048 PASS 2/3 native\n6144 1/3 2/3,TRUNCATED 2x YaRN\n```" in card
    assert "`TRUNCATED`: the answer budget ran out" in card and "`CLAMPED`" not in card
    low, high = confidence_sequence([1.0] * 5 + [0.0])
    assert f"| 2,048 | native | 6 | 5/6 | 83% ({low:.1%}–{high:.1%}) | undecided | - |" in card
    assert "pass rate (95% confidence sequence)" in card
    assert "each at most 2.5% of the time" in card and "Waudby-Smith & Ramdas 2023" in card
    assert "| 6,144 | 2x YaRN | 6 | 3/6 | 50% " in card and "| TRUNCATED 1 |" in card
    # prefill: length/2 tokens in length/2 * 10 ms = 100 tok/s; decode: 10 tokens in 500 ms = 20 tok/s
    assert "| 100.0 | 20.0 | 50% | 3 min 00 s |" in card
    assert "3 per cell, 12 cells in all" in card
    assert "4,096 ≥ 2,048 + 32 (not clamped)" in card and "8,192 ≥ 6,144 + 32 (not clamped)" in card
    assert "`llama-server -m m.gguf -c 4096 --parallel 1 --cache-type-k q8_0`" in card
    assert "1,234,567 bytes" in card and "ab" * 32 in card
    assert "seed 3" in card and "The special magic number is {value}." in card
    assert "--trials 3" in card and "--seed 3" in card and "--profile-for-length 2048=p-native,6144=p-yarn" in card
    assert "Task `" not in card  # results without tasks are one task, no heading


def test_card_marks_a_clamped_launch_and_unrecorded_facts(tmp_path: Path) -> None:
    fingerprint = {k: v for k, v in FINGERPRINT.items() if k not in ("tokenizer", "needle_spec")}
    run = load_run(write_run(tmp_path, [cell(4090, 0.0, 0, "CLAMPED", profile="p-native", server_n_ctx=4096, factor="native"), cell(2048, 0.0, 0, "PASS")], fingerprint))
    card = render_card(run.cells, run.header, run.fingerprint)
    assert "4,096 < 4,090 + 32 (CLAMPED)" in card
    assert "`CLAMPED`: the server's per-slot context was below" in card
    assert "**Tokenizer:** `not recorded`" in card and "**Needle:** wording not recorded" in card
    assert "its text or hash is not recorded" in card


def test_card_names_files_only_and_never_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIAH_API_KEY", "sk-live-0123456789abcdef")
    fingerprint = dict(FINGERPRINT)
    fingerprint["model"] = {"file": "/home/ann/models/m.gguf", "bytes": 1, "head_sha256": "ef" * 32}
    fingerprint["needle_spec"] = {"file": "/home/ann/needles/custom.toml", "sha256": "12" * 32}
    fingerprint["corpus"] = "files:/home/ann/texts/*.txt"
    fingerprint["launches"] = {"/home/ann/p/mine.toml": ["-c", "4096", "--mmproj", "/home/ann/mm.gguf",
                                                          "--api-key", "sk-live-0123456789abcdef"]}
    facts = {"server_version": "version: 11434 (616baba9)", "tokenizer_resolved": "server:http://127.0.0.1:1"}
    run = load_run(write_run(tmp_path, [cell(2048, 50.0, 0, "PASS", profile="/home/ann/p/mine.toml")],
                             fingerprint, facts))
    card = render_card(run.cells, run.header, run.fingerprint)
    assert "/home/ann" not in card and "/opt/llama" not in card and "sk-live" not in card
    assert "`llama-server -m m.gguf -c 4096 --mmproj mm.gguf --api-key ***`" in card
    assert "custom needles from `custom.toml`, sha256 `" + "12" * 32 in card
    assert "corpus `files:*.txt`" in card and "--corpus files:*.txt" in card and "--needle custom.toml" in card
    assert "**llama-server:** `version: 11434 (616baba9)`." in card
    assert "resolved to the server's own tokenizer (llama-server's /tokenize)" in card and "127.0.0.1:1" not in card
    assert not re.search(r"(?<![\w.:])/\w+/", card)  # no absolute folder anywhere


@pytest.mark.parametrize(
    ("facts", "shown"),
    [
        ({"server_version": "version: 11434 (616baba9)"}, "version: 11434 (616baba9)"),  # managed launches
        ({"server": {"url": "http://127.0.0.1:8080", "build_info": "b11434-616baba9"}}, "b11434-616baba9"),  # --url
    ],
)
def test_card_names_the_server_build_from_the_recorded_facts(tmp_path: Path, facts: dict, shown: str) -> None:
    run = load_run(write_run(tmp_path, [cell(2048, 0.0, 0, "PASS")], facts=facts))
    card = render_card(run.cells, run.header, run.fingerprint)
    assert f"**llama-server:** `{shown}`." in card


def test_card_splits_the_grid_per_task(tmp_path: Path) -> None:
    run = load_run(three_trial_run(tmp_path))
    other = run.cells[run.cells["length"] == 2048].assign(task="multikey", outcome="FAIL")
    df = pd.concat([run.cells, other], ignore_index=True)
    card = render_card(df, run.header, run.fingerprint)
    assert "Task `single`:\n\n```text\nlength 0% 100% factor\n2048 PASS 2/3 native\n6144" in card
    assert "Task `multikey`:\n\n```text\nlength 0% 100% factor\n2048 FAIL FAIL native\n```" in card
    assert "| multikey | 2,048 | native | 6 | 0/6 | 0% " in card


def test_niah_card_cli_and_niah_report_write_card_md(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    three_trial_run(tmp_path)
    assert main(["card", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "card.md").read_text(encoding="utf-8") and printed.startswith("## Needle in a haystack: m.gguf")
    (tmp_path / "card.md").unlink()
    render_report(tmp_path / "results.jsonl", tmp_path)
    assert (tmp_path / "card.md").read_text(encoding="utf-8") == printed


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "no run folder"), ("empty_dir", "no results.jsonl in"), ("bad_json", "line 2 is not a niah results record")],
)
def test_niah_card_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    target = tmp_path / "run"
    if setup != "missing":
        target.mkdir()
    if setup == "bad_json":
        (target / "results.jsonl").write_text('{"record": "header", "schema_version": 1}\n{nope\n')
    assert main(["card", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("niah: error: ") and message in err


def test_card_says_what_each_task_planted_and_asked() -> None:
    """The committed multi-task run: each task's own sentences and question (not the single needle's),
    its answer budget, the served context checked against the task that needs most, a readable intro."""
    run = load_run(TASKS)
    card = render_card(run.cells, run.header, run.fingerprint)
    intro = card.split("\n\n")[1]
    assert "the target placed" not in intro and "one row per prompt length" in intro
    tasks = {line.split("`")[1]: line for line in card.splitlines() if line.startswith("  - `")}
    assert list(tasks) == ["single", "chain:2", "multikey:4"]
    assert 'planted "The special magic number is 4264513." (target, 50%); asked "What is the special magic number' in tasks["single"]
    assert "answer budget 96 tokens" in tasks["chain:2"] and '"VAR ' in tasks["chain:2"]
    # recorded before chain's distractor chains and multikey's distractors around the target: today's
    # generator no longer makes those sentences, so their questions are not claimed
    assert "its question is not recorded" in tasks["chain:2"]
    assert "(distractor, " in tasks["multikey:4"] and "answer budget 32 tokens" in tasks["multikey:4"]
    assert "its question is not recorded" in tasks["multikey:4"]
    # nor is today's description of the tasks
    assert all("planted by an earlier niah: today's generator makes other sentences" in tasks[t]
               for t in ("chain:2", "multikey:4"))
    assert "distractors within" not in card and "distractor chain" not in card
    assert "**Needle (task `single`):**" in card
    assert "8,192 ≥ 8,000 + 96 (`chain:2`'s answer budget; not clamped)" in card
    explicit = render_card(run.cells, run.header, {**run.fingerprint, "answer_budget_explicit": True})
    assert "8,192 ≥ 8,000 + 32 (" in explicit and "answer budget 96" not in explicit
    assert "--answer-budget 32" in explicit and "--answer-budget" not in card


def test_a_question_is_shown_only_when_the_recorded_sentences_regenerate(tmp_path: Path) -> None:
    run = load_run(TASKS)
    cells = run.cells.copy()
    cells["planted"] = [[{**p, "text": p["text"] + " (edited)"} for p in planted] for planted in cells["planted"]]
    card = render_card(cells, run.header, run.fingerprint)
    assert "(edited)" in card and card.count("its question is not recorded") == 3


def test_card_states_the_corpus(tmp_path: Path) -> None:
    from niah.prompts import essays

    fingerprint = {**FINGERPRINT, "corpus_about": essays.ABOUT}
    run = load_run(write_run(tmp_path / "new", [cell(2048, 50.0, 0, "PASS")], fingerprint))
    card = render_card(run.cells, run.header, run.fingerprint)
    assert f"corpus `builtin`, {essays.ABOUT}, sha256" in card
    run = load_run(write_run(tmp_path / "old", [cell(2048, 50.0, 0, "PASS")]))  # recorded before corpus_about
    assert "generated English essays without digits" in render_card(run.cells, run.header, run.fingerprint)


def test_todays_tasks_are_described_as_they_plant(tmp_path: Path) -> None:
    """Cells whose sentences today's generator makes from the recorded seed get today's description
    of the task: multikey's distractors around the target, chain's distractor chain."""
    from niah.prompts.tasks import parse_task

    cells = []
    for task in ("multikey:4", "chain:2"):
        needle = parse_task(task).needle(3, 2048, 50.0, 0)
        planted = [{"text": p.text, "role": p.role, "depth": 50.0} for p in needle.plants]
        cells.append(cell(2048, 50.0, 0, "PASS", task=task, planted=tuple(planted)))
    run = load_run(write_run(tmp_path / "run", cells))
    card = render_card(run.cells, run.header, run.fingerprint)
    tasks = {line.split("`")[1]: line for line in card.splitlines() if line.startswith("  - `")}
    assert "the other 3 are distractors within 20% of the target's depth" in tasks["multikey:4"]
    assert "a distractor chain of as many hops" in tasks["chain:2"] and "PASS = all 3 names" in tasks["chain:2"]
    assert "earlier niah" not in card and "its question is not recorded" not in card
