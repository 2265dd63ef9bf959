"""Needles: seeded values, custom needle files, and answer scoring."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from niah.errors import NiahError
from niah.prompts.needles import (
    DEFAULT_QUESTION,
    Needle,
    Plant,
    judge,
    load_needle_spec,
    make_needle,
    score_answer,
)


def test_default_needle_is_the_classic_magic_number():
    needle = make_needle(0, 131_072, 50, 0)
    assert needle.text == f"The special magic number is {needle.value}."
    assert len(needle.value) == 7 and needle.value.isdigit() and needle.value[0] != "0"
    assert needle.question == DEFAULT_QUESTION and "magic number" in needle.intro


def test_values_are_seeded_per_cell_and_distinct_per_trial():
    assert make_needle(3, 4096, 25, 0) == make_needle(3, 4096, 25.0, 0)
    assert make_needle(3, 4096, 25, 0).value != make_needle(4, 4096, 25, 0).value
    assert make_needle(3, 4096, 25, 0).value != make_needle(3, 4096, 50, 0).value
    values = {make_needle(3, 4096, 25, trial).value for trial in range(2000)}
    assert len(values) == 2000


def test_custom_needles_from_toml_and_json(tmp_path):
    toml = tmp_path / "needles.toml"
    toml.write_text(
        'intro = "Read this."\n'
        '[[needle]]\ntext = "The best thing to do in San Francisco is eating sandwich {value}."\n'
        'question = "What is the best thing to do in San Francisco?"\nanswer = "sandwich {value}"\n'
        '[[needle]]\ntext = "The vault code is {value}."\nquestion = "What is the vault code?"\n'
        'answer = "{value}"\n'
    )
    spec = load_needle_spec(toml)
    assert spec.intro == "Read this." and len(spec.needles) == 2
    seen = {make_needle(0, 1000, depth, 0, spec).question for depth in range(0, 101, 5)}
    assert seen == {"What is the best thing to do in San Francisco?", "What is the vault code?"}
    for depth in range(0, 101, 5):
        needle = make_needle(0, 1000, depth, 0, spec)
        assert needle.value in needle.text and "{value}" not in needle.text + needle.value
    data = [{"text": "Pip the cat sleeps in barn {value}.", "question": "Where does Pip sleep?",
             "answer": "barn {value}"}]
    (tmp_path / "n.json").write_text(json.dumps(data))
    needle = make_needle(1, 2000, 0, 0, load_needle_spec(tmp_path / "n.json"))
    assert needle.value.startswith("barn ") and needle.value in needle.text and needle.intro.startswith("Read the text")


@pytest.mark.parametrize("content, suffix, message", [
    ("not = [valid", ".toml", "not valid"),
    ("{}", ".json", "has no needles"),
    ('[{"text": "A is B.", "question": "What is A?"}]', ".json", "needs non-empty"),
    ('[{"text": "A is B.", "question": "What is A?", "answer": "C"}]', ".json", "does not occur"),
])
def test_bad_needle_files(tmp_path, content, suffix, message):
    path = tmp_path / f"needles{suffix}"
    path.write_text(content)
    with pytest.raises(NiahError, match=message):
        load_needle_spec(path)
    with pytest.raises(NiahError, match="cannot read"):
        load_needle_spec(tmp_path / "missing.toml")


@pytest.mark.parametrize("answer, expected", [
    ("4827193", True),
    ("The special magic number is 4827193.", True),
    ("4,827,193", True),
    ("4 8 2 7 1 9 3", True),
    ("1. 4827193", True),
    ("48271934", False),
    ("14827193", False),
    ("482719", False),
    ("<think>It is 4827193, I think.</think>I do not know.", False),
    ("<think>maybe 1234567</think> 4827193", True),
    ("Reasoning about 4827193 first</think>No idea.", False),
    ("Sure. <think>The number is 4827193", False),
])
def test_score_answer(answer, expected):
    assert score_answer(answer, "4827193") is expected


def test_score_text_answers_case_and_space_insensitive():
    assert score_answer("They say: Eating  a\nsandwich!", "eating a sandwich")
    assert not score_answer("<think>eating a sandwich</think>a walk", "eating a sandwich")


@pytest.mark.parametrize("entry, message", [
    ({"text": "Pip sleeps in the red barn.", "question": "Where does Pip sleep?", "answer": "the red barn"},
     "is the same in every cell"),
    ({"text": "The vault code is {value}.", "question": "Is the vault code {value}?", "answer": "{value}"},
     "the question holds the answer"),
    ({"text": "Pip sleeps in barn {value}.", "question": "Does Pip sleep in BARN  {value}?", "answer": "barn {value}"},
     "the question holds the answer"),
])
def test_needle_files_that_can_be_gamed_are_refused(tmp_path, entry, message):
    path = tmp_path / "needles.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(NiahError, match=message):
        load_needle_spec(path)
    result = subprocess.run([sys.executable, "-m", "niah", "haystack", "--length", "2k", "--depth", "50",
                             "--needle", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_an_answer_holding_a_planted_value_not_asked_is_wrong_key_never_pass():
    target = Plant("The special magic number for amber-falcon is: 4827193.", "4827193")
    decoy = Plant("The special magic number for brisk-otter is: 5551234.", "5551234", "distractor", 30.0, True)
    needle = Needle(target.text, "4827193", "?", plants=(target, decoy))
    assert judge("4827193", needle) == ("PASS", 1.0, None)
    assert judge("5551234", needle)[:2] == ("WRONG_KEY", 0.0)
    outcome, score, why = judge("4827193, 5551234", needle)  # listing every planted number
    assert (outcome, score) == ("WRONG_KEY", 1.0) and why is not None and "5551234" in why
    assert judge("5 551 234", needle)[0] == "WRONG_KEY"  # written with separators
    assert judge("45551234", needle) == ("FAIL", 0.0, None)  # inside a longer number it is no value
    assert judge("I do not know.", needle) == ("FAIL", 0.0, None)
