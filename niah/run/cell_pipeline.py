"""One cell in its stages: build and count the prompt, prime the server's cache (hybrid models),
send it, score the answer. The runner hands `run_cell` to the dispatch loop; the loop's worker
threads call it, one cell at a time per server.

Every outcome is decided from evidence (DESIGN.md): the served context against the cell's length and
answer budget, the server's own count of the rendered prompt before sending, the served prompt
tokens, HTTP errors, the finish reason and the managed process's liveness.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

from niah.launch.client import ChatResult
from niah.launch.session import ServerUnreachable
from niah.prompts.haystack import LengthUnreachable, Prompt
from niah.prompts.needles import judge
from niah.publish.results import CellResult
from niah.run.reuse import priming_prefix, reusable_tokens

if TYPE_CHECKING:
    from niah.cells import Cell
    from niah.run.dispatch import RunState
    from niah.run.endpoints import Endpoint, PromptBuilder


def run_cell(state: RunState, endpoint: Endpoint, build: PromptBuilder, cell: Cell) -> CellResult:
    """One cell in its stages: build and count the prompt, prime the server's cache (hybrid models),
    send it, score the answer.

    Never sent: CLAMPED (the served context cannot hold it), TOKEN_MISMATCH (no prompt of exactly L
    server tokens), CRASH (the server died while the prompt was counted or primed), and a primer
    that stalled or failed (TIMEOUT, HTTP_ERROR).
    """
    config = state.config
    budget = config.task_budget(cell.task)
    needle = config.task(cell.task).needle(config.seed, cell.length, cell.depth, cell.trial, state.needle_spec)
    state.progress.start_cell(cell)
    base: dict[str, Any] = {
        "task": cell.task, "length": cell.length, "depth": cell.depth, "trial": cell.trial,
        "needle_value": ",".join(needle.expected),
        "prompt_tokens_planned": cell.length, "server_n_ctx": endpoint.served_n_ctx,
        "profile": endpoint.profile_name, "factor": endpoint.factor, "wall_s": 0.0,
    }
    if cell.length + budget > endpoint.served_n_ctx:
        return CellResult(**base, outcome="CLAMPED", error=(
            f"served per-slot context {endpoint.served_n_ctx:,} < {cell.length:,} + answer budget {budget}"
        ))
    started, waited = time.monotonic(), endpoint.session.wait_s
    try:
        prompt, counted, built_with = build(cell, needle)
    except LengthUnreachable as exc:
        return CellResult(**base, outcome="TOKEN_MISMATCH", error=str(exc))
    except ServerUnreachable as exc:
        return unreachable(endpoint, base, exc, "the prompt was counted")
    base.update(
        depth_actual=prompt.depth_actual, needle_offset=prompt.needle_token_offset,
        prompt_tokens_planned=prompt.prompt_tokens, tokenizer=built_with,
        planted=tuple(p.to_dict() for p in prompt.planted),
    )
    if counted != cell.length:
        return CellResult(**base, outcome="TOKEN_MISMATCH", error=f"server counts {counted} tokens, cell length is {cell.length}")
    if config.cache_reuse:
        base["cache_expected"] = reusable_tokens(endpoint.last_prompt, prompt)  # what the previous cell left
        if endpoint.model.primes:
            try:
                failed = prime(state, endpoint, prompt, base)
            except ServerUnreachable as exc:
                return unreachable(endpoint, base, exc, "the primer was sent")
            if failed:
                return failed
    chat = endpoint.session.chat(
        list(prompt.messages), max_tokens=budget, temperature=config.temperature, seed=config.seed,
        cache_prompt=config.cache_reuse, on_progress=state.progress.prefill,
    )
    if chat.prompt_n is not None:  # the server processed it: its cache now holds this prompt
        endpoint.last_prompt = prompt
    return scored(chat, prompt, endpoint, base, started, waited)


def prime(state: RunState, endpoint: Endpoint, prompt: Prompt, base: dict[str, Any]) -> CellResult | None:
    """Have a hybrid model's server compute the prompt up to its first planted sentence, so it
    checkpoints there for the next cell (niah.run.reuse); streamed with the chat's stall timeout and
    progress. Records prime_n, prime_cache_n and prime_ms in `base`; a failed primer is the cell's
    outcome (returned)."""
    ids = endpoint.session.tokenize(prompt.text, parse_special=True, add_special=True)
    primer = endpoint.session.prime(ids[: priming_prefix(prompt)], partial(state.progress.prefill, phase="prime"))
    base.update(prime_n=primer.prompt_n, prime_cache_n=primer.cache_n, prime_ms=primer.prompt_ms)
    if primer.status == "ok":
        endpoint.last_prompt = prompt  # the server's cache now holds this prompt up to its needle
        return None
    outcome, error, _ = decide_outcome(primer, prompt, endpoint)
    return CellResult(**base, outcome=outcome, error=f"primer: {error}")


def unreachable(endpoint: Endpoint, base: dict[str, Any], exc: ServerUnreachable, when: str) -> CellResult:
    """CRASH when the server died while `when`; a server that is alive but unreachable is a run error."""
    if not endpoint.died():
        raise exc
    return CellResult(**base, outcome="CRASH", error=f"llama-server died while {when} ({exc})")


def scored(
    chat: ChatResult, prompt: Prompt, endpoint: Endpoint, base: dict[str, Any], started: float, waited: float
) -> CellResult:
    """The cell's record from its chat: outcome, score, the server's timings, niah's overhead."""
    outcome, error, score = decide_outcome(chat, prompt, endpoint)
    wall = time.monotonic() - started
    server_s = ((chat.prompt_ms or 0) + (chat.predicted_ms or 0) + (base.get("prime_ms") or 0)) / 1000
    overhead = wall - (endpoint.session.wait_s - waited) - server_s
    base["wall_s"] = round(wall, 3)
    return CellResult(
        **base,
        outcome=outcome,
        score=score,
        answer=chat.answer,
        prompt_tokens_served=chat.prompt_tokens,
        prompt_n=chat.prompt_n,
        cache_n=chat.cache_n,
        prompt_ms=chat.prompt_ms,
        predicted_n=chat.predicted_n,
        predicted_ms=chat.predicted_ms,
        draft_n=chat.draft_n,
        draft_n_accepted=chat.draft_n_accepted,
        finish_reason=chat.finish_reason,
        error=error,
        overhead_s=round(max(0.0, overhead), 4),
    )


def decide_outcome(chat: ChatResult, prompt: Prompt, endpoint: Endpoint) -> tuple[str, str | None, float | None]:
    """Map a chat result to an outcome and its score (the fraction of expected values answered;
    None when not scored); a dropped connection is CRASH when the server is gone."""
    if chat.status == "context_error":
        return "CONTEXT_ERROR", chat.error, None
    if chat.status == "timeout":
        return "TIMEOUT", chat.error, None
    if chat.status != "ok":
        if endpoint.died():
            return "CRASH", f"llama-server died during the cell ({chat.error})", None
        return "HTTP_ERROR", chat.error, None
    if chat.prompt_tokens != prompt.prompt_tokens:
        return "TOKEN_MISMATCH", (
            f"server counted {chat.prompt_tokens} prompt tokens, planned {prompt.prompt_tokens}"
        ), None
    outcome, score, why = judge(chat.answer, prompt.needle)
    if outcome == "FAIL" and why is None and chat.finish_reason == "length":
        return "TRUNCATED", f"answer budget of {chat.predicted_n} tokens ran out", score
    return outcome, why, score
