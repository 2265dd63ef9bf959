"""The shared haystack (`niah run --haystack shared`): per trial one haystack as long as the longest
length, holding one keyed needle for every (length, depth) cell of the grid. The prompt of cell
(L, D) is that haystack cut at L, then the question for the key planted at D% of L.

Every prompt is still exactly L tokens (niah.prompts.haystack builds it, the server recounts it). Cells go
in ascending length, so each prompt extends the previous one and the server's prompt cache computes
each stretch of the haystack once: the seed's 5 × 5 grid to 1,010,000 computes about 0.09 of the
naive prefill (benchmarks/schedule_bench.py).

Where the needles sit, in the builder tokenizer's filler tokens, the same in every prompt of a trial:
- cell (L, D) at D% of L's estimated filler (L less the template, intro, question and the needles
  planted before), at the corpus sentence boundary at or below it; (L, 100%) after L's last sentence
  in L's own prompt, and just past L's cut in the longer prompts;
- around each length's cut lies a zone (CUT_ZONE) no other length's needle uses, so every longer
  prompt holds the same sentences up to L's last whole one: there L's prompt parts from them
  (`Prompt.reuse_end`, where a hybrid model's primer leaves its checkpoint);
- needles that would share a boundary move to the next free one: coinciding positions (131,072 is
  100% of 128K and 50% of 256K) still get their own needle, key and value.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from dataclasses import dataclass, replace

from niah.cells import SHARED, SHARED_SUFFIX
from niah.errors import NiahError
from niah.prompts.corpus import Corpus
from niah.prompts.corpus_tokens import tokenized
from niah.prompts.needles import Needle, Plant, needle_value
from niah.prompts.tasks import KEY_NOUNS, KEY_WORDS, KEYED_NEEDLE, MULTI_INTRO, SINGLE, Task
from niah.prompts.templates import ChatTemplate, count_prompt, count_text, frame
from niah.prompts.tokenizers import Tokenizer

CUT_ZONE = 64
"""Filler tokens on each side of a length's estimated cut that no other length's needle uses."""
QUESTION = "What is the special magic number for {key} mentioned in the text above? Answer with the number only."

MORE_WORDS = (
    "azure", "bashful", "bitter", "brash", "breezy", "bubbly", "candid", "chilly", "cosmic",
    "curly", "dainty", "dapper", "daring", "dizzy", "dreamy", "drowsy", "eager", "electric",
    "fancy", "fearless", "feisty", "fierce", "fizzy", "fluffy", "frisky", "frugal", "fuzzy",
    "gallant", "giddy", "gleaming", "glossy", "glum", "goofy", "grumpy", "gusty", "hasty", "hazy",
    "hearty", "icy", "jaunty", "jolly", "jovial", "jumpy", "kooky", "lanky", "lavish", "lofty",
    "loyal", "lucid", "lucky", "maroon", "mauve", "merry", "mighty", "nifty", "noble", "pale",
    "peppy", "perky", "placid", "plucky", "polite", "prickly", "quaint", "quirky", "radiant",
    "rapid", "rosy", "rowdy", "royal", "sandy", "sassy", "scruffy", "serene", "shiny", "silent",
    "silky", "sleepy", "slender", "spicy", "stormy", "thrifty", "tranquil", "vivid", "wary",
    "weary", "wild", "witty", "woolly", "zany",
)
MORE_NOUNS = (
    "acorn", "alpaca", "antelope", "anvil", "armadillo", "arrow", "aspen", "bagel", "banjo",
    "beacon", "beetle", "bison", "bobcat", "bramble", "buckle", "buffalo", "cactus", "camel",
    "canary", "caribou", "castle", "cedar", "chapel", "cherry", "chimney", "cobbler", "comet",
    "coyote", "crane", "cricket", "dolphin", "donkey", "dragon", "eagle", "easel", "feather",
    "fiddle", "garnet", "gazelle", "gopher", "harp", "hazel", "helmet", "hornet", "iguana",
    "jackal", "jasmine", "kayak", "kitten", "lagoon", "lemon", "lizard", "llama", "lotus", "magnet",
    "mango", "maple", "meteor", "mitten", "moose", "mustang", "nutmeg", "oasis", "ocelot", "oyster",
    "paddle", "panda", "pelican", "pepper", "pigeon", "pillow", "plume", "pony", "puffin", "quill",
    "rabbit", "rocket", "saffron", "salmon", "sparrow", "squirrel", "stallion", "thistle", "tulip",
    "turtle", "walrus", "whistle", "wizard", "yak", "zebra",
)
"""Keys past the multikey task's 30 words and nouns (none in the built-in haystack's text)."""
MAX_CELLS = len(KEY_WORDS) + len(MORE_WORDS)
"""Cells a shared haystack can key with no two keys sharing a word."""

Cells = tuple[tuple[int, float], ...]
Grid = tuple[tuple[int, tuple[float, ...]], ...]


def shared_keys(seed: int, trial: int, count: int) -> list[str]:
    """`count` adjective-noun keys for one trial's haystack, no two sharing a word (the first 30 drawn
    from the multikey task's words as before, the rest from MORE_WORDS and MORE_NOUNS)."""
    if count > MAX_CELLS:
        raise NiahError(too_many(count))
    rng = random.Random(int.from_bytes(hashlib.sha256(f"niah-shared-keys:{seed}:{trial}".encode()).digest()[:8], "big"))
    words, nouns = rng.sample(KEY_WORDS, len(KEY_WORDS)), rng.sample(KEY_NOUNS, len(KEY_NOUNS))
    words += rng.sample(MORE_WORDS, len(MORE_WORDS))
    nouns += rng.sample(MORE_NOUNS, len(MORE_NOUNS))
    return [f"{word}-{noun}" for word, noun in zip(words[:count], nouns)]


def too_many(count: int) -> str:
    return (f"a shared haystack keys at most {MAX_CELLS} cells with keys that share no word; the grid has "
            f"{count}: use fewer lengths or depths")


def shared_values(seed: int, trial: int, cells: Cells) -> list[str]:
    """Each cell's 7-digit value in one trial's haystack: the single task's value for the cell, or a
    fresh one where two cells would repeat a value (no value is asked twice)."""
    values: list[str] = []
    for length, depth in cells:
        value, salt = needle_value(seed, length, depth, trial), 0
        while value in values:
            salt += 1
            digest = hashlib.sha256(f"niah-shared-value:{seed}:{trial}:{length}:{depth!r}:{salt}".encode()).digest()
            value = str(1_000_000 + int.from_bytes(digest[:8], "big") % 9_000_000)
        values.append(value)
    return values


@dataclass(frozen=True)
class SharedHaystack:
    """The grid's cells that one haystack per trial serves."""

    cells: Cells
    """Every (length, depth) of the grid, ascending."""

    @classmethod
    def of_grid(cls, grid: Grid) -> SharedHaystack:
        """The grid's cells; NiahError past MAX_CELLS."""
        cells = tuple(sorted({(length, float(d)) for length, depths in grid for d in depths}))
        if len(cells) > MAX_CELLS:
            raise NiahError(too_many(len(cells)))
        return cls(cells)

    @property
    def digest(self) -> str:
        """A short hash of the cells: which haystack a trial's needles belong to."""
        return hashlib.sha256(json.dumps(self.cells).encode()).hexdigest()[:16]

    def identity(self, seed: int, trials: int) -> dict[str, object]:
        """The screen's identity for the fingerprint: its grid (each length's depths), trials per
        cell and a hash of every trial's key list (a cell's key and prompt depend on all of them)."""
        grid: dict[str, list[float]] = {}
        for length, depth in self.cells:
            grid.setdefault(str(length), []).append(depth)
        keys = [shared_keys(seed, trial, len(self.cells)) for trial in range(trials)]
        return {"grid": grid, "trials": trials,
                "keys_sha256": hashlib.sha256(json.dumps(keys).encode()).hexdigest()}

    def needle(self, seed: int, length: int, depth: float, trial: int) -> Needle:
        """Cell (length, depth)'s question over trial `trial`'s haystack: every cell's keyed needle
        planted (placed per tokenizer by `place`), this cell's first."""
        index = self.cells.index((length, float(depth)))
        keys, values = shared_keys(seed, trial, len(self.cells)), shared_values(seed, trial, self.cells)
        plants = [
            Plant(KEYED_NEEDLE.format(key=key, value=value), value, "target" if i == index else "key", d, cell=(n, d))
            for i, ((n, d), key, value) in enumerate(zip(self.cells, keys, values))
        ]
        plants.insert(0, plants.pop(index))
        question = QUESTION.format(key=keys[index])
        return Needle(plants[0].text, values[index], question, MULTI_INTRO, tuple(plants),
                      haystack=f"{SHARED}:{seed}:{trial}:{self.digest}")


def shared_task(grid: Grid) -> Task:
    """The screen's one task (`--haystack shared`), `single@shared`: the single needle's question
    asked of one haystack per trial that holds a keyed needle for every cell of `grid`."""
    return Task(SINGLE + SHARED_SUFFIX, SINGLE, shared=SharedHaystack.of_grid(grid))


@dataclass(frozen=True)
class Layout:
    """Where one trial's needles sit for one tokenizer."""

    atoms: dict[tuple[int, float], int]
    """The corpus atom each cell's needle precedes."""
    zones: dict[int, tuple[int, int]]
    """Per length, the atoms [first, last) around its estimated cut that no other length's needle uses."""


_LAYOUTS: dict[tuple[object, ...], Layout] = {}
_LOCK = threading.Lock()


def place(needle: Needle, length: int, tokenizer: Tokenizer, corpus: Corpus, template: ChatTemplate) -> Needle:
    """A shared-haystack needle as the prompt of `length` holds it: its haystack's needles of lengths
    up to `length` and those of longer lengths before this length's cut zone, each at its corpus atom
    (this length's 100% needle after the last sentence); any other needle is returned as it is."""
    if not needle.haystack:
        return needle
    key = (needle.haystack, tokenizer.name, id(tokenizer), corpus.sha256, template.name)  # seed, trial, grid
    with _LOCK:
        if key not in _LAYOUTS:
            _LAYOUTS[key] = layout(needle.plants, tokenizer, corpus, template)
        atoms, zones = _LAYOUTS[key].atoms, _LAYOUTS[key].zones
    kept = []
    for plant in needle.plants:
        cell = plant.cell
        assert cell is not None
        if cell == (length, 100.0):
            kept.append(replace(plant, depth=100.0))
        elif cell[0] <= length or atoms[cell] < zones[length][0]:
            kept.append(replace(plant, atom=atoms[cell]))
    return replace(needle, plants=tuple(kept))


def filler_estimates(plants: tuple[Plant, ...], tokenizer: Tokenizer, template: ChatTemplate) -> dict[int, int]:
    """Per length, the filler tokens its prompt holds, estimated: the length less the template,
    intro and a question, less the needles estimated to lie before its end."""
    cells = sorted(p.cell for p in plants if p.cell is not None)
    head, tail = frame(template)
    question = QUESTION.format(key="amber-falcon")
    fixed = count_prompt(tokenizer, f"{head}{MULTI_INTRO}\n\n\n\n{question}{tail}")
    sizes = {p.cell: count_text(tokenizer, f" {p.text}") for p in plants}
    lengths = sorted({length for length, _ in cells})
    filler = {length: length - fixed for length in lengths}
    for _ in range(3):  # the needles before a length's end depend on where the lengths end
        at = {(n, d): d / 100 * filler[n] for n, d in cells}
        filler = {length: length - fixed - sum(sizes[c] for c in cells if at[c] < filler[length]) for length in lengths}
    if min(filler.values()) <= 2 * CUT_ZONE:
        raise NiahError(
            f"length {min(lengths):,} is too short for a shared haystack of {len(cells)} needles: "
            "use longer lengths or fewer depths"
        )
    return filler


def layout(plants: tuple[Plant, ...], tokenizer: Tokenizer, corpus: Corpus, template: ChatTemplate) -> Layout:
    """Where each cell's needle sits in the haystack (module doc)."""
    tc = tokenized(corpus, tokenizer)
    filler = filler_estimates(plants, tokenizer, template)
    zones = {length: (tc.locate(max(0, f - CUT_ZONE)), tc.locate(f + CUT_ZONE) + 1) for length, f in filler.items()}
    taken: set[int] = set()
    atoms: dict[tuple[int, float], int] = {}
    for length, depth in sorted(p.cell for p in plants if p.cell is not None):
        atom = zones[length][1] if depth >= 100.0 else tc.locate(int(depth / 100 * filler[length]))
        while atom in taken or any(lo <= atom < hi for n, (lo, hi) in zones.items() if n != length):
            atom += 1
        taken.add(atom)
        atoms[(length, depth)] = atom
    return Layout(atoms, zones)
