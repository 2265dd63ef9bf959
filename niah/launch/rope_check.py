"""The rope verdict: a launch's intent (niah.launch.yarn.RopeIntent) against what llama.cpp reads
back (niah.launch.readback), before any prefill. Each mismatch is named with a one-line fix; any
mismatch makes the verdict ROPE_MISMATCH (exit 5), as a short context makes CLAMPED (exit 3)."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niah.errors import EXIT_ROPE_MISMATCH, NiahError
from niah.launch.flag_numbers import is_plain_decimal
from niah.launch.gguf_meta import GGUFFacts
from niah.launch.memory import FIT_PARAMS, find_fit_params
from niah.launch.readback import RopeReadback, fit_params_readback, parse_readback, rope_flags
from niah.launch.server import find_server_binary
from niah.launch.yarn import RopeIntent, choose_rope_scale

ROPE_OK = "OK"
ROPE_MISMATCH = "ROPE_MISMATCH"
FREQ_SCALE_TOLERANCE = 1e-5
"""Relative: llama.cpp prints freq_scale with 6 significant digits."""


@dataclass(frozen=True)
class RopeProblem:
    """One way the rope llama.cpp uses differs from the intent."""

    name: str
    """ORIG_CTX, FREQ_SCALE, NOT_YARN, FILE_ROPE, BEYOND_STRETCH or SCALE_BELOW_1."""
    message: str
    """What differs, then `fix:` and the flag that fixes it, on one line."""


@dataclass(frozen=True)
class RopeVerdict:
    """The intent, the read-back and what differs between them."""

    intent: RopeIntent
    readback: RopeReadback
    problems: tuple[RopeProblem, ...]
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        return ROPE_MISMATCH if self.problems else ROPE_OK

    def lines(self) -> list[str]:
        """The verdict line, each problem with its fix, then the notes."""
        head = (f"rope {self.verdict}: meant {self.intent.describe()} ({self.intent.origin}); "
                f"llama.cpp reads back {self.readback.summary()}")
        return [head, *(f"  {p.name}: {p.message}" for p in self.problems), *(f"  note: {n}" for n in self.notes)]

    def as_json(self) -> dict[str, Any]:
        """For results.jsonl's header and `--json` outputs."""
        return {
            "verdict": self.verdict,
            "intent": {"native": self.intent.native, "rope_scale": self.intent.rope_scale,
                       "slot_context": self.intent.slot_context, "origin": self.intent.origin},
            "readback": self.readback.as_json(),
            "problems": [{"name": p.name, "message": p.message} for p in self.problems],
            "notes": list(self.notes),
            "lines": self.lines(),
        }


def intent_from_flags(argv: list[str] | tuple[str, ...], facts: GGUFFacts, needed: int) -> RopeIntent:
    """What a server's own flags mean, for a server niah did not start: the stretch its rope flags
    state (or the file's own, when no flag replaces it) over the model's native context."""
    flags = rope_flags(argv)
    native = facts.native_context or facts.context_length or 0
    scale: str | None = flags.get("rope_scale")
    for flag, text in (("--rope-scale", scale), ("--rope-freq-scale", flags.get("rope_freq_scale"))):
        if text is not None and not is_plain_decimal(text):
            raise NiahError(f"--server-args {flag} {text}: give a plain decimal, e.g. 4 or 3.8531 (llama-server's "
                            "std::stof stops at the first character it does not take: 1_000 is 1 to it)")
    if scale is None and flags.get("rope_freq_scale"):
        freq_scale = float(flags["rope_freq_scale"])
        scale = f"{1 / freq_scale:.6g}" if freq_scale else None  # 0: llama.cpp keeps the model's own
    if flags.get("rope_scaling") == "none":
        scale = None
    elif scale is None and facts.file_rope is not None:
        scale = f"{facts.file_rope.factor:g}"
    return RopeIntent(native, scale, needed, "the server's flags", facts.file_rope)


def check_rope(intent: RopeIntent, readback: RopeReadback, argv: list[str] | tuple[str, ...]) -> RopeVerdict:
    """Compare `intent` with `readback` (llama.cpp's, for the launch flags `argv`)."""
    problems: list[RopeProblem] = []
    stretch = readback.stretch or 1.0
    flags = rope_flags(argv)
    scaled = readback.scaling_type in ("yarn", "linear") and abs(stretch - 1.0) > FREQ_SCALE_TOLERANCE
    if readback.freq_scale is not None and readback.freq_scale > 1 + FREQ_SCALE_TOLERANCE:
        problems.append(RopeProblem("SCALE_BELOW_1", (
            f"freq_scale {readback.freq_scale:g} squeezes positions ×{readback.freq_scale:.4g} (rope scale "
            f"{stretch:.4g}, below 1); fix: drop --rope-scale/--rope-freq-scale, or give a scale above 1")))
    if intent.rope_scale is None:
        if scaled:
            problems.append(_unmeant_stretch(intent, readback, flags, stretch))
    else:
        problems += _yarn_problems(intent, readback, stretch)
    served = readback.served
    limit = intent.native * (stretch if scaled else 1.0)
    if served is not None and served > limit + 1:
        scale = choose_rope_scale(served, intent.native)
        problems.append(RopeProblem("BEYOND_STRETCH", (
            f"each slot serves {served:,} tokens, beyond the native {intent.native:,} × stretch {stretch:.4g} = "
            f"{int(limit):,}: positions past it were never trained; fix: --rope-scaling yarn --rope-scale "
            f"{scale} --yarn-orig-ctx {intent.native}, or -c {int(limit)}")))
    return RopeVerdict(intent, readback, tuple(problems), tuple(_notes(intent, readback, argv, problems)))


def _unmeant_stretch(intent: RopeIntent, readback: RopeReadback, flags: dict[str, str], stretch: float) -> RopeProblem:
    """A stretch where none is meant: the file's own scaling, or one from elsewhere (environment)."""
    if intent.file_rope is not None and "rope_scaling" not in flags:
        return RopeProblem("FILE_ROPE", (
            f"the file's own {intent.file_rope.describe()} applies (freq_scale {readback.freq_scale:g}) where "
            f"{intent.origin} means no stretch; fix: add --rope-scaling none"))
    return RopeProblem("FILE_ROPE" if intent.file_rope else "UNASKED_STRETCH", (
        f"llama.cpp stretches ×{stretch:.4g} ({readback.scaling_type}, freq_scale {readback.freq_scale:g}) where "
        f"{intent.origin} means no stretch; fix: --rope-scaling none (and no LLAMA_ARG_ROPE_* in the server's environment)"))


def _yarn_problems(intent: RopeIntent, readback: RopeReadback, stretch: float) -> list[RopeProblem]:
    """A meant YaRN stretch S over native N against what llama.cpp applies."""
    problems: list[RopeProblem] = []
    scale = intent.rope_scale
    if readback.scaling_type != "yarn":
        problems.append(RopeProblem("NOT_YARN", (
            f"llama.cpp scales with {readback.scaling_type or 'an unknown type'}, not YaRN; "
            f"fix: add --rope-scaling yarn")))
    meant = 1.0 / intent.factor
    if readback.freq_scale is None or abs(readback.freq_scale - meant) > meant * FREQ_SCALE_TOLERANCE:
        problems.append(RopeProblem("FREQ_SCALE", (
            f"freq_scale {readback.freq_scale if readback.freq_scale is not None else 'unknown'} is not "
            f"1/{scale} = {meant:.6g}: llama.cpp stretches ×{stretch:.4g}, not ×{scale}; fix: --rope-scale {scale} "
            f"(a later --rope-freq-scale or LLAMA_ARG_ROPE_SCALE in the environment replaces it)")))
    orig = readback.n_ctx_orig_yarn
    if readback.scaling_type == "yarn" and orig != intent.native:
        problems.append(RopeProblem("ORIG_CTX", (
            f"YaRN's original context is {orig:,}, " if orig is not None else "YaRN's original context is unknown, "
        ) + f"not the model's native {intent.native:,}; fix: add --yarn-orig-ctx {intent.native}"))
    return problems


def _notes(intent: RopeIntent, readback: RopeReadback, argv: list[str] | tuple[str, ...],
           problems: list[RopeProblem]) -> list[str]:
    notes: list[str] = []
    file_rope = intent.file_rope
    flags = rope_flags(argv)
    if file_rope is not None and flags:
        uses = f"{readback.scaling_type} ×{readback.stretch or 1:.4g}" + (
            f" over {readback.n_ctx_orig_yarn:,}" if readback.scaling_type == "yarn" and readback.n_ctx_orig_yarn else "")
        meant = "as meant" if not problems else f"but {intent.describe()} is meant"
        notes.append(f"the flags replace the file's own {file_rope.describe()}: llama.cpp uses the flags ({uses}), {meant}")
    overrides_context = any(".context_length=int:" in a for a in argv)
    if readback.readjusted and overrides_context:
        notes.append(f"this build re-adjusts n_ctx_train from the YaRN flags itself (to {readback.n_ctx_train:,}): "
                     "--override-kv …context_length is redundant here; niah keeps it for older builds (the seed's)")
    return notes


def verify_launch(intent: RopeIntent, model: Path, args: list[str] | tuple[str, ...], facts: GGUFFacts | None,
                  server_bin: str | None = None) -> RopeVerdict:
    """Read a launch's rope back with llama-fit-params (beside llama-server; no weights loaded) and
    check it against `intent`; ValueError says why there is no read-back."""
    binary = find_server_binary(server_bin)
    tool = find_fit_params(binary)
    if tool is None:
        raise ValueError(f"no {FIT_PARAMS} beside {binary}")
    return check_rope(intent, fit_params_readback(tool, model, args, facts), args)


def refuse_mismatch(verdict: RopeVerdict, launch: str) -> None:
    """NiahError (exit 5) naming the first problem, when the verdict is ROPE_MISMATCH."""
    if verdict.problems:
        first = verdict.problems[0]
        more = f" (and {len(verdict.problems) - 1} more above)" if len(verdict.problems) > 1 else ""
        raise NiahError(f"{launch}: {ROPE_MISMATCH} {first.name}: {first.message}{more}", EXIT_ROPE_MISMATCH)


def launch_record(intent: RopeIntent | None, model: Path, args: list[str] | tuple[str, ...], facts: GGUFFacts | None,
                  server_bin: str | None, launch: str, say: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """A managed launch's read-back and verdict for results.jsonl's header, its lines given to `say`;
    a mismatch is refused (exit 5) before the server starts. None, said on stderr, when llama.cpp
    cannot be asked (no llama-fit-params, no binary): nothing is recorded then, so a later resume
    that can ask is not refused for it."""
    if intent is None:
        return None
    try:
        verdict = verify_launch(intent, model, args, facts, server_bin)
    except (ValueError, NiahError) as exc:
        print(f"niah: rope read-back [{launch}] unavailable: {exc}", file=sys.stderr, flush=True)
        return None
    for line in verdict.lines() if say else ():
        say(f"[{launch}] {line}")
    refuse_mismatch(verdict, launch)
    return verdict.as_json()


def server_flags(command: str) -> tuple[list[str], str | None]:
    """A server's command line split into its flags (binary, --host and --port dropped) and its
    model (`-m`), as `niah check --server-args` takes them."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise NiahError(f"--server-args: {exc}") from None
    if words and not words[0].startswith("-"):
        words = words[1:]
    flags: list[str] = []
    model = None
    skip_next = False
    for word, following in zip(words, [*words[1:], None]):
        if skip_next:
            skip_next = False
            continue
        if word in ("-m", "--model", "--host", "--port"):
            model = following if word in ("-m", "--model") else model
            skip_next = True
            continue
        flags.append(word)
    return flags, model


def check_server_rope(facts: GGUFFacts, model: Path, argv: list[str] | None, log_text: str | None,
                      needed: int, server_bin: str | None = None) -> RopeVerdict:
    """The verdict for a server niah did not start: llama-fit-params on its flags when they are given,
    else its log's own rope lines (llama-server at -lv 4 or -v), the flags taken from niah's first log
    line when niah launched it; ValueError when neither can tell."""
    if argv is not None:
        return verify_launch(intent_from_flags(argv, facts, needed), model, argv, facts, server_bin)
    if log_text is None:
        raise ValueError("give the server's flags (--server-args) or its log (--log, written at -lv 4 or -v)")
    launched = re.search(r"^# niah launched: (.*)$", log_text, re.MULTILINE)
    flags = server_flags(launched.group(1))[0] if launched else []
    readback = parse_readback(log_text, flags, facts, "server log")
    if launched:
        intent = intent_from_flags(flags, facts, needed)
    else:  # only the log: the stretch it shows is taken as meant, and checked for being YaRN over native
        stretch = readback.stretch or 1.0
        scale = f"{stretch:.6g}" if abs(stretch - 1) > FREQ_SCALE_TOLERANCE else None
        intent = RopeIntent(facts.native_context or 0, scale, needed, "the server's log", facts.file_rope)
    return check_rope(intent, readback, flags)
