"""Tasks: what a cell plants and asks, beyond one needle.

`single` (the classic magic number), `multikey:K` (K keyed numbers, one asked, the rest
distractors around it sharing no word with its key), `multivalue:V` (one key, V numbers, all
asked), `multiquery:Q` (Q keyed numbers, all asked), `chain:H` (variable tracking: a value and H
hops of `VAR B = VAR A`, all names asked, beside a distractor chain from another value), or a
custom task from a TOML file. Every value, key and distractor depth is seeded by
(seed, task, length, depth, trial), so each trial plants different ones and a rerun the same.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from niah.errors import NiahError
from niah.prompts.needles import (
    Needle,
    NeedleSpec,
    Plant,
    check_fact,
    check_question,
    make_needle,
    needle_value,
)

SINGLE = "single"
KINDS = ("single", "multikey", "multivalue", "multiquery", "chain")
MAX_COUNT = 64
KEY_WORDS = (
    "amber", "brisk", "cobalt", "dusty", "ember", "frosty", "gilded", "hollow", "ivory", "jagged",
    "kindly", "lunar", "mellow", "nimble", "olive", "proud", "quiet", "rustic", "silver", "tawny",
    "umber", "velvet", "windy", "young", "zesty", "crimson", "golden", "humble", "misty", "scarlet",
)
KEY_NOUNS = (
    "falcon", "harbor", "lantern", "meadow", "otter", "pebble", "quarry", "raven", "saddle", "thicket",
    "walnut", "badger", "canyon", "dagger", "ferret", "glacier", "heron", "island", "juniper", "kettle",
    "locket", "marble", "nectar", "orchard", "parrot", "ribbon", "spindle", "tunnel", "violet", "willow",
)
MULTI_INTRO = (
    "Special magic numbers are hidden in the text below. Read the text carefully and remember them; "
    "a question about them follows the text."
)
CHAIN_INTRO = (
    "Variable assignments are hidden in the text below. Read the text carefully and track them; "
    "a question about them follows the text."
)
KEYED_NEEDLE = "The special magic number for {key} is: {value}."
AROUND = 20.0
"""multikey's distractors sit within this many percent of the target's depth, before and after it."""
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class CustomNeedle:
    """One sentence of a custom task; `{value}` is replaced by its own seeded 7-digit number."""

    text: str
    answer: str
    depth: float | None
    """Percent; None = `target` for the first needle, a seeded position for the others."""


@dataclass(frozen=True)
class CustomTask:
    """A task read from a TOML file."""

    name: str
    needles: tuple[CustomNeedle, ...]
    question: str
    """May name `{value1}`, `{value2}`, ... (the needles' values, in file order)."""
    intro: str
    scorer: str
    """`exact` (the first needle's answer) or `all` (every needle's answer)."""
    source: str


class NeedleSource(Protocol):
    """What makes a cell's needle when a task does not (a shared haystack), and what identifies it."""

    def needle(self, seed: int, length: int, depth: float, trial: int) -> Needle: ...

    def identity(self, seed: int, trials: int) -> dict[str, object]: ...


@dataclass(frozen=True)
class Task:
    """A parsed `--task`: its name as recorded (`multikey:4`), its kind and count, or a custom file."""

    name: str
    kind: str
    count: int = 1
    custom: CustomTask | None = None
    shared: NeedleSource | None = None
    """`--haystack shared`: every cell's question over one haystack per trial (name `single@shared`,
    niah.prompts.shared_haystack.SharedHaystack)."""

    @property
    def answers(self) -> int:
        """How many values a correct answer contains."""
        if self.custom is not None:
            return len(self.custom.needles) if self.custom.scorer == "all" else 1
        return {"multivalue": self.count, "multiquery": self.count, "chain": self.count + 1}.get(self.kind, 1)

    def needle(self, seed: int, length: int, depth: float, trial: int, spec: NeedleSpec | None = None) -> Needle:
        """What the cell (length, depth, trial) of this task plants and asks."""
        if self.shared is not None:
            return self.shared.needle(seed, length, depth, trial)
        if self.kind == SINGLE:
            return make_needle(seed, length, depth, trial, spec)
        rng = random.Random(_digest(f"niah-task:{seed}:{self.name}:{length}:{float(depth)!r}:{trial}"))
        values = _values(seed, length, depth, trial, self.name, len(self.custom.needles) if self.custom else self.count + 1)
        if self.custom is not None:
            return _custom_needle(self.custom, values, rng)
        return _BUILDERS[self.kind](self.count, values, rng, float(depth))


def parse_task(text: str) -> Task:
    """`single`, `multikey:K`, `multivalue:V`, `multiquery:Q`, `chain:H`, or a TOML file (`PATH.toml`)."""
    text = text.strip()
    if text.lower().endswith(".toml"):
        custom = load_task_file(text)
        return Task(custom.name, "custom", len(custom.needles), custom)
    kind, sep, count_text = text.partition(":")
    if kind not in KINDS:
        raise NiahError(
            f"unknown task {text!r}: use single, multikey:K, multivalue:V, multiquery:Q, chain:H or a task .toml file"
        )
    if kind == SINGLE:
        if sep:
            raise NiahError(f"bad task {text!r}: single takes no count")
        return Task(SINGLE, SINGLE)
    try:
        count = int(count_text)
    except ValueError:
        raise NiahError(f"bad task {text!r}: use {kind}:N with N a whole number, e.g. {kind}:4") from None
    low = 1 if kind == "chain" else 2
    if not low <= count <= MAX_COUNT:
        raise NiahError(f"bad task {text!r}: N must be {low}-{MAX_COUNT}")
    return Task(f"{kind}:{count}", kind, count)


def parse_tasks(text: str) -> tuple[Task, ...]:
    """A comma-separated list of tasks, each once."""
    tasks = tuple(parse_task(part) for part in text.split(",") if part.strip())
    if not tasks:
        raise NiahError("--task is empty")
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise NiahError(f"task {duplicates[0]} is named twice in --task")
    return tasks


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _values(seed: int, length: int, depth: float, trial: int, task: str, count: int) -> list[str]:
    """`count` distinct 7-digit values; the first is the single task's value for the cell."""
    values = [needle_value(seed, length, depth, trial)]
    index = 0
    while len(values) < count:
        index += 1
        value = str(1_000_000 + _digest(f"niah-value:{seed}:{task}:{length}:{float(depth)!r}:{trial}:{index}") % 9_000_000)
        if all(value not in v and v not in value for v in values):
            values.append(value)
    return values


def _keys(rng: random.Random, count: int) -> list[str]:
    """`count` distinct adjective-noun keys, none sharing a word with the first (the asked one)."""
    word, noun = rng.choice(KEY_WORDS), rng.choice(KEY_NOUNS)
    others = [f"{a}-{b}" for a in KEY_WORDS for b in KEY_NOUNS if a != word and b != noun]
    return [f"{word}-{noun}", *rng.sample(others, count - 1)]


def _depths(rng: random.Random, count: int) -> list[float]:
    return [round(rng.uniform(0.0, 100.0), 2) for _ in range(count)]


def _around(rng: random.Random, depth: float, count: int) -> list[float]:
    """`count` depths within AROUND percent of `depth`, alternately before and after it (after only
    at 0%, before only at 100%)."""
    first_before = rng.random() < 0.5
    depths = []
    for index in range(count):
        before = depth >= 100.0 or (depth > 0.0 and (index % 2 == 0) == first_before)
        offset = rng.uniform(1.0, AROUND)
        depths.append(round(min(100.0, max(0.0, depth - offset if before else depth + offset)), 2))
    return depths


def _scatter(texts: list[str], values: list[str], rng: random.Random, role: str, depths: list[float]) -> tuple[Plant, ...]:
    """The first text as the target (at the cell's depth), the others as `role` at `depths`, each
    kept off the others' positions."""
    plants = [Plant(texts[0], values[0])]
    plants += [Plant(text, value, role, at, apart=True) for text, value, at in zip(texts[1:], values[1:], depths)]
    return tuple(plants)


def _multikey(count: int, values: list[str], rng: random.Random, depth: float) -> Needle:
    keys = _keys(rng, count)
    texts = [KEYED_NEEDLE.format(key=key, value=value) for key, value in zip(keys, values)]
    plants = _scatter(texts, values[:count], rng, "distractor", _around(rng, depth, count - 1))
    question = (
        f"What is the special magic number for {keys[0]} mentioned in the text above? "
        "Answer with the number only."
    )
    return Needle(plants[0].text, values[0], question, MULTI_INTRO, plants)


def _multivalue(count: int, values: list[str], rng: random.Random, depth: float) -> Needle:
    key = _keys(rng, 1)[0]
    texts = [f"One of the special magic numbers for {key} is: {value}." for value in values[:count]]
    plants = _scatter(texts, values[:count], rng, "value", _depths(rng, count - 1))
    question = (
        f"What are all the special magic numbers for {key} mentioned in the text above? "
        "Answer with the numbers only."
    )
    return Needle(plants[0].text, values[0], question, MULTI_INTRO, plants, tuple(values[:count]))


def _multiquery(count: int, values: list[str], rng: random.Random, depth: float) -> Needle:
    keys = _keys(rng, count)
    texts = [KEYED_NEEDLE.format(key=key, value=value) for key, value in zip(keys, values)]
    plants = _scatter(texts, values[:count], rng, "query", _depths(rng, count - 1))
    asked = ", ".join(keys[:-1]) + f" and {keys[-1]}"
    question = (
        f"What are the special magic numbers for {asked} mentioned in the text above? "
        "Answer with the numbers only."
    )
    return Needle(plants[0].text, values[0], question, MULTI_INTRO, plants, tuple(values[:count]))


def _variables(rng: random.Random, taken: list[str], count: int) -> list[str]:
    """`count` new five-letter variable names, none in `taken`."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5))
        if name not in names and name not in taken:
            names.append(name)
    return names


def _hops(names: list[str], value: str, start: float, rng: random.Random, roles: tuple[str, str], depth: float | None) -> list[Plant]:
    """`VAR A = value` at `depth` (None = the cell's), then `VAR B = VAR A`, ... after it in order."""
    hop_depths = sorted(round(start + rng.uniform(0.0, 1.0) * (100.0 - start), 2) for _ in names[1:])
    first = Plant(f"VAR {names[0]} = {value}.", names[0], roles[0], depth)
    return [first] + [
        Plant(f"VAR {names[i + 1]} = VAR {names[i]}.", names[i + 1], roles[1], hop_depth)
        for i, hop_depth in enumerate(hop_depths)
    ]


def _chain(hops: int, values: list[str], rng: random.Random, depth: float) -> Needle:
    """The asked chain from the cell's depth on, and a distractor chain of as many hops from another
    value at a seeded depth (RULER's variable tracking), so naming every variable is no pass."""
    names = _variables(rng, [], hops + 1)
    value = values[0]
    plants = _hops(names, value, depth, rng, ("target", "hop"), None)
    start = _depths(rng, 1)[0]
    plants += _hops(_variables(rng, names, hops + 1), values[1], start, rng, ("distractor", "distractor"), start)
    question = (
        f"Which variables in the text above are assigned the value {value}, directly or through "
        "other variables? Answer with the variable names only, separated by commas."
    )
    return Needle(plants[0].text, value, question, CHAIN_INTRO, tuple(plants), tuple(names))


_BUILDERS = {"multikey": _multikey, "multivalue": _multivalue, "multiquery": _multiquery, "chain": _chain}


def _custom_needle(task: CustomTask, values: list[str], rng: random.Random) -> Needle:
    plants = []
    for index, (needle, value) in enumerate(zip(task.needles, values)):
        text, answer = needle.text.replace("{value}", value), needle.answer.replace("{value}", value)
        if index == 0:
            plants.append(Plant(text, answer))
        else:
            depth = needle.depth if needle.depth is not None else _depths(rng, 1)[0]
            plants.append(Plant(text, answer, "distractor" if task.scorer == "exact" else "value", depth, apart=True))
    question = task.question
    for index, value in enumerate(values, 1):
        question = question.replace(f"{{value{index}}}", value)
    answers = tuple(p.value for p in plants) if task.scorer == "all" else ()
    return Needle(plants[0].text, plants[0].value, question, task.intro, tuple(plants), answers)


def load_task_file(path: str | Path) -> CustomTask:
    """A custom task from TOML: `name`, `question`, `scorer` (`exact` or `all`), optional `intro`, and
    `[[needle]]` tables with `text`, `answer` and optional `depth` (percent; the first needle is the
    target at the cell's depth). Each mistake is one clear error."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise NiahError(f"cannot read task file {path}: {exc.__class__.__name__}") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: arrays nested without end
        raise NiahError(f"task file {path} is not valid TOML: {exc}") from None
    where = f"task file {path}"
    unknown = sorted(set(data) - {"name", "question", "scorer", "intro", "needle"})
    if unknown:
        raise NiahError(f"{where}: unknown key {unknown[0]!r} (use name, question, scorer, intro, [[needle]])")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in KINDS:
        raise NiahError(f"{where}: name {name!r} must be letters, digits, '_', '.', '-' and not a built-in task")
    question, intro = data.get("question"), data.get("intro", MULTI_INTRO)
    for key, value in (("question", question), ("intro", intro)):
        if not isinstance(value, str) or not value.strip():
            raise NiahError(f"{where}: {key} must be a non-empty string")
    scorer = data.get("scorer", "exact")
    if scorer not in ("exact", "all"):
        raise NiahError(f"{where}: scorer {scorer!r} must be 'exact' or 'all'")
    entries = data.get("needle")
    if not isinstance(entries, list) or not entries:
        raise NiahError(f"{where} has no needles: add [[needle]] tables with text and answer")
    if len(entries) > MAX_COUNT:
        raise NiahError(f"{where}: at most {MAX_COUNT} needles")
    needles = []
    for index, entry in enumerate(entries, 1):
        needles.append(_custom_entry(entry, f"{where}, needle {index}", first=index == 1))
    for index in range(len(needles) + 1, len(needles) + 10):
        if f"{{value{index}}}" in question:
            raise NiahError(f"{where}: the question names {{value{index}}} but there are {len(needles)} needles")
    samples = [str(9_000_000 + index) for index in range(len(needles))]
    asked = question
    for index, sample in enumerate(samples, 1):
        asked = asked.replace(f"{{value{index}}}", sample)
    check_question(where, asked, [n.answer.replace("{value}", v) for n, v in zip(needles, samples)])
    return CustomTask(name, tuple(needles), " ".join(question.split()), " ".join(intro.split()), scorer, str(path))  # type: ignore[union-attr]


def _custom_entry(entry: object, where: str, first: bool) -> CustomNeedle:
    if not isinstance(entry, dict):
        raise NiahError(f"{where} must be a table with text and answer")
    unknown = sorted(set(entry) - {"text", "answer", "depth"})
    if unknown:
        raise NiahError(f"{where}: unknown key {unknown[0]!r} (use text, answer, depth)")
    text, answer = entry.get("text"), entry.get("answer")
    if not all(isinstance(p, str) and p.strip() for p in (text, answer)):
        raise NiahError(f"{where} needs non-empty text and answer strings")
    text, answer = " ".join(text.split()), " ".join(answer.split())  # type: ignore[union-attr]
    check_fact(where, text, answer)
    depth = entry.get("depth")
    if depth is not None:
        if first:
            raise NiahError(f"{where}: the first needle is the target, placed at the cell's depth; remove its depth")
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 100:
            raise NiahError(f"{where}: depth {depth!r} must be a percent in 0-100")
        depth = float(depth)
    return CustomNeedle(text, answer, depth)
