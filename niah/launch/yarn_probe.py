"""The YaRN A/B probe: do the flags act? The same short prompt (well inside native) goes greedily to
the launch and to a reference launch of the same model without rope scaling (same KV types); the
top-k log-probabilities of the first answer tokens are compared. YaRN rotates the slow rope
dimensions differently at every position, so a launch whose flags act differs from the reference by
far more than the noise between two identical launches; one whose flags are ignored does not.

The two launches run one after the other (a model that fills a GPU fits once), and the reference's
answer is kept as JSON beside its log, so a rerun reuses it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from niah.errors import NiahError
from niah.launch.readback import rope_flags

PREDICT = 8
"""Answer tokens compared."""
TOP_K = 10
"""Log-probabilities per answer token (`n_probs`)."""
NO_EFFECT_BELOW = 0.01
"""Largest |Δ log-probability| (nats) below which the launch counts as the reference: measured noise
between identical or differently threaded CPU launches stays under 1e-3, a YaRN stretch of 1.5 moves
the shared top-k by more than 0.05 (see the issue note)."""
PROBE_TEXT = (
    "The lighthouse keeper kept a ledger of every ship that passed the point. Each entry gave the hour, "
    "the direction of the wind, the colour of the hull and a short remark about the sea. In winter the "
    "entries were few and the remarks were long; in summer the pages filled quickly with fishing boats, "
    "ferries and the occasional yacht. When the keeper retired, the ledgers went to the town library, "
    "where a schoolteacher read them one autumn and counted the ships by decade. She found that the "
    "number of ferries had doubled while the fishing boats had halved, and that the remarks about the "
    "sea had grown shorter as the years went on. She wrote a small book about it, which the library "
    "still lends. Asked what she had learned, she said that the ledger was really a diary of the weather, "
    "and that the ships were only the way the keeper had found to write it down. The last line of the "
    "last ledger says:"
)
PROBE_ARGS_DROPPED = {  # rope flags (and their values) a reference launch leaves out
    "--rope-scaling", "--rope-scale", "--rope-freq-scale", "--yarn-orig-ctx", "--yarn-ext-factor",
    "--yarn-attn-factor", "--yarn-beta-fast", "--yarn-beta-slow", "-c", "--ctx-size", "--parallel", "-np",
}


@dataclass(frozen=True)
class ProbeAnswer:
    """A greedy answer to the probe prompt with the top-k log-probabilities of each token."""

    tokens: tuple[int, ...]
    top: tuple[tuple[tuple[int, float], ...], ...]
    """Per answer token, the (token id, log-probability) pairs of the top k, best first."""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "top": [[list(p) for p in step] for step in self.top], "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeAnswer:
        top = tuple(tuple((int(i), float(lp)) for i, lp in step) for step in data["top"])
        return cls(tuple(int(t) for t in data["tokens"]), top, float(data.get("seconds", 0.0)))


def probe_prompt(session: Any) -> list[int]:
    """The probe prompt as the server's own token ids (so both launches see the same ids)."""
    return list(session.tokenize(PROBE_TEXT, add_special=True))


def ask(session: Any, prompt: list[int]) -> ProbeAnswer:
    """The server's greedy answer to `prompt`, with pre-sampling top-k log-probabilities."""
    started = time.monotonic()
    body = session.post("/completion", {
        "prompt": prompt, "n_predict": PREDICT, "n_probs": TOP_K, "temperature": 0.0, "cache_prompt": False,
        "seed": 0,
    }, 4 * len(prompt))
    steps = body.get("completion_probabilities")
    if not isinstance(steps, list) or not steps:
        raise NiahError(f"{session.url}/completion gave no completion_probabilities: is it llama-server?")
    tokens = tuple(int(s["id"]) for s in steps)
    top = tuple(tuple((int(p["id"]), float(p["logprob"])) for p in s.get("top_logprobs", [])) for s in steps)
    return ProbeAnswer(tokens, top, round(time.monotonic() - started, 3))


def distance(a: ProbeAnswer, b: ProbeAnswer) -> float:
    """Largest |Δ log-probability| over the tokens both top-k lists hold, answer token by answer
    token up to the first one the two chose differently (later ones follow different text); inf when
    a step shares no token."""
    worst = 0.0
    for chosen_a, chosen_b, top_a, top_b in zip(a.tokens, b.tokens, a.top, b.top):
        lp_b = dict(top_b)
        shared = [abs(lp - lp_b[token]) for token, lp in top_a if token in lp_b]
        if not shared:
            return math.inf
        worst = max(worst, *shared)
        if chosen_a != chosen_b:
            break
    return worst


def reference_args(args: list[str] | tuple[str, ...], prompt_tokens: int) -> list[str]:
    """The launch's flags without any rope flag or context override, one slot big enough for the
    probe, and `--rope-scaling none` (so a file's own YaRN is off too); KV types and the rest kept."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in PROBE_ARGS_DROPPED:
            skip = True
            continue
        if arg == "--override-kv":
            skip = True
            continue
        out.append(arg)
    size = max(1024, -(-(prompt_tokens + PREDICT) // 256) * 256)
    return ["-c", str(size), "--parallel", "1", *out, "--rope-scaling", "none"]


@dataclass(frozen=True)
class ProbeResult:
    """The probe's verdict: the launch against its reference."""

    distance: float
    """Largest |Δ log-probability| (nats) over the shared top-k of the first answer tokens."""
    threshold: float
    launch: ProbeAnswer
    reference: ProbeAnswer
    reference_seconds: float
    """Wall time of the reference: start, answer, stop (0 when a kept answer was reused)."""

    @property
    def applied(self) -> bool:
        return self.distance >= self.threshold

    def line(self) -> str:
        verdict = "the YaRN flags act" if self.applied else "ROPE_NO_EFFECT: the YaRN flags have no effect"
        return (f"yarn probe: {verdict} (largest |Δ log-prob| {self.distance:.4g} nats over the first {PREDICT} "
                f"answer tokens' top {TOP_K}, threshold {self.threshold:g}; launch {self.launch.seconds:.1f} s, "
                f"reference {self.reference_seconds:.1f} s)")

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["distance"] = None if math.isinf(self.distance) else self.distance
        data["launch"], data["reference"] = self.launch.as_json(), self.reference.as_json()
        data["applied"] = self.applied
        return data


def stretches(args: list[str] | tuple[str, ...]) -> bool:
    """Whether the flags ask for a rope stretch (the probe has something to show)."""
    flags = rope_flags(args)
    return flags.get("rope_scaling") != "none" and any(k in flags for k in ("rope_scale", "rope_freq_scale"))


def kept_reference(path: Path, key: dict[str, Any]) -> ProbeAnswer | None:
    """The reference answer kept at `path` for the same model, prompt and flags, if any."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return ProbeAnswer.from_json(data["answer"])


def keep_reference(path: Path, key: dict[str, Any], answer: ProbeAnswer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "answer": answer.as_json()}, indent=1) + "\n")


def reference_answer(model: Path, args: list[str], out_dir: Path, prompt: list[int] | None,
                     server_bin: str | None = None) -> tuple[ProbeAnswer, list[int], float]:
    """The reference's answer: the one kept in `out_dir` for the same model, prompt and flags, else a
    launch of `model` with `args` (started, asked, stopped). Returns the answer, the prompt ids and
    the reference's wall seconds (0 when the kept one was reused)."""
    from niah.launch.session import ServerSession, ServerSpec

    key = {"model": model.name, "bytes": model.stat().st_size, "args": list(args), "prompt": prompt}
    path = out_dir / "reference.json"
    if prompt is not None and (kept := kept_reference(path, key)) is not None:
        return kept, prompt, 0.0
    started = time.monotonic()
    spec = ServerSpec(model=model, args=tuple(args), log_dir=out_dir, name="yarn-reference", server_bin=server_bin)
    with ServerSession(spec) as session:
        prompt = prompt if prompt is not None else probe_prompt(session)
        answer = ask(session, prompt)
    keep_reference(path, {**key, "prompt": prompt}, answer)
    return answer, prompt, round(time.monotonic() - started, 1)


def compare(launch: ProbeAnswer, reference: ProbeAnswer, reference_seconds: float, out_dir: Path) -> ProbeResult:
    """The probe's result, also written to `out_dir/probe.json`."""
    result = ProbeResult(distance(launch, reference), NO_EFFECT_BELOW, launch, reference, reference_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(result.as_json(), indent=1) + "\n")
    return result
