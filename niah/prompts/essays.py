"""The built-in haystack: plain English essays generated from the word lists in `haystacks/builtin/`.

Seeded and deterministic. Every sentence is unique (so no run of sentences ever repeats); about
one in six carries an ordinary number or date (years, counts, amounts up to 99,999, percentages,
times of day), so a needle is not the only sentence with digits. The text holds no 7-digit value
and none of the default needle's words.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from niah.data import data_dir
from niah.errors import NiahError

DATA_FILES = ("common.toml", "sentences.toml", "topics.toml")
BUILTIN_SEED = 20260101
BUILTIN_CHARS = 6_300_000
"""About 1.35M Qwen3.6 tokens of essays."""
ABOUT = "generated English essays with ordinary numbers and dates (no 7-digit values, none of the needle's words)"
"""What the card says the built-in corpus is."""

_SLOT = re.compile(r"\{(\w+)\}")
_ARTICLE = re.compile(r"\b([Aa]) (?=([A-Za-z]+))")
_CONSONANT_SOUND = ("uni", "use", "usu", "eu", "one", "once")


def builtin_dir() -> Path:
    """`haystacks/builtin/`, shipped with niah (see niah.data)."""
    folder = data_dir("haystacks") / "builtin"
    if all((folder / name).is_file() for name in DATA_FILES):
        return folder
    raise NiahError("the built-in corpus data (haystacks/builtin/*.toml) is missing; use --corpus files:GLOB")


@dataclass(frozen=True)
class Topic:
    """One essay subject and the words that belong to it."""

    name: str
    words: dict[str, tuple[str, ...]]


def load_data(folder: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]], list[Topic]]:
    """(common word lists, sentence templates by role, topics) from the TOML files."""
    common = {k: tuple(v) for k, v in tomllib.loads((folder / "common.toml").read_text("utf-8")).items()}
    sentences = {k: tuple(v) for k, v in tomllib.loads((folder / "sentences.toml").read_text("utf-8")).items()}
    topics = []
    for entry in tomllib.loads((folder / "topics.toml").read_text("utf-8"))["topic"]:
        words = {k: tuple(v) for k, v in entry.items() if k != "name"}
        topics.append(Topic(entry["name"], words))
    return common, sentences, topics


def _fix_articles(sentence: str) -> str:
    def article(match: re.Match[str]) -> str:
        word = match.group(2).lower()
        vowel = word[0] in "aeiou" and not word.startswith(_CONSONANT_SOUND)
        if word.startswith(("hour", "honest")):
            vowel = True
        return match.group(1) + ("n " if vowel else " ")

    return _ARTICLE.sub(article, sentence)


class EssayWriter:
    """Draws essays sentence by sentence; never emits the same sentence twice."""

    def __init__(self, folder: Path, seed: int) -> None:
        self.common, self.templates, self.topics = load_data(folder)
        self.rng = random.Random(seed)
        self.seen: set[str] = set()

    def _pick(self, topic: Topic, slot: str) -> str:
        rng = self.rng
        if slot == "topic":
            return topic.name
        if slot in ("thing", "things"):
            pair = rng.choice(topic.words["things"]).split("|")
            return pair[0] if slot == "thing" else pair[1]
        if slot in ("verb", "verbed"):
            pool = topic.words["verbs"] + self.common["verbs"] if rng.random() < 0.3 else topic.words["verbs"]
            pair = rng.choice(pool).split("|")
            return pair[0] if slot == "verb" else pair[1]
        if slot == "place":
            return rng.choice(topic.words["places"])
        if slot in ("adj", "adj2"):
            return rng.choice(topic.words["adjectives"] + self.common["adjectives"])
        if slot in ("people", "person", "ideas"):
            return rng.choice(topic.words[slot] + self.common[slot])
        if slot == "idea":
            return rng.choice(topic.words["ideas"] + self.common["ideas"])
        if slot == "time":
            return rng.choice(self.common["times"])
        if slot == "adv":
            return rng.choice(self.common["adverbs"])
        return self._number(slot)

    def _number(self, slot: str) -> str:
        """An ordinary number or date for a numeric slot; never more than five digits in a row."""
        rng = self.rng
        if slot in ("year", "year2"):  # sentence() then sets year2 a few years after year
            return str(rng.randint(1790, 2020))
        if slot in ("count", "count2"):
            return str(rng.randint(2, 98))
        if slot == "amount":
            return f"{rng.randint(100, 99_999):,}"
        if slot == "percent":
            return f"{rng.randint(5, 95)} percent"
        if slot == "date":
            return f"{rng.choice(self.common['months'])} {rng.randint(1, 28)}, {rng.randint(1790, 2020)}"
        if slot == "hour":
            return f"{rng.randint(5, 11)}:{rng.choice(('00', '15', '30', '45'))}"
        raise KeyError(f"unknown slot {{{slot}}} in haystacks/builtin/sentences.toml")

    def sentence(self, topic: Topic, role: str) -> str:
        """A fresh sentence of the given role ('openers', 'body', 'closers')."""
        for attempt in range(1000):
            template = self.rng.choice(self.templates[role if attempt < 50 else "body"])
            values: dict[str, str] = {}
            for slot in _SLOT.findall(template):
                values.setdefault(slot, self._pick(topic, slot))
            if "adj2" in values:
                while values["adj2"] == values.get("adj"):
                    values["adj2"] = self._pick(topic, "adj2")
            if "year2" in values:
                values["year2"] = str(int(values["year"]) + self.rng.randint(3, 40))
            text = _fix_articles(template.format_map(values))
            text = text[0].upper() + text[1:]
            if role == "body" and not text.startswith("I ") and self.rng.random() < 0.18:
                text = f"{self.rng.choice(self.common['connectors'])} {text[0].lower()}{text[1:]}"
            if text not in self.seen:
                self.seen.add(text)
                return text
        raise RuntimeError("the essay templates ran out of new sentences")  # pragma: no cover

    def essay(self, topic: Topic) -> list[str]:
        """Paragraphs of one essay: an opening, a few body paragraphs, a closing."""
        rng = self.rng
        paragraphs = []
        count = rng.randint(4, 8)
        for index in range(count):
            sentences = [self.sentence(topic, "body") for _ in range(rng.randint(3, 7))]
            if index == 0:
                sentences.insert(0, self.sentence(topic, "openers"))
            if index == count - 1:
                sentences.append(self.sentence(topic, "closers"))
            paragraphs.append(" ".join(sentences))
        return paragraphs


def generate(seed: int = BUILTIN_SEED, chars: int = BUILTIN_CHARS, folder: Path | None = None) -> str:
    """At least `chars` characters of essays: paragraphs joined by blank lines, ending in one."""
    writer = EssayWriter(folder or builtin_dir(), seed)
    parts: list[str] = []
    size = 0
    previous = None
    while size < chars:
        topic = writer.rng.choice([t for t in writer.topics if t is not previous])
        previous = topic
        for paragraph in writer.essay(topic):
            parts.append(paragraph)
            size += len(paragraph) + 2
    return "\n\n".join(parts) + "\n\n"
