"""`--haystack shared` and `--confirm`: one haystack per trial with a keyed needle for every cell, cut
at each length; each prompt exactly L tokens and the previous one's extension; on real llama-servers
(SmolLM2 full attention, the qwen35 hybrid test bed, Gemma 3's sliding window) the cache computes
each stretch once, and the screen's non-PASS cells are confirmed one needle per prompt."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from niah.cells import SHARED_SUFFIX, Cell, plan_cells
from niah.cli import main
from niah.prompts.corpus import Corpus, get_corpus
from niah.prompts.haystack import build, get_template
from niah.prompts.needles import Needle, judge
from niah.prompts.shared_haystack import (
    MAX_CELLS,
    SharedHaystack,
    layout,
    place,
    shared_keys,
    shared_task,
)
from niah.prompts.tasks import SINGLE
from niah.prompts.templates import count_prompt
from niah.prompts.tokenizers import Tokenizer
from niah.publish.report import render_report
from niah.publish.results import CellResult, ResultsFile, fingerprint_differences
from niah.publish.stats import ANSWERED_OUTCOMES
from niah.publish.verdict import TrialPolicy
from niah.run.confirm import Confirmations
from niah.run.progress import expected_prefill
from niah.run.runner import RunConfig, all_clear, exit_code, run, run_fingerprint

DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)
SHARED_TASK = SINGLE + SHARED_SUFFIX


def shared_prompts(lengths: tuple[int, ...], depths: tuple[float, ...], tok: Tokenizer, corpus: Corpus, trial: int = 0):
    haystack = SharedHaystack.of_grid(tuple((n, depths) for n in lengths))
    template = get_template("builtin")
    return {
        (n, d): build(n, d, tok, corpus, place(haystack.needle(0, n, d, trial), n, tok, corpus, template), template)
        for n in lengths for d in depths
    }


def common_tokens(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_each_prompt_is_exact_holds_every_shorter_needle_and_extends_the_one_before(qwen: Tokenizer, builtin: Corpus) -> None:
    prompts = shared_prompts((1024, 2048, 4096), DEPTHS, qwen, builtin)
    longest = prompts[(4096, 100.0)]
    values = [p.value for p in longest.planted]
    assert len(values) == len(set(values)) == 15  # every cell its own value, all in the longest prompt
    keys = {p.text.split(" for ")[1].split(" is")[0] for p in longest.planted}
    assert len(keys) == 15
    for (length, depth), prompt in prompts.items():
        assert count_prompt(qwen, prompt.text) == length == prompt.prompt_tokens
        target = prompt.planted[0]
        assert target.role == "target" and target.value == prompt.needle.value and target.text in prompt.text
        assert abs(prompt.depth_actual - depth) < 6, (length, depth, prompt.depth_actual)
        assert prompt.needle.question.count(target.text.split(" for ")[1].split(" is")[0]) == 1
        shorter = [p for (n, _), p in prompts.items() if n < length]
        assert all(p.planted[0].text in prompt.text for p in shorter)  # every shorter cell's needle
    ordered = sorted(prompts)
    ids = {key: qwen.encode(p.text) for key, p in prompts.items()}
    for previous, cell in pairwise(ordered):  # the sending order: each extends the one before
        shared = common_tokens(ids[previous], ids[cell])
        assert shared >= min(prompts[previous].reuse_end, prompts[cell].reuse_end)  # type: ignore[type-var]
        assert prompts[previous].reuse_end > 0.9 * previous[0]  # type: ignore[operator]


def test_coinciding_positions_still_get_their_own_needle(qwen: Tokenizer, builtin: Corpus) -> None:
    """2,048 at 100% and 4,096 at 50% name the same place: both are planted, apart, each asked once."""
    prompts = shared_prompts((2048, 4096), (50.0, 100.0), qwen, builtin)
    end_of_short, middle_of_long = prompts[(2048, 100.0)].planted[0], prompts[(4096, 50.0)].planted[0]
    assert end_of_short.value != middle_of_long.value
    planted = {p.value: p for p in prompts[(4096, 50.0)].planted}
    assert end_of_short.value in planted and planted[end_of_short.value].token_offset != middle_of_long.token_offset
    # another cell's number in the answer is WRONG_KEY, the asked one alone PASS
    needle = prompts[(4096, 50.0)].needle
    assert judge(f"It is {end_of_short.value}.", needle)[0] == "WRONG_KEY"
    assert judge(f"It is {middle_of_long.value}.", needle)[0] == "PASS"


def test_a_layout_is_cached_per_grid(qwen: Tokenizer, builtin: Corpus) -> None:
    """The same seed and trial over another grid is another haystack: its needles sit where its own
    layout puts them, whatever grid was placed before."""
    template = get_template("builtin")

    def needle(lengths: tuple[int, ...], depths: tuple[float, ...]) -> Needle:
        return SharedHaystack.of_grid(tuple((n, depths) for n in lengths)).needle(0, 4096, 50.0, 0)

    place(needle((1024, 2048, 4096), DEPTHS), 4096, qwen, builtin, template)
    small = needle((2048, 4096), (50.0, 100.0))
    own = layout(small.plants, qwen, builtin, template).atoms
    placed = place(small, 4096, qwen, builtin, template).plants
    assert {p.cell: p.atom for p in placed if p.atom is not None} == {c: a for c, a in own.items() if c != (4096, 100.0)}


def test_keys_share_no_word_up_to_the_supply_and_a_bigger_grid_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for trial in range(3):
        words = [w for key in shared_keys(0, trial, MAX_CELLS) for w in key.split("-")]
        assert len(words) == len(set(words)) == 2 * MAX_CELLS
    assert shared_keys(0, 0, 25) == shared_keys(0, 0, MAX_CELLS)[:25]  # a grid's keys do not depend on its size
    depths = ",".join(str(d) for d in range(0, 101, 10))  # 11 depths × 11 lengths: 121 cells
    lengths = ",".join(str(1024 * n) for n in range(1, 12))
    code = main(["run", "--url", "http://127.0.0.1:9", "--lengths", lengths, "--depths", depths, "--haystack", "shared",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"at most {MAX_CELLS} cells" in err and "the grid has 121" in err
    assert not (tmp_path / "results.jsonl").exists()


def test_the_fingerprint_holds_the_screens_grid_trials_and_keys(tmp_path: Path) -> None:
    corpus = get_corpus("builtin")
    three = run_fingerprint(shared_config(tmp_path, (1024, 2048), (0.0, 50.0, 100.0)), corpus, {})
    assert three["shared"]["grid"] == {"1024": [0.0, 50.0, 100.0], "2048": [0.0, 50.0, 100.0]}
    assert three["shared"]["trials"] == 1
    five = run_fingerprint(shared_config(tmp_path, (1024, 2048), DEPTHS), corpus, {})
    more = run_fingerprint(shared_config(tmp_path, (1024, 2048), (0.0, 50.0, 100.0), trials=2), corpus, {})
    assert fingerprint_differences(three, five) == ["shared.grid.1024", "shared.grid.2048", "shared.keys_sha256"]
    assert fingerprint_differences(three, more) == ["shared.keys_sha256", "shared.trials"]
    assert "shared" not in run_fingerprint(RunConfig(grid=((1024, (0.0,)),), out_dir=tmp_path), corpus, {})


def test_a_shared_haystack_is_sent_by_trial_and_length_and_costs_one_prefill_on_paper() -> None:
    seed_grid = tuple((n, DEPTHS) for n in (131072, 262144, 393216, 524288, 1010000))
    cells = plan_cells(seed_grid, 2, (SHARED_TASK,))
    assert [(c.trial, c.length, c.depth) for c in cells] == sorted((c.trial, c.length, c.depth) for c in cells)
    one = plan_cells(seed_grid, 1, (SHARED_TASK,))
    computed, naive = sum(expected_prefill(one)), sum(c.length for c in one)
    assert computed / naive <= 0.10
    assert computed / naive > 1_010_000 / naive  # the longest length is computed once, and each question


def test_confirmations_follow_the_screen_cells_that_did_not_pass() -> None:
    screen = [Cell(n, d, 0, SHARED_TASK) for n in (1024, 2048) for d in (0.0, 100.0)]
    recorded = {screen[0].key: "PASS", screen[1].key: "FAIL", screen[2].key: "WRONG_KEY", screen[3].key: None}
    fails = Confirmations(screen, "fails", recorded.get)
    assert [(c.task, c.length, c.depth) for c in fails.next()] == [(SINGLE, 1024, 100.0), (SINGLE, 2048, 0.0)]
    assert fails.next() == []  # each once
    recorded[screen[3].key] = "PASS"
    every = Confirmations(screen, "all", recorded.get)
    assert [(c.length, c.depth) for c in every.next()] == [(1024, 100.0), (2048, 0.0), (2048, 100.0)]


def test_confirmations_stand_beside_the_screen_and_never_void_its_verdict(tmp_path: Path) -> None:
    """A `--trials auto --confirm` screen whose lengths clear its threshold (0.3), one cell confirmed FAIL:
    summary.json's verdicts and effective length are the screen's, the confirmation stands beside its
    cell, and the exit code follows the screen's verdicts (README: 1 only for a length that does not clear)."""
    policy = TrialPolicy(auto=True, pass_rate=0.3, clusters="haystack")
    results = ResultsFile(tmp_path / "results.jsonl", {"needle_seed": 0, "haystack": "shared", "trials": policy.record()})
    for trial in range(policy.max_trials):
        for length in (1024, 2048):
            for depth in DEPTHS:
                outcome = "FAIL" if (length, depth, trial) == (2048, 50.0, 0) else "PASS"
                results.append(CellResult(length, depth, trial, outcome, task=SHARED_TASK))
    results.append(CellResult(2048, 50.0, 0, "FAIL", task=SINGLE))
    summary = render_report(tmp_path / "results.jsonl", tmp_path).summary
    assert list(summary["tasks"]) == [SHARED_TASK] and summary["effective_length"] == 2048
    assert summary["confirmations"] == {"agree": 1, "cells": [
        {"task": SHARED_TASK, "length": 2048, "depth": 50.0, "trial": 0, "screen": "FAIL", "confirmation": "FAIL"}]}
    assert all_clear(summary) and exit_code(Counter(PASS=199, FAIL=1), all_clear(summary)) == 0
    card = (tmp_path / "card.md").read_text()
    assert "| 2,048 | 50% | 0 | FAIL | FAIL |" in card and "does not clear" not in card
    assert card.index(f"Task `{SHARED_TASK}`:") < card.index("Task `single`: the screen's confirmations")
    assert "**Effective length 2,048" in card


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--haystack", "shared", "--task", "multikey:4"], "--haystack shared plants its own keyed needles"),
        (["--confirm"], "--confirm reruns a shared-haystack screen's cells"),
        (["--haystack", "shared", "--confirm", "some"], "invalid choice: 'some'"),
    ],
)
def test_bad_shared_options_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    try:
        code = main(["run", "--url", "http://127.0.0.1:9", "--lengths", "1024", "--out", str(tmp_path), *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "results.jsonl").exists()


def cells(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("record") == "cell"]


def shared_config(out: Path, lengths: tuple[int, ...], depths: tuple[float, ...], **config: object) -> RunConfig:
    grid = tuple((n, depths) for n in lengths)
    return RunConfig(grid=grid, out_dir=out, tasks=(shared_task(grid),), show_progress=False, **config)  # type: ignore[arg-type]


def reuse_held(records: list[dict]) -> None:
    """Every screen cell took from the cache what the previous one left (its primer's on a hybrid)."""
    for r in records:
        reused = r["prime_cache_n"] if r.get("prime_n") else r["cache_n"]
        assert reused >= r["cache_expected"] - 8, r


@pytest.mark.server
def test_full_attention_screen_with_every_longest_cell_confirmed(llama_server, tmp_path: Path) -> None:
    """SmolLM2: the screen computes about the longest prompt once; `--confirm all` reruns the longest
    length's cells (and any non-PASS) one needle per prompt; a rerun sends nothing."""
    config = shared_config(tmp_path, (1024, 2048), (0.0, 50.0, 100.0), url=llama_server.url, confirm="all")
    summary = run(config)
    records = cells(summary.results_path)
    screen = [r for r in records if r["task"] == SHARED_TASK]
    assert [(r["length"], r["depth"]) for r in screen] == [(n, d) for n in (1024, 2048) for d in (0.0, 50.0, 100.0)]
    assert all(r["prompt_tokens_served"] == r["length"] for r in screen)
    assert [len(r["planted"]) for r in screen] == [4, 4, 4, 6, 6, 6]  # this length's 3 and the longer ones before it
    reuse_held(screen[1:])
    computed = sum(r["prompt_n"] for r in screen)
    assert computed < 0.4 * sum(r["length"] for r in screen)
    confirmed = {(r["length"], r["depth"]) for r in records if r["task"] == SINGLE}
    failed = {(r["length"], r["depth"]) for r in screen if r["outcome"] != "PASS"}
    assert confirmed == {(2048, d) for d in (0.0, 50.0, 100.0)} | failed
    assert all(len(r["planted"]) == 1 for r in records if r["task"] == SINGLE)  # one needle per prompt
    grid = (tmp_path / "grid.md").read_text()
    assert f"task {SHARED_TASK}" in grid and "task single\n" in grid
    card = (tmp_path / "card.md").read_text()
    assert "--haystack shared --confirm all" in card and "holding 4–6 keyed numbers" in card
    assert "| length | depth | trial | screen | one needle |" in card  # side by side, cell by cell
    assert "agrees with the confirmation in" in card and f"of {len(confirmed)} cells" in card
    assert json.loads((tmp_path / "summary.json").read_text())["fingerprint"]["haystack"] == "shared"
    again = run(config)  # resume: every screen cell and confirmation is recorded
    assert len(cells(again.results_path)) == len(records)


@pytest.mark.server
def test_hybrid_screen_primes_each_cut_and_confirms_its_fails(qwen35_server, tmp_path: Path) -> None:
    """The qwen35 test bed (random weights: it never passes): each length's primer restores the
    checkpoint the shorter length's primer left, so the screen computes about 0.15 of the naive
    prefill (≤ 0.25); the same folder rerun with `--confirm` then confirms every cell one needle per
    prompt (the screen is not sent again)."""
    config = shared_config(tmp_path, (1024, 2048, 4000), DEPTHS, url=qwen35_server.url, confirm="fails")
    run(replace(config, confirm=None))
    assert {r["task"] for r in cells(tmp_path / "results.jsonl")} == {SHARED_TASK}
    run(config)
    records = cells(tmp_path / "results.jsonl")
    screen = [r for r in records if r["task"] == SHARED_TASK]
    assert len(screen) == 15 and all(r["prime_n"] for r in screen)
    reuse_held(screen[1:])
    computed = sum(r["prompt_n"] + r["prime_n"] for r in screen)
    assert computed <= 0.25 * sum(r["length"] for r in screen)
    assert {(r["length"], r["depth"]) for r in records if r["task"] == SINGLE} == {
        (r["length"], r["depth"]) for r in screen if r["outcome"] != "PASS"
    }
    assert "--haystack shared --confirm \\" in (tmp_path / "card.md").read_text()


@pytest.mark.server
def test_sliding_window_screen_reuses_with_swa_full(gemma3: Path, tmp_path: Path) -> None:
    profile = tmp_path / "gemma.toml"
    profile.write_text("context = 2048\n")  # niah's profiles launch sliding-window models with --swa-full
    config = shared_config(tmp_path / "run", (1024, 2048), (0.0, 100.0), model=gemma3, profiles=((1024, str(profile)), (2048, str(profile))))
    run(config)
    screen = cells(tmp_path / "run" / "results.jsonl")
    assert [r["prompt_tokens_served"] for r in screen] == [1024, 1024, 2048, 2048]
    reuse_held(screen[1:])


@pytest.mark.server
def test_auto_trials_on_a_shared_haystack_count_haystacks(llama_server, tmp_path: Path) -> None:
    """--trials auto: each round is a new haystack for every length; the bounds count haystacks."""
    policy = TrialPolicy(auto=True, max_trials=2, clusters="haystack")
    run(shared_config(tmp_path, (1024, 2048), (0.0, 100.0), url=llama_server.url, policy=policy))
    records = cells(tmp_path / "results.jsonl")
    assert sorted({r["trial"] for r in records}) == [0, 1]  # rounds went on past the first haystack
    first, second = ({r["needle_value"] for r in records if r["trial"] == t} for t in (0, 1))
    assert not first & second
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fingerprint"]["trials"]["clusters"] == "haystack"
    assert "each haystack's pass fraction at the length one observation" in (tmp_path / "card.md").read_text()


@pytest.mark.server
def test_a_resume_that_changes_the_screen_is_refused_in_one_line(
    llama_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another depth or another trial count is another screen (other keys, other needles beside each
    cell): refused before anything is sent, the results file untouched; the same screen resumes."""
    argv = ["run", "--url", llama_server.url, "--lengths", "1024", "--haystack", "shared", "--no-progress",
            "--out", str(tmp_path)]
    assert main([*argv, "--depths", "0,100"]) in (0, 1)
    recorded = (tmp_path / "results.jsonl").read_bytes()
    for changed, named in ((["--depths", "0,50,100"], "shared.grid.1024"), (["--depths", "0,100", "--trials", "2"], "shared.trials")):
        capsys.readouterr()
        assert main([*argv, *changed]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "belongs to a different run" in err and named in err, err
    assert (tmp_path / "results.jsonl").read_bytes() == recorded
    assert main([*argv, "--depths", "0,100"]) in (0, 1)
    assert (tmp_path / "results.jsonl").read_bytes() == recorded  # resumed: every cell was recorded


@pytest.mark.server
def test_auto_trials_with_confirmations_exit_by_the_screens_verdicts(llama_server, tmp_path: Path) -> None:
    """`--trials auto --confirm` on SmolLM2 against a low threshold: the screen's lengths decide the
    exit code (0 when all clear), whatever its confirmations, which stand beside the screen."""
    argv = ["run", "--url", llama_server.url, "--lengths", "1024", "--depths", "0,100", "--haystack", "shared",
            "--trials", "auto", "--max-trials", "4", "--pass-rate", "0.1", "--confirm", "--no-progress",
            "--out", str(tmp_path)]
    code = main(argv)
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = cells(tmp_path / "results.jsonl")
    screen = {(r["length"], r["depth"], r["trial"]): r["outcome"] for r in records if r["task"] == SHARED_TASK}
    confirmed = {(r["length"], r["depth"], r["trial"]): r["outcome"] for r in records if r["task"] == SINGLE}
    assert set(confirmed) == {c for c, o in screen.items() if o in ANSWERED_OUTCOMES and o != "PASS"}
    assert list(summary["tasks"]) == [SHARED_TASK] and len(summary.get("confirmations", {}).get("cells", [])) == len(confirmed)
    decisions = {v["decision"] for v in summary["tasks"][SHARED_TASK]["verdict"]["lengths"]}
    standing = {confirmed.get(c, o) for c, o in screen.items()}  # a confirmation counts in its cell's place
    assert code == (4 if standing - {"PASS", "FAIL", "WRONG_KEY"} else 0 if decisions == {"clears"} else 1), (code, decisions)
    assert summary["effective_length"] == summary["tasks"][SHARED_TASK]["verdict"]["effective_length"]
