"""Tasks beyond one needle: parsing, placement of every planted sentence, seeding per trial,
custom TOML tasks and the all-of scorer (on answers SmolLM2 gave through llama-server)."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from niah.cells import plan_cells
from niah.cli import main
from niah.errors import NiahError
from niah.prompts.haystack import Prompt, build, get_template
from niah.prompts.needles import Needle, judge, make_needle, score_needle
from niah.prompts.tasks import AROUND, load_task_file, parse_task, parse_tasks

DATA = Path(__file__).resolve().parent / "data"
TASKS = ("single", "multikey:4", "multivalue:3", "multiquery:3", "chain:2", "chain:4")


def check_placement(prompt: Prompt, tokenizer) -> list[int]:
    """Exact length; every planted sentence once, at its recorded token offset; its values only there.
    Returns the planted sentences' token offsets."""
    ids = tokenizer._enc.encode(prompt.text, allowed_special="all")
    assert len(ids) == prompt.length == prompt.prompt_tokens
    body_ids = ids[prompt.haystack_token_start:prompt.haystack_token_start + prompt.haystack_tokens]
    for piece in prompt.planted:
        assert prompt.text.count(piece.text) == 1
        assert tokenizer.decode(body_ids[piece.token_offset:piece.token_offset + piece.tokens]).strip() == piece.text
    for value in prompt.needle.expected:
        assert prompt.text.count(value) == sum(p.text.count(value) for p in prompt.planted)
    return [p.token_offset for p in prompt.planted]


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("length", (700, 4096, 32_768))
def test_every_piece_is_placed_exactly_once_at_its_offset(task_name, length, qwen, builtin) -> None:
    task, template = parse_task(task_name), get_template("builtin")
    for depth in (0.0, 37.5, 100.0):
        for trial in (0, 1):
            needle = task.needle(0, length, depth, trial)
            prompt = build(length, depth, qwen, builtin, needle, template)
            offsets = check_placement(prompt, qwen)
            target, *others = prompt.planted
            assert target.role == "target" and target.text == needle.text and target.depth == depth
            assert prompt.needle_token_offset == target.token_offset
            assert len(prompt.planted) == {"single": 1, "chain": 2 * (task.count + 1)}.get(task.kind, task.count)
            apart = [p for p in others if task.kind != "chain"]
            # distractors (and the other values/queries) never share the target's place, nor each other's
            assert len({target.token_offset, *(p.token_offset for p in apart)}) == 1 + len(apart)
            for piece in apart:
                assert not (piece.token_offset <= target.token_offset < piece.token_offset + piece.tokens + 1)
            if task.kind == "chain":  # each chain: its value first, each hop after the one it copies
                asked, decoy = prompt.planted[: task.count + 1], prompt.planted[task.count + 1:]
                assert target.text.endswith(f"= {needle.value}.") and needle.expected == tuple(p.value for p in asked)
                assert {p.role for p in decoy} == {"distractor"} and needle.value not in decoy[0].text
                for chain, chain_offsets in ((asked, offsets[: task.count + 1]), (decoy, offsets[task.count + 1:])):
                    assert chain_offsets == sorted(chain_offsets)
                    for before, hop in pairwise(chain):
                        assert hop.text == f"VAR {hop.value} = VAR {before.value}."


def test_depth_actual_is_measured_on_the_filler(qwen, builtin) -> None:
    """depth_actual of each piece = filler tokens before it / all filler tokens (other pieces excluded)."""
    needle = parse_task("multikey:4").needle(0, 8192, 50, 0)
    prompt = build(8192, 50, qwen, builtin, needle, get_template("builtin"))
    filler = prompt.haystack_tokens - sum(p.tokens for p in prompt.planted)
    for piece in prompt.planted:
        before = sum(p.tokens for p in prompt.planted if p.token_offset < piece.token_offset)
        assert piece.depth_actual == round(100 * (piece.token_offset - before) / filler, 4)
        assert abs(piece.depth_actual - piece.depth) < 2.5  # snapped to a sentence boundary below (or moved apart)


def test_trials_plant_different_values_and_positions_and_are_reproducible() -> None:
    task = parse_task("multikey:4")
    first, second = task.needle(0, 4096, 50, 0), task.needle(0, 4096, 50, 1)
    assert first == task.needle(0, 4096, 50.0, 0)
    assert {p.value for p in first.planted}.isdisjoint(p.value for p in second.planted)
    assert [p.depth for p in first.planted[1:]] != [p.depth for p in second.planted[1:]]
    assert first.question != second.question  # another key is asked
    # the single task's values stay those of earlier niah versions (runs resume across the upgrade)
    assert parse_task("single").needle(3, 4096, 25, 2) == make_needle(3, 4096, 25, 2)
    assert first.value == make_needle(0, 4096, 50, 0).value


def test_task_questions_and_answer_sets() -> None:
    multikey = parse_task("multikey:3").needle(1, 2048, 0, 0)
    asked = multikey.planted[0].text.split(" for ")[1].split(" is")[0]
    assert f"for {asked} mentioned" in multikey.question and multikey.expected == (multikey.value,)
    assert [p.role for p in multikey.planted] == ["target", "distractor", "distractor"]
    multiquery = parse_task("multiquery:3").needle(1, 2048, 0, 0)
    assert multiquery.expected == tuple(p.value for p in multiquery.planted)
    for piece in multiquery.planted:
        assert piece.text.split(" for ")[1].split(" is")[0] in multiquery.question
    multivalue = parse_task("multivalue:2").needle(1, 2048, 0, 0)
    assert len({p.text.split(" is")[0] for p in multivalue.planted}) == 1  # one key
    assert parse_task("chain:3").answers == 4 and parse_task("multikey:4").answers == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("pairs", "unknown task"),
        ("multikey", "use multikey:N"),
        ("multikey:x", "use multikey:N"),
        ("multikey:1", "N must be 2-64"),
        ("chain:0", "N must be 1-64"),
        ("chain:65", "N must be 1-64"),
        ("single:2", "single takes no count"),
        ("single,single", "named twice"),
        (",", "--task is empty"),
        ("missing.toml", "cannot read task file"),
    ],
)
def test_bad_task_names_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(NiahError, match=message):
        parse_tasks(text)


def test_plan_runs_each_task_in_needle_position_order() -> None:
    cells = plan_cells(((1024, (0.0, 100.0)), (2048, (50.0,))), 2, ("single", "chain:2"))
    assert [(c.length, c.task, c.trial, c.depth) for c in cells[:7]] == [
        (1024, "single", 0, 0.0), (1024, "single", 1, 0.0), (1024, "single", 0, 100.0), (1024, "single", 1, 100.0),
        (2048, "single", 0, 50.0), (2048, "single", 1, 50.0), (1024, "chain:2", 0, 0.0),
    ]
    assert len({c.key for c in cells}) == len(cells) == 12


GOOD_TASK = """
name = "pets"
question = "What are the names of Alice's cat and Bob's dog? Give both."
scorer = "all"
[[needle]]
text = "Alice's cat is called Tom{value}."
answer = "Tom{value}"
[[needle]]
text = "Bob's dog is called Rex{value}."
answer = "Rex{value}"
depth = 90
"""


def test_custom_task_from_toml(tmp_path: Path, qwen, builtin) -> None:
    path = tmp_path / "pets.toml"
    path.write_text(GOOD_TASK)
    task = parse_task(str(path))
    assert task.name == "pets" and task.answers == 2
    needle = task.needle(0, 3000, 20, 0)
    assert needle.expected == tuple(p.value for p in needle.planted) and needle.expected[0].startswith("Tom")
    prompt = build(3000, 20, qwen, builtin, needle, get_template("builtin"))
    check_placement(prompt, qwen)
    assert prompt.planted[1].depth == 90.0 and prompt.planted[1].role == "value"


@pytest.mark.parametrize(
    "edit, message",
    [
        (("scorer = \"all\"", "scorer = \"some\""), "scorer 'some' must be 'exact' or 'all'"),
        (("name = \"pets\"", "name = \"multikey\""), "not a built-in task"),
        (("name = \"pets\"", "name = \"my pets\""), "must be letters, digits"),
        (("question = ", "prompt = "), "unknown key 'prompt'"),
        (("answer = \"Rex{value}\"", "answer = \"Max{value}\""), "needle 2: the answer 'Max{value}' does not occur"),
        (("depth = 90", "depth = 190"), "needle 2: depth 190 must be a percent in 0-100"),
        (("answer = \"Tom{value}\"", "answer = \"Tom{value}\"\ndepth = 5"), "needle 1: the first needle is the target"),
        (("text = \"Bob's", "txt = \"Bob's"), "needle 2: unknown key 'txt'"),
        (("scorer = \"all\"", "scorer = \"all\"\nquestion2 = 1"), "unknown key 'question2'"),
        (("What are", "[[x]]\nWhat are"), "is not valid TOML"),
    ],
)
def test_custom_task_mistakes_are_named(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = tmp_path / "pets.toml"
    path.write_text(GOOD_TASK.replace(*edit, 1))
    with pytest.raises(NiahError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        load_task_file(path)


def test_custom_task_without_needles(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text('question = "What?"\n')
    with pytest.raises(NiahError, match="has no needles"):
        load_task_file(path)


def test_haystack_cli_json_lists_every_planted_piece(tmp_path: Path, qwen) -> None:
    out = tmp_path / "prompt.json"
    assert main(["haystack", "--length", "3000", "--depth", "40", "--task", "chain:2", "--json", "-o", str(out)]) == 0
    printed = json.loads(out.read_text(encoding="utf-8"))
    assert len(qwen._enc.encode(printed["text"], allowed_special="all")) == 3000
    assert [p["role"] for p in printed["planted"]] == ["target", "hop", "hop"] + ["distractor"] * 3
    assert printed["expected"] == [p["value"] for p in printed["planted"][:3]]
    for piece in printed["planted"]:
        assert {"text", "value", "token_offset", "depth", "depth_actual", "tokens"} <= piece.keys()
    assert printed["needle"]["token_offset"] == printed["planted"][0]["token_offset"]


def load_answers() -> list[dict[str, object]]:
    return [json.loads(line) for line in (DATA / "smollm2_task_answers.jsonl").read_text().splitlines() if line]


@pytest.mark.parametrize("record", load_answers(), ids=lambda r: f"{r['task']}-{r['expected_score']}")
def test_scorers_on_answers_smollm2_gave(record: dict[str, object]) -> None:
    """Answers SmolLM2-135M gave through llama-server (copied from real runs' results.jsonl)."""
    expected = tuple(str(record["needle_value"]).split(","))
    needle = Needle("", expected[0], "", answers=expected if len(expected) > 1 else ())
    assert round(score_needle(str(record["answer"]), needle), 4) == record["expected_score"]


def test_multikey_distractors_sit_around_the_target_with_unrelated_keys() -> None:
    task, sides = parse_task("multikey:4"), set()
    for depth in (0.0, 10.0, 50.0, 90.0, 100.0):
        for trial in range(40):
            needle = task.needle(0, 8192, depth, trial)
            asked = set(needle.planted[0].text.split(" for ")[1].split(" is")[0].split("-"))
            for piece in needle.planted[1:]:
                key = set(piece.text.split(" for ")[1].split(" is")[0].split("-"))
                assert asked.isdisjoint(key), (asked, key)
                assert piece.depth is not None and 0.0 <= piece.depth <= 100.0
                assert abs(piece.depth - depth) <= AROUND + 1e-9
                sides.add((depth, piece.depth < depth))
            if 0.0 < depth < 100.0:  # three distractors: some before the target and some after
                assert {p.depth < depth for p in needle.planted[1:]} == {True, False}  # type: ignore[operator]
    assert (0.0, True) not in sides and (100.0, False) not in sides


def test_multikey_records_each_distractor_depth_in_the_prompt(qwen, builtin) -> None:
    needle = parse_task("multikey:4").needle(0, 8192, 50, 0)
    prompt = build(8192, 50, qwen, builtin, needle, get_template("builtin"))
    target, *others = prompt.planted
    assert [p.depth for p in others] == [p.depth for p in needle.planted[1:]]
    assert {p.token_offset < target.token_offset for p in others} == {True, False}


def test_listing_every_planted_value_or_variable_is_no_pass() -> None:
    multikey = parse_task("multikey:4").needle(0, 4096, 50, 0)
    assert judge(multikey.value, multikey)[0] == "PASS"
    assert judge(", ".join(p.value for p in multikey.planted), multikey)[0] == "WRONG_KEY"
    assert judge(multikey.planted[2].value, multikey)[0] == "WRONG_KEY"
    chain = parse_task("chain:2").needle(0, 4096, 50, 0)
    assert judge(", ".join(chain.expected), chain)[0] == "PASS"
    everything = ", ".join(p.text.split()[1] for p in chain.planted)  # every VAR name in the text
    assert len(set(everything.split(", "))) == 6 and judge(everything, chain)[0] == "WRONG_KEY"


@pytest.mark.parametrize(
    "edit, message",
    [
        (("answer = \"Rex{value}\"", "answer = \"Rex\""), "needle 2: the answer 'Rex' is the same in every cell"),
        (("text = \"Alice's cat is called Tom{value}.\"\nanswer = \"Tom{value}\"",
          "text = \"Alice's cat is called Tom.\"\nanswer = \"Tom\""), "is the same in every cell"),
        (("Give both.", "Is it Tom{value1}?"), "the question holds the answer 'Tom9000000'"),
    ],
)
def test_custom_tasks_that_can_be_gamed_are_refused(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = tmp_path / "pets.toml"
    path.write_text(GOOD_TASK.replace(*edit, 1))
    with pytest.raises(NiahError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_task_file(path)
    result = subprocess.run([sys.executable, "-m", "niah", "haystack", "--length", "2k", "--depth", "50",
                             "--task", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_a_cell_answering_a_distractor_is_wrong_key_not_pass_nor_truncated(finish: str, qwen, builtin) -> None:
    from niah.launch.client import ChatResult
    from niah.run.cell_pipeline import decide_outcome

    needle = parse_task("multikey:3").needle(0, 2048, 50, 0)
    prompt = build(2048, 50, qwen, builtin, needle, get_template("builtin"))

    def chat(answer: str) -> ChatResult:
        return ChatResult("ok", answer, "", finish, 10, 0, 2048, 1.0, 5, 1.0, None, None, 200, None, 0.1)

    for answer in (needle.planted[1].value, f"{needle.value} or {needle.planted[2].value}"):
        outcome, why, _ = decide_outcome(chat(answer), prompt, None)  # type: ignore[arg-type]
        assert outcome == "WRONG_KEY" and why is not None and "not asked" in why
    assert decide_outcome(chat(needle.value), prompt, None)[0] == "PASS"  # type: ignore[arg-type]
