"""A corpus measured in one tokenizer's tokens, cached on disk by corpus hash and tokenizer name.

The corpus is cut into atoms (sentence units, merged where the tokenizer joins across a unit
boundary) whose token counts add up exactly: any run of whole atoms tokenizes to the sum of
their counts. That lets the haystack builder size a prompt of a million tokens without
re-tokenizing it. Server tokenizers are measured lazily and kept in memory only.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from niah.errors import NiahError
from niah.prompts.corpus import Corpus, cache_dir, write_atomic
from niah.prompts.tokenizers import ServerTokenizer, Tokenizer

CACHE_VERSION = 1
CHUNK = 256
"""Units per jointly encoded verification chunk."""
SERVER_CHUNK = 2048
"""Units per `/tokenize` request when measuring with a server tokenizer."""


def _lengths(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    batch = getattr(tokenizer, "encode_batch", None)
    if batch is not None:
        return [len(ids) for ids in batch(list(texts))]
    return [tokenizer.count(t) for t in texts]


def measure_units(tokenizer: Tokenizer, text: str, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atoms of `text[starts[0]:starts[-1]]` as (atom starts incl. the end offset, token counts)."""
    if isinstance(tokenizer, ServerTokenizer):
        return _measure_with_pieces(tokenizer, text, starts.tolist())
    return _measure_generic(tokenizer, text, starts)


def token_starts(tokenizer: ServerTokenizer, text: str, **options: bool) -> list[int] | None:
    """Byte offsets where the server's tokens of `text` start (then the end), or None when its
    pieces do not spell the text (e.g. an added space prefix)."""
    offsets, position = [], 0
    for token in tokenizer.session.tokenize_pieces(text, **options):
        offsets.append(position)
        piece = token["piece"]
        position += len(piece.encode("utf-8")) if isinstance(piece, str) else len(piece)
    offsets.append(position)
    return offsets if position == len(text.encode("utf-8")) else None


def _measure_with_pieces(tokenizer: ServerTokenizer, text: str, starts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One `/tokenize` call per chunk of units; atoms start where a unit and a token start together.

    These counts follow the server's joint tokenization. They size the haystack; the builder then
    counts every server prompt in full, so they never decide the final length.
    """
    atoms: list[list[int]] = []
    for a in range(0, len(starts) - 1, SERVER_CHUNK):
        part = starts[a:a + SERVER_CHUNK + 1]
        offsets = token_starts(tokenizer, text[part[0]:part[-1]], add_special=False)
        if offsets is None:
            got_starts, got_counts = _measure_generic(tokenizer, text, np.asarray(part, dtype=np.int64))
            atoms.extend([int(x), int(c)] for x, c in zip(got_starts[:-1], got_counts))
            continue
        token_at = {offset: index for index, offset in enumerate(offsets)}
        firsts: list[tuple[int, int]] = []  # (unit start, index of the token starting there)
        unit_byte = 0
        for unit_start, unit_end in itertools.pairwise(part):
            if unit_byte in token_at:
                firsts.append((unit_start, token_at[unit_byte]))
            unit_byte += len(text[unit_start:unit_end].encode("utf-8"))
        ends = [index for _, index in firsts[1:]] + [len(offsets) - 1]
        atoms.extend([start, end - index] for (start, index), end in zip(firsts, ends))
    atom_starts = np.asarray([s for s, _ in atoms] + [starts[-1]], dtype=np.int64)
    return atom_starts, np.asarray([c for _, c in atoms], dtype=np.int64)


def _measure_generic(tokenizer: Tokenizer, text: str, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit counts, verified chunk by chunk against a joint encoding; merged where they disagree."""
    pieces = [text[a:b] for a, b in zip(starts[:-1].tolist(), starts[1:].tolist())]
    counts = _lengths(tokenizer, pieces)
    atoms: list[list[int]] = []  # [start, count] per atom
    bounds = list(range(0, len(pieces), CHUNK)) + [len(pieces)]
    joint = _lengths(tokenizer, ["".join(pieces[a:b]) for a, b in itertools.pairwise(bounds)])
    for (a, b), total in zip(itertools.pairwise(bounds), joint):
        chunk = [[int(starts[i]), counts[i]] for i in range(a, b)]
        if sum(c for _, c in chunk) != total:
            chunk = _merge_pairs(tokenizer, text, chunk, int(starts[b]))
            if sum(c for _, c in chunk) != total:
                chunk = [[chunk[0][0], total]]
        if atoms:
            _join(tokenizer, text, atoms, chunk, int(starts[b]))
        else:
            atoms.extend(chunk)
    atom_starts = np.asarray([s for s, _ in atoms] + [int(starts[-1])], dtype=np.int64)
    return atom_starts, np.asarray([c for _, c in atoms], dtype=np.int64)


def _merge_pairs(tokenizer: Tokenizer, text: str, chunk: list[list[int]], end: int) -> list[list[int]]:
    """Merge neighbours whose joint count differs from the sum of their counts."""
    ends = [s for s, _ in chunk[1:]] + [end]
    pairs = [text[chunk[i][0]:ends[i + 1]] for i in range(len(chunk) - 1)]
    together = _lengths(tokenizer, pairs)
    merged = [list(chunk[0])]
    for i in range(1, len(chunk)):
        if together[i - 1] == chunk[i - 1][1] + chunk[i][1]:
            merged.append(list(chunk[i]))
        else:
            whole = text[merged[-1][0]:ends[i]]
            merged[-1][1] = _lengths(tokenizer, [whole])[0]
    return merged


def _join(tokenizer: Tokenizer, text: str, atoms: list[list[int]], chunk: list[list[int]], end: int) -> None:
    """Append a verified chunk, merging across the chunk boundary when it is not additive."""
    left, right = atoms[-1], chunk[0]
    right_end = chunk[1][0] if len(chunk) > 1 else end
    pair = _lengths(tokenizer, [text[left[0]:right_end]])[0]
    if pair == left[1] + right[1]:
        atoms.extend(chunk)
    else:
        left[1] = pair
        atoms.extend(chunk[1:])


class TokenizedCorpus:
    """Atoms of a corpus with exact token counts; the corpus repeats after its last atom."""

    def __init__(self, corpus: Corpus, tokenizer: Tokenizer, lazy: bool) -> None:
        self.corpus = corpus
        self.tokenizer = tokenizer
        self._units = corpus.unit_starts
        self._measured_units = 0
        self.starts = np.zeros(1, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.cum = np.zeros(1, dtype=np.int64)
        self.wrap_ok: bool | None = None
        if not lazy:
            self._measure_to(len(self._units) - 1)

    @property
    def complete(self) -> bool:
        return self._measured_units == len(self._units) - 1

    @property
    def atoms(self) -> int:
        return len(self.counts)

    def _measure_to(self, unit: int) -> None:
        lo = self._measured_units
        starts, counts = measure_units(self.tokenizer, self.corpus.text, self._units[lo:unit + 1])
        if lo and len(counts):
            # Verify the seam with what was measured before; merge when it is not additive.
            atoms = [[int(s), int(c)] for s, c in zip(self.starts[:-1], self.counts)]
            chunk = [[int(s), int(c)] for s, c in zip(starts[:-1], counts)]
            _join(self.tokenizer, self.corpus.text, atoms, chunk, int(starts[-1]))
            starts = np.asarray([s for s, _ in atoms] + [int(starts[-1])], dtype=np.int64)
            counts = np.asarray([c for _, c in atoms], dtype=np.int64)
        self.starts, self.counts = starts, counts
        self.cum = np.concatenate([[0], np.cumsum(counts)])
        self._measured_units = unit
        if self.complete:
            self.wrap_ok = self._check_wrap()

    def _check_wrap(self) -> bool:
        text = self.corpus.text
        last, first = text[self.starts[-2]:self.starts[-1]], text[self.starts[0]:self.starts[1]]
        if isinstance(self.tokenizer, ServerTokenizer):  # a token must start where the copies meet
            offsets = token_starts(self.tokenizer, last + first, add_special=False)
            return offsets is not None and len(last.encode("utf-8")) in offsets
        return _lengths(self.tokenizer, [last + first])[0] == self.counts[-1] + self.counts[0]

    def ensure(self, tokens: int) -> None:
        """Measure at least `tokens` tokens of atoms (or the whole corpus)."""
        while not self.complete and self.cum[-1] < tokens + 4096:
            done = self._measured_units
            step = max(512, done)
            self._measure_to(min(len(self._units) - 1, done + step))

    @property
    def total(self) -> int:
        """Tokens of one copy of the corpus (of what is measured so far, while lazy)."""
        return int(self.cum[-1])

    def cum_at(self, index: int) -> int:
        """Tokens of global atoms [0, index); indices past the end wrap into later copies."""
        copies, rest = divmod(index, self.atoms) if self.complete else (0, index)
        if copies and not self.wrap_ok:
            raise NiahError(
                f"corpus {self.corpus.name} is shorter than the prompt and its end merges with its "
                "start in this tokenizer; add text to the corpus"
            )
        return copies * self.total + int(self.cum[rest])

    def locate(self, tokens: int) -> int:
        """The largest global atom index i with cum_at(i) <= tokens."""
        self.ensure(tokens)
        copies, rest = divmod(tokens, self.total) if self.complete else (0, tokens)
        index = int(np.searchsorted(self.cum, rest, side="right")) - 1
        return copies * self.atoms + min(index, self.atoms)

    def atom_text(self, index: int) -> str:
        """Text of one global atom."""
        i = index % self.atoms if self.complete else index
        return self.corpus.text[self.starts[i]:self.starts[i + 1]]

    def span_text(self, lo: int, hi: int) -> str:
        """Text of global atoms [lo, hi)."""
        parts = []
        while lo < hi:
            copy, i = divmod(lo, self.atoms) if self.complete else (0, lo)
            stop = min(hi - copy * self.atoms, self.atoms)
            parts.append(self.corpus.text[self.starts[i]:self.starts[stop]])
            lo = copy * self.atoms + stop
        return "".join(parts)


_MEMO: dict[tuple[str, str, int], TokenizedCorpus] = {}
_LOCK = threading.Lock()


def tokenized(corpus: Corpus, tokenizer: Tokenizer) -> TokenizedCorpus:
    """The corpus measured in `tokenizer`'s tokens: from memory, the disk cache, or measured now."""
    server = isinstance(tokenizer, ServerTokenizer)
    key = (corpus.sha256, tokenizer.name, id(tokenizer) if server else 0)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        if server:
            result = TokenizedCorpus(corpus, tokenizer, lazy=True)
        else:
            result = _load_or_measure(corpus, tokenizer)
        _MEMO[key] = result
        return result


def cache_path(corpus: Corpus, tokenizer: Tokenizer) -> Path:
    name = hashlib.sha256(tokenizer.name.encode()).hexdigest()[:12]
    return cache_dir() / f"tokens-v{CACHE_VERSION}-{corpus.sha256[:24]}-{name}.npz"


def _load_or_measure(corpus: Corpus, tokenizer: Tokenizer) -> TokenizedCorpus:
    path = cache_path(corpus, tokenizer)
    result = TokenizedCorpus(corpus, tokenizer, lazy=True)
    try:
        with np.load(path) as data:
            starts, counts, wrap = data["starts"], data["counts"], bool(data["wrap_ok"])
        if int(starts[-1]) != len(corpus.text) or len(counts) != len(starts) - 1:
            raise ValueError("stale cache")
    except (OSError, ValueError, KeyError):
        result._measure_to(len(corpus.unit_starts) - 1)
        buffer = io.BytesIO()
        np.savez(buffer, starts=result.starts, counts=result.counts, wrap_ok=np.bool_(result.wrap_ok))
        write_atomic(path, buffer.getvalue())
        return result
    result.starts, result.counts, result.wrap_ok = starts, counts, wrap
    result.cum = np.concatenate([[0], np.cumsum(counts)])
    result._measured_units = len(corpus.unit_starts) - 1
    return result
