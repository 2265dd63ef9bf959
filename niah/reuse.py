"""Prompt-cache reuse by architecture: what a launch needs so llama-server can reuse the prefix two
cells share, how much a cell could reuse, and why a server reused less.

Facts of the bundled llama.cpp (11434, tools/server/server-context.cpp) behind the rules:
- full attention drops the cache past the first differing token and keeps the rest;
- a sliding-window model keeps only the window, so without `--swa-full` nothing can be kept;
- a hybrid or recurrent model (qwen35: Gated DeltaNet layers) cannot roll its state back; it goes
  back to a context checkpoint, and this build checkpoints a prompt only where a user message
  starts and just before the prompt's end (4 + ubatch and 4 tokens before it). A haystack inside
  one user message gets no checkpoint from any flag. So niah *primes* such a server: before a
  cell it sends the cell's own prompt tokens up to the needle (`/completion`, no answer), the
  server checkpoints 4 tokens before that end, and the next cell, which shares the haystack up to
  this needle, restores it. The prompt sent is unchanged; the primer's computed tokens are counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from niah.gguf_meta import GGUFFacts
    from niah.haystack import Prompt

FULL, SLIDING_WINDOW, RECURRENT = "full attention", "sliding window", "recurrent"
SHORTFALL = 0.5
"""A cell that reused less than this share of what it could is reported."""
MIN_REPORTED = 256
"""Reusable prefixes shorter than this many tokens are not worth a warning."""


def reuse_kind(facts: GGUFFacts | None) -> str | None:
    """How the model's cache can be reused: FULL, SLIDING_WINDOW or RECURRENT (None when unknown)."""
    if facts is None:
        return None
    if facts.full_attention_interval or 0 in facts.head_count_kv:  # layers without attention are recurrent
        return RECURRENT
    if facts.sliding_window:
        return SLIDING_WINDOW
    return FULL


def needs_priming(facts: GGUFFacts | None) -> bool:
    """True for models whose prefix reuse needs a checkpoint niah makes by priming (module doc)."""
    return reuse_kind(facts) == RECURRENT


def first_plant(prompt: Prompt) -> int:
    """Haystack tokens before the first planted sentence (the needle, or a task's earliest piece)."""
    return min((p.token_offset for p in prompt.planted), default=prompt.needle_token_offset)


def priming_prefix(prompt: Prompt) -> int:
    """Prompt tokens before the first planted sentence: the most the next cell can share with this one."""
    return prompt.haystack_token_start + first_plant(prompt)


def reusable_tokens(previous: Prompt | None, prompt: Prompt) -> int:
    """Prompt tokens `prompt` shares with `previous` (the last prompt sent to the same server):
    the template and instructions before the haystack, then the haystack up to the earlier of the
    two prompts' first planted sentences."""
    if previous is None or previous.haystack_token_start != prompt.haystack_token_start:
        return 0
    return prompt.haystack_token_start + min(first_plant(previous), first_plant(prompt))


def shortfall(expected: int, cache_n: int | None) -> bool:
    """True when the server reused much less than the cell could have."""
    return expected >= MIN_REPORTED and (cache_n or 0) < SHORTFALL * expected


def shortfall_reason(kind: str | None, server_args: list[str] | tuple[str, ...] | None) -> str:
    """Why a server reused less than it could, and the flag that helps where one does."""
    args = list(server_args or ())
    if kind == SLIDING_WINDOW and "--swa-full" not in args:
        return "a sliding-window model keeps only its window: launch llama-server with --swa-full"
    if kind == RECURRENT:
        return (
            "a hybrid/recurrent model goes back only to a context checkpoint (niah primes one at each needle; "
            "see the server log's 'context checkpoint' lines, shown with -lv 4)"
        )
    return "the server did not keep the previous prompt (another client, several slots, or a restart)"
