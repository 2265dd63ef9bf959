"""`niah plan --probe`: time prefills and decodes on the launch a group of lengths will run on.

Each launch group is probed on its own launch (its KV cache types, rope flags and slots), with the
prompt cache off. The probe lengths reach as far as the user allows: `--probe-up-to N` (N/4, N/2, N),
`--probe-lengths` as given, or by default a doubling ladder from 1/64 of what the launch can hold that
stops where the next rung would overrun a stated time budget. Every length is prefilled PROBE_ROUNDS
times, ascending then descending, so a load that drifts during the probe weighs on every length alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from niah.errors import EXIT_LAUNCH_INVALID, NiahError
from niah.run.fit import DecodePoint, PrefillPoint

if TYPE_CHECKING:
    from niah.launch.session import ServerSession, ServerSpec

PROBE_MIN_TOKENS = 256
PROBE_DECODE_TOKENS = 16
"""Tokens decoded after each probe prefill (end of text ignored), for decode time by context."""
PROBE_ROUNDS = 2
PROBE_BUDGET_S = 600.0
"""Default seconds of probing per launch (prefills and decodes, not the launch's start)."""
LADDER_START = 64
"""The budget ladder starts at 1/64 of the longest length the launch must hold, then doubles."""
HEADROOM = 64
"""Tokens kept free past a probe prompt beside the decoded ones (chat template)."""


@dataclass(frozen=True)
class ProbeResult:
    """What one launch's probe measured."""

    where: str
    """The server in words (`a launch of yarn-1m`, or the URL)."""
    args: tuple[str, ...]
    """The launch's llama-server flags (empty for --url)."""
    served: int | None
    """Per-slot context the probed server serves (/props)."""
    lengths: tuple[int, ...]
    prefills: tuple[PrefillPoint, ...]
    decodes: tuple[DecodePoint, ...]
    seconds: float
    """Wall time the probe's requests took."""
    stopped: str
    """How the lengths were chosen and, with a budget, where and why the ladder stopped."""

    @property
    def source(self) -> str:
        listed = ", ".join(f"{n:,}" for n in self.lengths)
        return f"a probe of {self.where} ({listed} tokens, {len(self.prefills)} prefills, prompt cache off)"


def probe_ceiling(longest: int, served: int | None) -> int:
    """The longest probe a launch allows: its longest cell length, within what a slot holds."""
    if served:
        longest = min(longest, served - PROBE_DECODE_TOKENS - HEADROOM)
    return longest


def up_to_lengths(up_to: int, ceiling: int) -> list[int]:
    """`--probe-up-to N`: N/4, N/2 and N (N held to what the launch allows)."""
    top = min(up_to, ceiling)
    return sorted({n for n in (top // 4, top // 2, top) if n >= PROBE_MIN_TOKENS} or {top})


def ladder(ceiling: int) -> list[int]:
    """Doubling lengths from 1/64 of `ceiling` (at least PROBE_MIN_TOKENS) up to `ceiling` itself."""
    rungs = [max(PROBE_MIN_TOKENS, ceiling // LADDER_START)]
    while rungs[-1] * 2 * 1.25 <= ceiling:  # the last doubling stays clear of the ceiling itself
        rungs.append(rungs[-1] * 2)
    if rungs[-1] < ceiling:
        rungs.append(ceiling)
    return [n for n in rungs if n <= ceiling] or [ceiling]


def next_rung_fits(spent_s: float, last: tuple[int, float], following: int, budget_s: float, rounds: int) -> bool:
    """Whether probing `following` tokens still fits the budget: the first round's time so far plus
    the next rung at its most (a request's prefill grows at most as n² and its decode as n, so
    t(m) ≤ t(n)·(m/n)²), times the rounds."""
    length, seconds = last
    return rounds * (spent_s + seconds * (following / length) ** 2) <= budget_s


def probe_session(
    session: ServerSession,
    text: str,
    *,
    where: str,
    ceiling: int,
    lengths: list[int] | None = None,
    budget_s: float | None = None,
    rounds: int = PROBE_ROUNDS,
    log: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Probe one server: the given `lengths`, or the budget ladder up to `ceiling`. One short warm-up
    request comes first and is not counted."""
    served = _served(session)
    wanted = sorted(n for n in lengths if n <= ceiling) if lengths else ladder(ceiling)
    if not wanted:
        raise NiahError(f"{where}: no probe length fits (it holds {ceiling:,} tokens for a probe)")
    ids = session.tokenize(_enough_text(text, max(wanted)))
    if len(ids) < max(wanted):
        raise NiahError(f"the probe text has only {len(ids):,} tokens, fewer than {max(wanted):,}")
    prefills: list[PrefillPoint] = []
    decodes: list[DecodePoint] = []

    def one(n: int) -> float:
        return _prefill(session, ids[:n], prefills, decodes, log)

    started = time.monotonic()
    _prefill(session, ids[: max(16, wanted[0] // 4)], [], [], None)  # warm-up
    if lengths:
        chosen, stopped, done = wanted, f"lengths given ({', '.join(f'{n:,}' for n in wanted)})", 0
    else:
        assert budget_s is not None
        chosen, stopped = climb_ladder(one, wanted, budget_s, rounds)
        done = 1  # the climb was the first, ascending round
    for r in range(done, rounds):
        for n in chosen if r % 2 == 0 else chosen[::-1]:
            one(n)
    return ProbeResult(where, tuple(session.spec.args), served, tuple(chosen), tuple(prefills), tuple(decodes),
                       time.monotonic() - started, stopped)


def climb_ladder(one: Callable[[int], float], rungs: list[int], budget_s: float, rounds: int) -> tuple[list[int], str]:
    """The first round up the ladder while the next rung fits the budget; the rungs probed and why
    the climb stopped."""
    chosen, seconds = [rungs[0]], one(rungs[0])
    spent = seconds
    for following in rungs[1:]:
        if not next_rung_fits(spent, (chosen[-1], seconds), following, budget_s, rounds):
            worst = seconds * (following / chosen[-1]) ** 2
            return chosen, (f"probe budget {budget_s:,.0f} s per launch: stopped before {following:,} tokens "
                            f"(up to {worst:,.0f} s a request)")
        chosen.append(following)
        seconds = one(following)
        spent += seconds
    return chosen, f"probe budget {budget_s:,.0f} s per launch: reached {chosen[-1]:,} tokens, all the launch holds"


def probe_launch(
    spec: ServerSpec, where: str, longest: int, text: str, *, up_to: int | None = None,
    lengths: list[int] | None = None, budget_s: float = PROBE_BUDGET_S, log: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Open `spec` (a managed launch is started, then stopped) and probe it up to its group's
    `longest` length: `lengths` as given, up to `up_to`, or the budget ladder."""
    from niah.launch.session import ServerSession

    with ServerSession(spec) as session:
        ceiling = probe_ceiling(longest, _served(session))
        if up_to:
            lengths = up_to_lengths(up_to, ceiling)
        result = probe_session(session, text, where=where, ceiling=ceiling, lengths=lengths, budget_s=budget_s, log=log)
    if up_to:
        held = "" if up_to <= ceiling else f", held to {ceiling:,}, the most this launch's cells need"
        result = replace(result, stopped=f"--probe-up-to {up_to:,}{held}")
    return result


def _served(session: ServerSession) -> int | None:
    settings = session.props().get("default_generation_settings") or {}
    return int(settings.get("n_ctx") or 0) or None


def _prefill(
    session: ServerSession, ids: list[int], prefills: list[PrefillPoint], decodes: list[DecodePoint],
    log: Callable[[str], None] | None,
) -> float:
    """One probe request: prefill `ids` (prompt cache off), decode PROBE_DECODE_TOKENS; its wall seconds."""
    content = session.detokenize(ids)
    chat = session.chat([{"role": "user", "content": content}], max_tokens=PROBE_DECODE_TOKENS,
                        cache_prompt=False, ignore_eos=True)
    if chat.status != "ok" or not chat.prompt_ms or not chat.prompt_n:
        raise NiahError(
            f"probe prefill of {len(ids):,} tokens at {session.url} failed: {chat.error or 'no timings returned'}",
            EXIT_LAUNCH_INVALID,
        )
    cached = chat.cache_n or 0
    length = cached + chat.prompt_n
    prefills.append(PrefillPoint(length=length, seconds=chat.prompt_ms / 1000, cached=cached))
    if chat.predicted_n and chat.predicted_ms and chat.predicted_n > 1:
        decodes.append(DecodePoint(context=length, tokens=chat.predicted_n, seconds=chat.predicted_ms / 1000))
    if log:
        decoded = f", {chat.predicted_n} decoded in {chat.predicted_ms / 1000:.2f} s" if chat.predicted_ms else ""
        log(f"probe: {chat.prompt_n:,} tokens computed ({cached:,} cached) in {chat.prompt_ms / 1000:.2f} s{decoded}")
    return chat.wall_s


def _enough_text(text: str, tokens: int) -> str:
    """A prefix of `text` long enough for `tokens` tokens (about 4 characters each, doubled), repeated
    when the text is shorter."""
    want = tokens * 8 + 1000
    return (text * (want // max(1, len(text)) + 1))[:want]
