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
from dataclasses import asdict, dataclass

from niah.errors import NiahError
from niah.prompts.corpus import Corpus
from niah.prompts.corpus_tokens import TokenizedCorpus, token_starts, tokenized
from niah.prompts.needles import Needle
from niah.prompts.templates import (
    ChatTemplate,
    bos_count,
    count_prompt,
    count_text,
    frame,
    get_template,
)
from niah.prompts.tokenizers import ServerTokenizer, Tokenizer

__all__ = ["PlantedPiece", "Prompt", "build", "get_template"]

Piece = str | tuple[int, int]
"""Prompt text in pieces: literal text, or a run [i, j) of whole corpus atoms."""
MAX_ROUNDS = 24


@dataclass(frozen=True)
class PlantedPiece:
    """One planted sentence where it landed in the haystack body."""

    text: str
    value: str
    role: str
    """`target`, `distractor`, `value`, `query`, `hop` (niah.prompts.tasks) or `key` (niah.prompts.shared_haystack)."""
    depth: float
    """Nominal depth, percent of the filler."""
    token_offset: int
    """Tokens of the body before its first token (other plants included)."""
    tokens: int
    depth_actual: float
    """100 * filler tokens before it / filler tokens (the body less every plant)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


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
    planted: tuple[PlantedPiece, ...] = ()
    """Every planted sentence where it landed, the target first."""
    reuse_end: int | None = None
    """Shared haystack: prompt tokens before what follows its last whole corpus atom (the rest of
    the haystack's longer prompts start the same way); None = up to the first planted sentence."""


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
        self.plants = needle.planted
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

    def assemble(self, n: int, tail: str, ks: list[int]) -> tuple[list[Piece], list[int]]:
        """Pieces of the whole prompt and the index of each plant's piece (plant order); plant i
        follows filler unit ks[i] (0..n before atom k, n + 1 after the tail)."""
        tc = self.tc
        order = sorted(range(len(ks)), key=lambda i: (ks[i], i))
        units: list[Piece] = []
        at: dict[int, int] = {}
        start = 0
        for i in order:
            k = min(ks[i], n) if ks[i] <= n else n + 1
            if k <= n and start < k:
                units.append((start, k))
                start = k
            if k > n and start < n + 1:
                units += [(start, n)] if start < n else []
                units += [tail] if tail else []
                start = n + 1
            at[i] = len(units)
            units.append(self.plants[i].text)
        if start < n:
            units.append((start, n))
        if start <= n and tail:
            units.append(tail)
        plant_at = set(at.values())
        for index in sorted(plant_at):
            before = units[index - 1] if index else None
            after = units[index + 1] if index + 1 < len(units) else None
            prev_text = before if isinstance(before, str) else tc.atom_text(before[1] - 1) if before else ""
            next_text = after if isinstance(after, str) else tc.atom_text(after[0]) if after else ""
            lead = " " if prev_text and not prev_text[-1].isspace() else ""
            trail = " " if next_text and index + 1 not in plant_at and not next_text[0].isspace() else ""
            units[index] = lead + str(units[index]) + trail
        last = units[-1]
        last_text = last if isinstance(last, str) else tc.atom_text(last[1] - 1)
        outro = ("" if last_text.endswith("\n") else "\n\n") + self.needle.question + self.tail
        return [self.head, *units, outro], [at[i] + 1 for i in range(len(ks))]

    def position(self, n: int, tail_tokens: int, depth: float) -> int:
        """Filler unit index a plant follows: the boundary nearest below depth (n + 1 = after the tail)."""
        filler = self.tc.cum_at(n) + tail_tokens
        target = depth / 100.0 * filler
        if tail_tokens and target >= filler - 1e-9:
            return n + 1
        return min(self.tc.locate(math.floor(target + 1e-9)), n)

    def positions(self, n: int, tail_tokens: int, depth: float) -> list[int]:
        """Each plant's filler unit index; `apart` plants move to the nearest boundary no other
        plant of the target or `apart` kind holds, when the filler has one."""
        last = n + 1 if tail_tokens else n
        ks = [
            min(p.atom, n) if p.atom is not None else self.position(n, tail_tokens, depth if p.depth is None else p.depth)
            for p in self.plants
        ]
        taken = {ks[0]}
        for i, plant in enumerate(self.plants[1:], 1):
            if not plant.apart:
                continue
            k = ks[i]
            free = [c for c in range(last + 1) if c not in taken]
            if k in taken and free:
                k = min(free, key=lambda c: (abs(c - ks[i]), c))
            ks[i] = k
            taken.add(k)
        return ks

    def text_of(self, pieces: list[Piece]) -> str:
        return "".join(p if isinstance(p, str) else self.tc.span_text(*p) for p in pieces)


class LengthUnreachable(NiahError):
    """No filler gives a prompt of exactly the asked length with this tokenizer."""


class FrameChanged(NiahError):
    """The template renders another text around the message than when its frame was taken."""


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
    (always done for server tokenizers). A template whose frame changed since it was taken (one that
    prints the date, past midnight) is framed again and the prompt built once more."""
    try:
        return _build(length, depth, tokenizer, corpus, needle, template, verify)
    except FrameChanged:
        _FRAMES.pop(template, None)
        return _build(length, depth, tokenizer, corpus, needle, template, verify)


def _build(
    length: int, depth: float, tokenizer: Tokenizer, corpus: Corpus, needle: Needle, template: ChatTemplate,
    verify: bool,
) -> Prompt:
    if not isinstance(length, int) or length <= 0:
        raise NiahError(f"length must be a positive integer, not {length!r}")
    if not (isinstance(depth, (int, float)) and 0.0 <= depth <= 100.0):
        raise NiahError(f"depth {depth!r} is outside 0-100")
    builder = _Builder(tokenizer, corpus, needle, template)
    bare = builder.assemble(0, "", [0] * len(builder.plants))[0]
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
    frozen: list[int] | None = None
    for _ in range(MAX_ROUNDS):
        n, tail, tail_tokens = builder.filler(target)
        ks = frozen or builder.positions(n, tail_tokens, float(depth))
        pieces, plant_at = builder.assemble(n, tail, ks)
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
        if target + step in seen and frozen is None:
            # a plant crossing a sentence boundary changed the count by more than the step: keep
            # the plants where they are and let the truncated last sentence absorb the rest
            frozen = ks
            target = max(0, target + step)
        else:
            target = max(0, target + (step if target + step not in seen else step + (1 if step > 0 else -1)))
        seen.add(target)
    else:
        raise LengthUnreachable(f"could not build a prompt of exactly {length} tokens with {tokenizer.name}")
    return _finish(builder, pieces, plant_at, n, tail, length, float(depth), template)


def _server_offsets(builder: _Builder, pieces: list[Piece], plant_at: list[int]) -> tuple[int, int, list[tuple[int, int]]] | None:
    """Prompt tokens before the body and before the body's end, and each plant's (first token, end),
    read from the server's own tokenization of the whole prompt (None when its pieces do not spell
    the text)."""
    text = builder.text_of(pieces)
    offsets = token_starts(builder.tok, text, add_special=False, parse_special=True)  # type: ignore[arg-type]
    if offsets is None:
        return None

    def token_at(chars: int) -> int:
        return builder.bos + bisect.bisect_left(offsets, len(text[:chars].encode("utf-8")), 0, len(offsets) - 1)

    spans = []
    for index in plant_at:
        start = len(builder.text_of(pieces[:index]))
        spans.append((token_at(start), token_at(start + len(str(pieces[index]).rstrip()))))
    return token_at(len(builder.head)), token_at(len(text) - len(str(pieces[-1]))), spans


def _counted_offsets(builder: _Builder, pieces: list[Piece], plant_at: list[int]) -> tuple[int, int, list[tuple[int, int]]]:
    """The same offsets as `_server_offsets`, counted piece by piece."""
    spans = [
        (
            builder.bos + builder.count(pieces[:index]),
            builder.bos + builder.count([*pieces[:index], str(pieces[index]).rstrip()]),
        )
        for index in plant_at
    ]
    return builder.bos + builder.count(pieces[:1]), builder.bos + builder.count(pieces[:-1]), spans


def _finish(
    builder: _Builder, pieces: list[Piece], plant_at: list[int], n: int, tail: str,
    length: int, depth: float, template: ChatTemplate,
) -> Prompt:
    """Measure offsets, check every planted value is where it was planted only, check the template is
    verbatim, and make the Prompt."""
    shared = bool(builder.needle.haystack)
    # a shared haystack's prompt is the longer prompts' prefix up to its last whole atom
    follow = [1 + max((i for i, p in enumerate(pieces) if isinstance(p, tuple)), default=0)] if shared else []
    server = _server_offsets(builder, pieces, [*plant_at, *follow]) if builder.full_count else None
    start, body_end, spans = server or _counted_offsets(builder, pieces, [*plant_at, *follow])
    reuse_end = spans.pop()[0] if shared else None
    body = builder.text_of(pieces[1:-1])
    needle = builder.needle
    plants = builder.plants
    for value in dict.fromkeys([*needle.expected, *(p.value for p in plants)]):
        if value and body.count(value) != sum(p.text.count(value) for p in plants):
            raise NiahError(
                f"the corpus {builder.tc.corpus.name} already contains the needle value {value!r}; "
                "use another seed or corpus"
            )
    head, _ = _frame(template)
    content = builder.head[len(head):] + body + pieces[-1][: len(pieces[-1]) - len(builder.tail)]  # type: ignore[index]
    messages = ({"role": "user", "content": content},)
    text = head + content + builder.tail
    if template.name != "builtin" and template.render(list(messages)) != text:
        if frame(template) != (head, builder.tail):
            raise FrameChanged(
                f"template {template.name} renders another text around the message each time (the time of day?); "
                "cannot count it exactly"
            )
        raise NiahError(f"template {template.name} changes the message text; cannot count it exactly")
    haystack = body_end - start
    filler = haystack - sum(end - begin for begin, end in spans)
    planted = []
    for plant, (begin, end) in zip(plants, spans):
        offset = begin - start
        inside = sum(e - b for b, e in spans if b < begin)  # plant tokens before this one
        planted.append(PlantedPiece(
            text=plant.text, value=plant.value, role=plant.role,
            depth=depth if plant.depth is None else plant.depth,
            token_offset=offset, tokens=end - begin,
            depth_actual=round(100.0 * (offset - inside) / filler, 4) if filler else 0.0,
        ))
    target = planted[0]
    atoms_used = n + (1 if tail else 0)
    tc = builder.tc
    return Prompt(
        messages=messages,
        text=text,
        prompt_tokens=length,
        length=length,
        depth_nominal=depth,
        depth_actual=target.depth_actual,
        needle=needle,
        needle_token_offset=target.token_offset,
        haystack_tokens=haystack,
        corpus_sha256=tc.corpus.sha256,
        tokenizer=builder.tok.name,
        template=template.name,
        haystack_token_start=start,
        needle_tokens=target.tokens,
        corpus=tc.corpus.name,
        corpus_repeats=max(1, -(-atoms_used // tc.atoms)) if tc.complete else 1,
        planted=tuple(planted),
        reuse_end=reuse_end,
    )
