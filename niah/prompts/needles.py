"""Needles: what is planted, what is asked, and how an answer is scored.

All prompt wording lives here: the default needle, its question, and the line that introduces
the haystack. Custom needle/question/answer triples come from a small TOML or JSON file.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from niah.errors import NiahError

DEFAULT_NEEDLE = "The special magic number is {value}."
DEFAULT_QUESTION = (
    "What is the special magic number mentioned in the text above? Answer with the number only."
)
DEFAULT_INTRO = (
    "A special magic number is hidden in the text below. Read the text carefully and remember "
    "the number; a question about it follows the text."
)
CUSTOM_INTRO = "Read the text below carefully; a question about it follows the text."
_STRIDE = 2654435761
"""Odd, not a multiple of 3 or 5: coprime with 9,000,000, so trials 0..8,999,999 get distinct values."""


@dataclass(frozen=True)
class Plant:
    """One sentence planted in the haystack."""

    text: str
    """The sentence, e.g. "The special magic number for amber-falcon is: 4827193."."""
    value: str = ""
    """The value it carries (a number, or a variable's name for a chain hop)."""
    role: str = "target"
    """`target` (at the cell's depth), `distractor`, `value`, `query`, `hop`, or `key` (another cell's
    needle in a shared haystack)."""
    depth: float | None = None
    """Nominal depth in percent; None = the cell's depth."""
    apart: bool = False
    """Kept off the target's position (and off the other `apart` plants' positions)."""
    cell: tuple[int, float] | None = None
    """The (length, depth) cell whose question asks for it, in a shared haystack (niah.prompts.shared_haystack)."""
    atom: int | None = None
    """The corpus atom it precedes: a fixed place in a shared haystack; None = placed by depth."""


@dataclass(frozen=True)
class Needle:
    """What one cell plants and asks: one fact by default, several for the harder tasks (niah.prompts.tasks)."""

    text: str
    """The sentence planted, e.g. "The special magic number is 4827193."."""
    value: str
    """What a correct answer contains, e.g. "4827193"."""
    question: str
    """The question asked after the haystack."""
    intro: str = DEFAULT_INTRO
    """The line before the haystack."""
    plants: tuple[Plant, ...] = ()
    """Every sentence planted, the target first; empty = `text` alone at the cell's depth."""
    answers: tuple[str, ...] = ()
    """What an all-of answer must contain, every one; empty = `value` alone (the exact scorer)."""
    haystack: str = ""
    """The shared haystack it is cut from (`shared:SEED:TRIAL:GRID`); empty = the corpus, up to the first plant."""

    @property
    def planted(self) -> tuple[Plant, ...]:
        """The sentences to plant, the target first."""
        return self.plants or (Plant(self.text, self.value),)

    @property
    def expected(self) -> tuple[str, ...]:
        """The values a correct answer contains."""
        return self.answers or (self.value,)


@dataclass(frozen=True)
class NeedleTemplate:
    """One custom triple; `{value}` in any part is replaced by a seeded 7-digit number."""

    text: str
    question: str
    answer: str


@dataclass(frozen=True)
class NeedleSpec:
    """Custom needles from a file; a cell uses one of them, chosen by its seed."""

    needles: tuple[NeedleTemplate, ...]
    intro: str
    source: str


def needle_value(seed: int, length: int, depth: float, trial: int) -> str:
    """A 7-digit value fixed by (seed, length, depth); each trial of a cell gets a different one."""
    digest = hashlib.sha256(f"niah-needle:{seed}:{length}:{float(depth)!r}".encode()).digest()
    base = int.from_bytes(digest[:8], "big")
    return str(1_000_000 + (base + trial * _STRIDE) % 9_000_000)


def make_needle(
    seed: int, length: int, depth: float, trial: int, spec: NeedleSpec | None = None
) -> Needle:
    """The needle for one cell: the classic magic number by default, else one of `spec`'s triples."""
    value = needle_value(seed, length, depth, trial)
    if spec is None:
        return Needle(DEFAULT_NEEDLE.format(value=value), value, DEFAULT_QUESTION)
    choice = spec.needles[int(value) % len(spec.needles)]

    def fill(part: str) -> str:
        return part.replace("{value}", value)

    return Needle(fill(choice.text), fill(choice.answer), fill(choice.question), spec.intro)


def load_needle_spec(path: str | Path) -> NeedleSpec:
    """Read custom needles from TOML or JSON: `[[needle]]` tables (or a JSON list) with text, question, answer."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NiahError(f"cannot read needle file {path}: {exc.__class__.__name__}") from None
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else tomllib.loads(raw)
    except (ValueError, tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nested without end
        raise NiahError(f"needle file {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None
    if isinstance(data, list):
        data = {"needle": data}
    entries = data.get("needle", data.get("needles")) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise NiahError(f"needle file {path} has no needles: add [[needle]] tables with text, question, answer")
    needles = []
    for index, entry in enumerate(entries, 1):
        parts = [entry.get(k) if isinstance(entry, dict) else None for k in ("text", "question", "answer")]
        if not all(isinstance(p, str) and p.strip() for p in parts):
            raise NiahError(f"needle {index} in {path} needs non-empty text, question and answer strings")
        text, question, answer = (" ".join(p.split()) for p in parts)  # type: ignore[union-attr]
        where = f"needle {index} in {path}"
        check_fact(where, text, answer)
        check_question(where, question.replace("{value}", SAMPLE_VALUE), [answer.replace("{value}", SAMPLE_VALUE)])
        needles.append(NeedleTemplate(text, question, answer))
    intro = data.get("intro", CUSTOM_INTRO) if isinstance(data, dict) else CUSTOM_INTRO
    if not isinstance(intro, str) or not intro.strip():
        raise NiahError(f"intro in {path} must be a non-empty string")
    return NeedleSpec(tuple(needles), " ".join(intro.split()), str(path))


SAMPLE_VALUE = "0000000"
"""Stands in for `{value}` when a custom file is checked."""


def check_fact(where: str, text: str, answer: str) -> None:
    """A custom planted fact is usable: its answer occurs in its text and carries `{value}`
    (a fixed answer would be the same fact in every cell)."""
    if answer.replace("{value}", SAMPLE_VALUE).lower() not in text.replace("{value}", SAMPLE_VALUE).lower():
        raise NiahError(f"{where}: the answer {answer!r} does not occur in its text")
    if "{value}" not in answer:
        raise NiahError(
            f"{where}: the answer {answer!r} is the same in every cell; put {{value}} in it (a seeded 7-digit number)"
        )


def check_question(where: str, question: str, answers: list[str]) -> None:
    """A custom question (its `{value}` slots filled) must not hold an answer a model could copy."""
    asked = " ".join(question.split()).lower()
    for answer in answers:
        if " ".join(answer.split()).lower() in asked:
            raise NiahError(f"{where}: the question holds the answer {answer!r}; ask without giving it away")


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def strip_thinking(answer: str) -> str:
    """The answer without its reasoning: `<think>...</think>` blocks, an unclosed `<think>` tail,
    and everything before a lone `</think>` (when the template opened the block) are dropped."""
    answer = _THINK_BLOCK.sub(" ", answer)
    lowered = answer.lower()
    if "</think>" in lowered:
        answer = answer[lowered.rindex("</think>") + len("</think>"):]
        lowered = answer.lower()
    if "<think>" in lowered:
        answer = answer[: lowered.index("<think>")]
    return answer


def score_needle(answer: str, needle: Needle) -> float:
    """The fraction of the needle's expected values the final answer contains (1.0 = PASS)."""
    expected = needle.expected
    return sum(score_answer(answer, value) for value in expected) / len(expected)


def stray_values(answer: str, needle: Needle) -> tuple[str, ...]:
    """Planted values the final answer holds that were not asked (a distractor's number, another
    chain's variable)."""
    expected = set(needle.expected)
    others = dict.fromkeys(p.value for p in needle.planted if p.value and p.value not in expected)
    return tuple(value for value in others if score_answer(answer, value))


def judge(answer: str, needle: Needle) -> tuple[str, float, str | None]:
    """(outcome, score, why) of an answer: PASS when it holds every expected value and no other
    planted one; WRONG_KEY when it holds a planted value that was not asked (a distractor's, another
    key's; listing several planted values is never a PASS); FAIL otherwise."""
    score = round(score_needle(answer, needle), 4)
    stray = stray_values(answer, needle)
    if stray:
        return "WRONG_KEY", score, f"the answer holds planted values that were not asked: {', '.join(stray)}"
    return ("PASS" if score == 1.0 else "FAIL"), score, None


def score_answer(answer: str, value: str) -> bool:
    """True when the final answer contains `value`.

    Digit values may be written with spaces, commas, dots or apostrophes between digits
    ("4,827,193", "4 8 2 7 1 9 3") but not inside a longer number. Other values match
    case-insensitively with whitespace collapsed.
    """
    answer = strip_thinking(answer)
    if value.isdigit():
        separator = r"[\s,.'\u2019_\u00a0\u202f-]?"
        pattern = r"(?<!\d)" + separator.join(re.escape(d) for d in value) + r"(?!\d)"
        return re.search(pattern, answer) is not None
    return " ".join(value.split()).lower() in " ".join(answer.split()).lower()
