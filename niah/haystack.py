"""Prompts of exactly L tokens with the needle at a chosen depth.

The user message is the needle's intro line, the haystack body (corpus sentences with the
needle at the sentence boundary nearest below the nominal depth, the last one truncated at a
word so the count comes out exact) and the question. The whole rendered prompt is counted as
llama-server counts it: template and special tokens included. Runs of whole corpus atoms are
counted from the tokenized-corpus cache; every place where pieces meet is re-encoded with its
neighbours, and the build repeats until the count is exactly L.
"""

from __future__ import annotations

import bisect
import math
import weakref
from dataclasses import dataclass

from niah.corpus import Corpus
from niah.corpus_tokens import TokenizedCorpus, token_starts, tokenized
from niah.errors import NiahError
from niah.needles import Needle
from niah.templates import ChatTemplate, bos_count, count_prompt, count_text, frame, get_template
from niah.tokenizers import ServerTokenizer, Tokenizer

__all__ = ["Prompt", "build", "get_template"]

Piece = str | tuple[int, int]
"""Prompt text in pieces: literal text, or a run [i, j) of whole corpus atoms."""
MAX_ROUNDS = 24


@dataclass(frozen=True)
class Prompt:
    """One cell's prompt, exactly `length` tokens long."""

    messages: tuple[dict[str, str], ...]
    """The chat messages to POST to /v1/chat/completions."""
    text: str
    """The fully rendered prompt (template applied)."""
    prompt_tokens: int
    """Tokens of `text` as the tokenizer counts them (BOS and special tokens included); == length."""
    length: int
    depth_nominal: float
    """Requested depth, percent."""
    depth_actual: float
    """100 * needle offset / (haystack tokens - needle tokens): 0 = first sentence, 100 = last."""
    needle: Needle
    needle_token_offset: int
    """Tokens of the haystack body before the needle's first token."""
    haystack_tokens: int
    """Tokens of the haystack body, needle included."""
    corpus_sha256: str
    tokenizer: str
    template: str
    """`builtin`, `server:URL` or `gguf:PATH`."""
    haystack_token_start: int = 0
    """Tokens of the prompt before the haystack body (BOS, template head, intro)."""
    needle_tokens: int = 0
    corpus: str = ""
    corpus_repeats: int = 1
    """How many copies of the corpus the haystack reaches into (1 = no repetition)."""


_FRAMES: weakref.WeakKeyDictionary[object, tuple[str, str]] = weakref.WeakKeyDictionary()


def _frame(template: ChatTemplate) -> tuple[str, str]:
    if template not in _FRAMES:
        _FRAMES[template] = frame(template)
    return _FRAMES[template]


class _Builder:
    """State of one build: the corpus in tokens, the fixed texts, and how to count pieces."""

    def __init__(self, tokenizer: Tokenizer, corpus: Corpus, needle: Needle, template: ChatTemplate) -> None:
        self.tok = tokenizer
        self.tc: TokenizedCorpus = tokenized(corpus, tokenizer)
        self.needle = needle
        head, self.tail = _frame(template)
        self.head = f"{head}{needle.intro}\n\n"
        self.bos = bos_count(tokenizer)
        self.full_count = isinstance(tokenizer, ServerTokenizer)

    def enc(self, text: str) -> int:
        return count_text(self.tok, text)

    def count(self, pieces: list[Piece]) -> int:
        """Tokens of the joined pieces (no BOS): atom runs from the cache, everything that touches
        literal text re-encoded together with the neighbouring atom on each side."""
        tc, total, region = self.tc, 0, []
        for index, piece in enumerate(pieces):
            if isinstance(piece, str):
                region.append(piece)
                continue
            lo, hi = piece
            if index > 0 and isinstance(pieces[index - 1], str):
                region.append(tc.atom_text(lo))
                lo += 1
            if lo >= hi:
                continue
            if region:
                total += self.enc("".join(region))
                region = []
            if index + 1 < len(pieces) and isinstance(pieces[index + 1], str):
                hi -= 1
                region.append(tc.atom_text(hi))
            total += tc.cum_at(hi) - tc.cum_at(lo)
        if region:
            total += self.enc("".join(region))
        return total

    def tail_text(self, source: int, tokens: int, lead: str) -> str | None:
        """A word-level prefix of atoms `source` and `source + 1` ending in '.', `tokens` long on its
        own, or None."""
        words = (self.tc.atom_text(source) + self.tc.atom_text(source + 1)).strip().split(" ")

        def text_of(size: int) -> str:
            return lead + " ".join(words[:size]).rstrip(",;:") + "."

        lo, hi = 1, len(words) - 1  # binary search: the fewest words with at least `tokens` tokens
        while lo < hi:
            mid = (lo + hi) // 2
            if self.enc(text_of(mid)) < tokens:
                lo = mid + 1
            else:
                hi = mid
        return text_of(lo) if lo < len(words) and self.enc(text_of(lo)) == tokens else None

    def filler(self, tokens: int) -> tuple[int, str, int]:
        """(whole atoms n, truncated tail text, tail tokens) for about `tokens` filler tokens."""
        if tokens <= 0:
            return 0, "", 0
        tc = self.tc
        n = tc.locate(tokens)
        rest = tokens - tc.cum_at(n)
        if rest == 0:
            return n, "", 0
        if rest < 3 and n > 0:
            n -= 1
            rest += tc.cum_at(n + 1) - tc.cum_at(n)
        lead = "" if n == 0 or tc.atom_text(n - 1).endswith("\n") else " "
        for source in (n, n + 1, n + 2, n + 3):
            text = self.tail_text(source, rest, lead)
            if text is not None:
                return n, text, rest
        ids = self.tok.encode(tc.atom_text(n).strip())[:rest]
        return n, lead + self.tok.decode(ids), rest

    def assemble(self, n: int, tail: str, k: int) -> tuple[list[Piece], int]:
        """Pieces of the whole prompt and the index of the needle piece; needle after filler unit k."""
        tc = self.tc
        units: list[Piece] = []
        if k <= n:
            units += [(0, k)] if k else []
            needle_at = len(units)
            units += [""]
            units += [(k, n)] if k < n else []
            units += [tail] if tail else []
        else:
            units += [(0, n)] if n else []
            units += [tail]
            needle_at = len(units)
            units += [""]
        before = units[needle_at - 1] if needle_at else None
        after = units[needle_at + 1] if needle_at + 1 < len(units) else None
        prev_text = before if isinstance(before, str) else tc.atom_text(before[1] - 1) if before else ""
        next_text = after if isinstance(after, str) else tc.atom_text(after[0]) if after else ""
        lead = " " if prev_text and not prev_text[-1].isspace() else ""
        trail = " " if next_text and not next_text[0].isspace() else ""
        units[needle_at] = lead + self.needle.text + trail
        last = units[-1]
        last_text = last if isinstance(last, str) else tc.atom_text(last[1] - 1)
        outro = ("" if last_text.endswith("\n") else "\n\n") + self.needle.question + self.tail
        return [self.head, *units, outro], needle_at + 1

    def position(self, n: int, tail_tokens: int, depth: float) -> int:
        """Filler unit index the needle follows: the boundary nearest below depth (n + 1 = after the tail)."""
        filler = self.tc.cum_at(n) + tail_tokens
        target = depth / 100.0 * filler
        if tail_tokens and target >= filler - 1e-9:
            return n + 1
        return min(self.tc.locate(math.floor(target + 1e-9)), n)

    def text_of(self, pieces: list[Piece]) -> str:
        return "".join(p if isinstance(p, str) else self.tc.span_text(*p) for p in pieces)


class LengthUnreachable(NiahError):
    """No filler gives a prompt of exactly the asked length with this tokenizer."""


def build(
    length: int,
    depth: float,
    tokenizer: Tokenizer,
    corpus: Corpus,
    needle: Needle,
    template: ChatTemplate,
    *,
    verify: bool = False,
) -> Prompt:
    """A prompt of exactly `length` tokens (counted by `tokenizer` over the rendered text) with
    `needle` at `depth` percent of the haystack. `verify=True` re-encodes the whole final text too
    (always done for server tokenizers)."""
    if not isinstance(length, int) or length <= 0:
        raise NiahError(f"length must be a positive integer, not {length!r}")
    if not (isinstance(depth, (int, float)) and 0.0 <= depth <= 100.0):
        raise NiahError(f"depth {depth!r} is outside 0-100")
    builder = _Builder(tokenizer, corpus, needle, template)
    bare = builder.assemble(0, "", 0)[0]
    if builder.full_count:
        minimum = count_prompt(tokenizer, builder.text_of(bare))
    else:
        minimum = builder.bos + builder.count(bare)
    if length < minimum:
        raise NiahError(
            f"length {length} is too small: template, instructions, needle and question take "
            f"{minimum} tokens with {tokenizer.name} (minimum length {minimum})"
        )
    full = builder.full_count or verify
    exact_full = builder.full_count
    target = length - minimum
    seen: set[int] = set()
    for _ in range(MAX_ROUNDS):
        n, tail, tail_tokens = builder.filler(target)
        k = builder.position(n, tail_tokens, float(depth))
        pieces, needle_at = builder.assemble(n, tail, k)
        if exact_full:
            text = builder.text_of(pieces)
            total = count_prompt(tokenizer, text)
        else:
            total = builder.bos + builder.count(pieces)
            if total == length and full:
                text = builder.text_of(pieces)
                total = count_prompt(tokenizer, text)
                exact_full = total != length
        if total == length:
            break
        step = length - total
        target = max(0, target + (step if target + step not in seen else step + (1 if step > 0 else -1)))
        seen.add(target)
    else:
        raise LengthUnreachable(f"could not build a prompt of exactly {length} tokens with {tokenizer.name}")
    return _finish(builder, pieces, needle_at, n, tail, length, float(depth), template)


def _server_offsets(builder: _Builder, pieces: list[Piece], needle_at: int) -> tuple[int, ...] | None:
    """Prompt tokens before the body, the needle, the needle's end and the body's end, read from the
    server's own tokenization of the whole prompt (None when its pieces do not spell the text)."""
    text = builder.text_of(pieces)
    offsets = token_starts(builder.tok, text, add_special=False, parse_special=True)  # type: ignore[arg-type]
    if offsets is None:
        return None
    needle_start = len(builder.text_of(pieces[:needle_at]))
    chars = (
        len(builder.head),
        needle_start,
        needle_start + len(str(pieces[needle_at]).rstrip()),
        len(text) - len(str(pieces[-1])),
    )
    return tuple(
        builder.bos + bisect.bisect_left(offsets, len(text[:c].encode("utf-8")), 0, len(offsets) - 1)
        for c in chars
    )


def _counted_offsets(builder: _Builder, pieces: list[Piece], needle_at: int) -> tuple[int, ...]:
    """The same four offsets as `_server_offsets`, counted piece by piece."""
    return (
        builder.bos + builder.count(pieces[:1]),
        builder.bos + builder.count(pieces[:needle_at]),
        builder.bos + builder.count([*pieces[:needle_at], str(pieces[needle_at]).rstrip()]),
        builder.bos + builder.count(pieces[:-1]),
    )


def _finish(
    builder: _Builder, pieces: list[Piece], needle_at: int, n: int, tail: str,
    length: int, depth: float, template: ChatTemplate,
) -> Prompt:
    """Measure offsets, check the needle is unique and the template verbatim, and make the Prompt."""
    server = _server_offsets(builder, pieces, needle_at) if builder.full_count else None
    start, before, upto, body_end = server or _counted_offsets(builder, pieces, needle_at)
    body = builder.text_of(pieces[1:-1])
    needle = builder.needle
    if body.count(needle.value) != 1:
        raise NiahError(
            f"the corpus {builder.tc.corpus.name} already contains the needle value {needle.value!r}; "
            "use another seed or corpus"
        )
    head, _ = _frame(template)
    content = builder.head[len(head):] + body + pieces[-1][: len(pieces[-1]) - len(builder.tail)]  # type: ignore[index]
    messages = ({"role": "user", "content": content},)
    text = head + content + builder.tail
    if template.name != "builtin" and template.render(list(messages)) != text:
        raise NiahError(f"template {template.name} changes the message text; cannot count it exactly")
    offset, needle_tokens, haystack = before - start, upto - before, body_end - start
    filler = haystack - needle_tokens
    atoms_used = n + (1 if tail else 0)
    tc = builder.tc
    return Prompt(
        messages=messages,
        text=text,
        prompt_tokens=length,
        length=length,
        depth_nominal=depth,
        depth_actual=round(100.0 * offset / filler, 4) if filler else 0.0,
        needle=needle,
        needle_token_offset=offset,
        haystack_tokens=haystack,
        corpus_sha256=tc.corpus.sha256,
        tokenizer=builder.tok.name,
        template=template.name,
        haystack_token_start=start,
        needle_tokens=needle_tokens,
        corpus=tc.corpus.name,
        corpus_repeats=max(1, -(-atoms_used // tc.atoms)) if tc.complete else 1,
    )
