"""Prompt-cache reuse during a run: how much a cell could reuse, priming a checkpoint where the
architecture needs one, and why a server reused less (the architecture facts: niah.launch.architecture).

Facts of the bundled llama.cpp (11434, tools/server/server-context.cpp) behind the rules:
- full attention drops the cache past the first differing token and keeps the rest;
- a sliding-window model keeps only the window, so without `--swa-full` nothing can be kept;
- a hybrid or recurrent model (qwen35: Gated DeltaNet layers) cannot roll its state back; it goes
  back to a context checkpoint, and this build checkpoints a prompt only where a user message
  starts and just before the prompt's end (4 + ubatch and 4 tokens before it). A haystack inside
  one user message gets no checkpoint from any flag. So niah *primes* such a server: before a
  cell it sends the cell's own prompt tokens up to the needle (`/completion`, no answer), the
  server checkpoints 4 tokens before that end, and the next cell, which shares the haystack up to
  this needle, restores it. A shared haystack's prompt is primed up to its last whole corpus atom,
  where the longer prompts cut from the same haystack part from it (niah.prompts.shared_haystack). The
  prompt sent is unchanged; the primer's computed tokens are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from niah.launch.architecture import FULL, RECURRENT, SLIDING_WINDOW

if TYPE_CHECKING:
    from niah.launch.gguf_meta import GGUFFacts
    from niah.launch.session import ServerSession
    from niah.prompts.haystack import Prompt

SHORTFALL = 0.5
"""A cell that reused less than this share of what it could is reported."""
MIN_REPORTED = 256
"""Reusable prefixes shorter than this many tokens are not worth a warning."""
PROBE_SHARED = 256
"""Tokens the two prompts of a reuse probe share."""
PROBE_TAIL = 4096 + 128
"""Tokens after the shared part: more than a hybrid server's checkpoint offset (4 + ubatch, for
ubatch up to 4,096), so no checkpoint of the first prompt lies inside the shared part."""


@dataclass(frozen=True)
class ServerModel:
    """What niah knows of the model a server runs, and where it learned it."""

    kind: str | None
    """FULL, SLIDING_WINDOW or RECURRENT; None when nothing told."""
    source: str
    """Where the facts came from, in words: `the server's GGUF PATH`, `--model PATH`, `--arch A`, a probe."""
    native_context: int | None = None
    facts: GGUFFacts | None = None

    @property
    def primes(self) -> bool:
        """True when niah must prime a checkpoint before each cell for the prefix to be reused."""
        return self.kind == RECURRENT

    def line(self) -> str:
        """One line for the run's output."""
        native = f", native context {self.native_context:,}" if self.native_context else ""
        prime = "; niah primes a checkpoint at each needle" if self.primes else ""
        return f"{self.kind or 'unknown'} model{native} (from {self.source}){prime}"


def probe_reuse(session: ServerSession, text: str, served: int) -> tuple[str | None, str]:
    """Ask the server itself: compute a prompt, then one that shares only its first PROBE_SHARED
    tokens, and see whether it reused them. A server that can roll its cache back (full attention,
    or sliding windows with --swa-full) reuses them; one that goes back only to a checkpoint
    (hybrid, recurrent) reuses nothing and needs primers. (kind, source in words)."""
    tail = max(64, min(PROBE_TAIL, (served - 64) // 2 - PROBE_SHARED))
    ids = session.tokenize(text)[: PROBE_SHARED + 2 * tail]
    first = session.prime(ids[: PROBE_SHARED + tail])
    second = session.prime(ids[:PROBE_SHARED] + ids[PROBE_SHARED + tail:])
    if first.status != "ok" or second.status != "ok" or second.cache_n is None:
        return None, f"a reuse probe that failed ({first.error or second.error or 'no timings'})"
    kind = FULL if second.cache_n >= PROBE_SHARED // 2 else RECURRENT
    return kind, f"a reuse probe of the server: {second.cache_n} of {PROBE_SHARED} shared tokens reused"


def first_plant(prompt: Prompt) -> int:
    """Haystack tokens before the first planted sentence (the needle, or a task's earliest piece)."""
    return min((p.token_offset for p in prompt.planted), default=prompt.needle_token_offset)


def priming_prefix(prompt: Prompt) -> int:
    """Prompt tokens the next cell can share with this one at most: up to the first planted sentence
    (a shared haystack: up to what follows its last whole atom, `Prompt.reuse_end`)."""
    if prompt.reuse_end is not None:
        return prompt.reuse_end
    return prompt.haystack_token_start + first_plant(prompt)


def reusable_tokens(previous: Prompt | None, prompt: Prompt) -> int:
    """Prompt tokens `prompt` shares with `previous` (the last prompt sent to the same server): the
    template and instructions before the haystack, then the haystack up to the earlier of the two
    prompts' `priming_prefix`; prompts cut from different haystacks share nothing counted."""
    if previous is None or previous.haystack_token_start != prompt.haystack_token_start:
        return 0
    if previous.needle.haystack != prompt.needle.haystack:
        return 0
    return min(priming_prefix(previous), priming_prefix(prompt))


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
