"""Haystack text sources: `builtin` essays, `files:GLOB` (user text files) and RULER-style `noise`.

A corpus is normalized text (NFC, paragraphs joined by one blank line, ending in one) cut into
sentence units; its SHA-256 is recorded with every prompt built from it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from niah.errors import NiahError, replacing

DEFAULT_CORPUS = "builtin"
NOISE_SENTENCES = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
# A sentence ends at . ! or ? (plus closing quotes/brackets) before a space; a paragraph at "\n\n".
_BOUNDARY = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?= \S)|\n\n")


def cache_dir() -> Path:
    """Where niah keeps generated and tokenized corpora (`NIAH_CACHE_DIR` overrides)."""
    import platformdirs

    root = os.environ.get("NIAH_CACHE_DIR") or platformdirs.user_cache_dir("niah")
    return Path(root) / "corpus"


@dataclass(frozen=True)
class Corpus:
    """Normalized haystack text and where it came from."""

    name: str
    """The spec it was built from: `builtin`, `noise` or `files:GLOB`."""
    text: str = field(repr=False)
    """NFC text; paragraphs separated by one blank line; ends with a blank line."""
    files: tuple[str, ...] = ()
    """For `files:`, the files used, in order."""
    about: str = ""
    """What the text is, for the card (the built-in corpus says it; the other names speak for themselves)."""

    @cached_property
    def sha256(self) -> str:
        """Content hash of the normalized text."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @cached_property
    def unit_starts(self) -> np.ndarray:
        """Character offsets where sentence units start, then len(text).

        A unit is one sentence: a paragraph's first sentence has no leading space, later ones
        start with the space before them, and a paragraph's last one keeps the blank line.
        """
        starts = [0]
        for match in _BOUNDARY.finditer(self.text):
            end = match.end()
            if end < len(self.text) and end != starts[-1]:
                starts.append(end)
        starts.append(len(self.text))
        return np.asarray(starts, dtype=np.int64)


def normalize(text: str) -> str:
    """NFC; each paragraph's whitespace collapsed to single spaces; paragraphs joined by a blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    return "\n\n".join(paragraphs) + "\n\n" if paragraphs else ""


def builtin_corpus() -> Corpus:
    """The generated essays, kept in the cache folder keyed by the generator's code and data."""
    from niah.prompts import essays

    folder = essays.builtin_dir()
    key = hashlib.sha256(Path(essays.__file__).read_bytes())
    for name in essays.DATA_FILES:
        key.update((folder / name).read_bytes())
    key.update(f"{essays.BUILTIN_SEED}:{essays.BUILTIN_CHARS}".encode())
    path = cache_dir() / f"builtin-{key.hexdigest()[:16]}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        text = normalize(essays.generate())
        write_atomic(path, text.encode("utf-8"))
    return Corpus("builtin", text, about=essays.ABOUT)


def files_corpus(pattern: str) -> Corpus:
    """Text files matching GLOB, in sorted order, normalized and concatenated."""
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise NiahError(f"corpus files:{pattern} matches no files")
    texts = []
    for name in paths:
        try:
            texts.append(Path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise NiahError(f"cannot read corpus file {name}: {exc.__class__.__name__}") from None
    text = normalize("\n\n".join(texts))
    if not text:
        raise NiahError(f"corpus files:{pattern} holds no text")
    return Corpus(f"files:{pattern}", text, tuple(paths))


def noise_corpus() -> Corpus:
    """RULER's repeated filler sentences, as one paragraph of twenty rounds."""
    return Corpus("noise", " ".join(NOISE_SENTENCES * 20) + "\n\n")


def get_corpus(spec: str = DEFAULT_CORPUS) -> Corpus:
    """Build a corpus from its spec: `builtin`, `noise` or `files:GLOB`."""
    if spec == "builtin":
        return builtin_corpus()
    if spec == "noise":
        return noise_corpus()
    kind, _, arg = spec.partition(":")
    if kind == "files" and arg:
        return files_corpus(arg)
    raise NiahError(f"unknown corpus {spec!r}: use builtin, noise or files:GLOB")


def write_atomic(path: Path, data: bytes) -> None:
    """Write a cache file so readers never see half of it; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as partial:
            partial.write_bytes(data)
    except (OSError, NiahError):
        pass
