"""Build the seed grid's 25 prompts with `qwen3.6`, niah's way and the naive way, and print both times.

Grid: lengths 131,072 / 262,144 / 393,216 / 524,288 / 1,010,000 x depths 0-100 step 25.
niah: the tokenized corpus comes from the on-disk cache (warmed first, timed separately), and
each prompt re-encodes only the places where pieces meet. Naive (what peers do): for every cell,
tokenize enough corpus text, cut it to the budget, insert the needle at a sentence boundary by
token position, decode, render, and tokenize the whole prompt once more to count it.

Run: python benchmarks/haystack_bench.py
"""

from __future__ import annotations

import time

from niah.prompts.corpus import get_corpus
from niah.prompts.corpus_tokens import tokenized
from niah.prompts.haystack import build, get_template
from niah.prompts.needles import make_needle
from niah.prompts.templates import count_prompt, frame
from niah.prompts.tokenizers import get_tokenizer

LENGTHS = (131_072, 262_144, 393_216, 524_288, 1_010_000)
DEPTHS = (0, 25, 50, 75, 100)


def naive_prompt(length: int, depth: float, tokenizer, corpus_text: str, needle, head: str, tail: str) -> int:
    """One cell the naive way; returns the re-counted prompt length (about `length`, not exact)."""
    fixed = count_prompt(tokenizer, head + needle.intro + "\n\n" + needle.text + "\n\n" + needle.question + tail)
    ids = tokenizer.encode(corpus_text[: (length - fixed) * 6])[: length - fixed]
    cut = int(len(ids) * depth / 100)
    before = tokenizer.decode(ids[:cut])
    stop = before.rfind(". ")
    before = before[: stop + 1] if stop >= 0 else ""
    after = tokenizer.decode(ids)[len(before):]
    body = f"{before} {needle.text}{after}".strip()
    return count_prompt(tokenizer, f"{head}{needle.intro}\n\n{body}\n\n{needle.question}{tail}")


def main() -> None:
    started = time.perf_counter()
    tokenizer = get_tokenizer("qwen3.6")
    corpus = get_corpus("builtin")
    tc = tokenized(corpus, tokenizer)
    warm_s = time.perf_counter() - started
    template = get_template("builtin")
    needles = {(L, d): make_needle(0, L, d, 0) for L in LENGTHS for d in DEPTHS}

    started = time.perf_counter()
    for (length, depth), needle in needles.items():
        prompt = build(length, depth, tokenizer, corpus, needle, template)
        assert prompt.prompt_tokens == length
    fast_s = time.perf_counter() - started

    head, tail = frame(template)
    started = time.perf_counter()
    misses = 0
    for (length, depth), needle in needles.items():
        misses += naive_prompt(length, depth, tokenizer, corpus.text, needle, head, tail) != length
    naive_s = time.perf_counter() - started

    print(f"corpus: builtin {corpus.sha256[:12]}, {tc.total:,} qwen3.6 tokens in {tc.atoms:,} atoms")
    print(f"load (tokenizer, cached corpus, cached token counts): {warm_s:.3f} s")
    print(f"niah build, 25 prompts, each exactly L tokens: {fast_s:.3f} s")
    print(f"naive build, 25 prompts (re-tokenize per cell): {naive_s:.3f} s ({misses} of 25 not exactly L)")
    print(f"speed-up: {naive_s / fast_s:.1f}x; niah total with corpus load: {warm_s + fast_s:.3f} s")


if __name__ == "__main__":
    main()
