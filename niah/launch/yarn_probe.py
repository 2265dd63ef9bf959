"""The YaRN A/B probe: do the flags act? The same short prompt (well inside native) goes greedily to
the launch and to a reference launch of the same model without rope scaling (same KV types); the
top-k log-probabilities of the answer tokens come back (`n_probs`). YaRN rotates the slow rope
dimensions differently at every position, so the first answer token's distribution of a launch
whose flags act differs from the reference's; one whose flags are ignored gives the same numbers
(identical launches on one machine agree bit for bit, whatever their threads or context size).

A reference on another device (the CPU beside a GPU server) computes with other kernels, which
move the first token's log-probabilities by up to a third of what YaRN does (measured with flash
attention off and with 16-token batches, standing in for another device). There the probe asks two
references on that device, without rope scaling and with the server's own flags, and the server
counts as stretched when it is nearer the stretched one.

The launches run one after the other (a model that fills a GPU fits once), and each reference's
answer is kept as JSON beside its log, so a rerun reuses it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niah.errors import NiahError
from niah.launch.readback import rope_flags

PREDICT = 8
"""Answer tokens compared."""
TOP_K = 10
"""Log-probabilities per answer token (`n_probs`)."""
NO_EFFECT_BELOW = 0.01
"""|Δ log-probability| (nats) of the first answer token below which a launch counts as its reference
(one device): between identical launches, other thread counts or other context sizes it is 0 on
SmolLM2 and the qwen35 test bed; YaRN moves it by 0.029 (×1.1) to 0.35 (×1.5)
(benchmarks/yarn_probe_bench.py)."""
REFERENCE_TIMEOUT_S = 3600.0
"""Seconds the reference may take to answer: it may be a big model on a CPU."""
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
ROPE_ARGS = {  # rope flags (with their values) a reference without rope scaling leaves out
    "--rope-scaling", "--rope-scale", "--rope-freq-scale", "--yarn-orig-ctx", "--yarn-ext-factor",
    "--yarn-attn-factor", "--yarn-beta-fast", "--yarn-beta-slow", "--override-kv",
}
SIZE_ARGS = {"-c", "--ctx-size", "--parallel", "-np"}


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
    """Largest |Δ log-probability| over the tokens both top-k lists of the first answer token hold
    (later tokens follow generated text and add its noise); inf when they share none."""
    lp_b = dict(b.top[0])
    shared = [abs(lp - lp_b[token]) for token, lp in a.top[0] if token in lp_b]
    return max(shared) if shared else math.inf


def reference_args(args: list[str] | tuple[str, ...], prompt_tokens: int, stretched: bool = False) -> list[str]:
    """A reference launch's flags: the launch's, with one slot just big enough for the probe, KV types
    and the rest kept; without any rope flag or context override and with `--rope-scaling none` (so a
    file's own YaRN is off too), or, `stretched`, with the launch's own rope flags."""
    dropped = SIZE_ARGS if stretched else SIZE_ARGS | ROPE_ARGS
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in dropped:
            skip = True
        else:
            out.append(arg)
    size = max(1024, -(-(prompt_tokens + PREDICT) // 256) * 256)
    return ["-c", str(size), "--parallel", "1", *out, *([] if stretched else ["--rope-scaling", "none"])]


@dataclass(frozen=True)
class ProbeResult:
    """The probe's verdict: the launch against its reference (or its two references on another device)."""

    distance: float
    """|Δ log-probability| (nats) of the first answer token, launch against the reference without rope scaling."""
    threshold: float
    launch: ProbeAnswer
    reference: ProbeAnswer
    reference_seconds: float
    """Wall time of the references: start, answer, stop (0 when kept answers were reused)."""
    stretched: ProbeAnswer | None = None
    """The reference with the server's own flags, on the reference's device (another device only)."""

    @property
    def stretched_distance(self) -> float | None:
        return distance(self.launch, self.stretched) if self.stretched else None

    @property
    def applied(self) -> bool:
        if self.stretched is not None:
            return distance(self.launch, self.stretched) < self.distance
        return self.distance >= self.threshold

    def line(self) -> str:
        verdict = "the YaRN flags act" if self.applied else "ROPE_NO_EFFECT: the YaRN flags have no effect"
        if self.stretched is not None:
            how = (f"|Δ log-prob| of the first answer token {self.distance:.4g} nats to the reference without rope "
                   f"scaling, {self.stretched_distance:.4g} to the one with the server's flags, both on the reference's device")
        else:
            how = (f"|Δ log-prob| of the first answer token {self.distance:.4g} nats against the reference without rope "
                   f"scaling, threshold {self.threshold:g}")
        return f"yarn probe: {verdict} ({how}; launch {self.launch.seconds:.1f} s, references {self.reference_seconds:.1f} s)"

    def as_json(self) -> dict[str, Any]:
        finite = None if math.isinf(self.distance) else self.distance
        return {
            "applied": self.applied, "distance": finite, "threshold": self.threshold,
            "stretched_distance": self.stretched_distance, "reference_seconds": self.reference_seconds,
            "launch": self.launch.as_json(), "reference": self.reference.as_json(),
            "stretched": self.stretched.as_json() if self.stretched else None,
        }


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
                     server_bin: str | None = None, name: str = "yarn-reference") -> tuple[ProbeAnswer, list[int], float]:
    """A reference's answer: the one kept in `out_dir/NAME.json` for the same model, prompt and flags,
    else a launch of `model` with `args` (started, asked, stopped). Returns the answer, the prompt ids
    and the reference's wall seconds (0 when the kept one was reused)."""
    from niah.launch.session import ServerSession, ServerSpec

    key = {"model": model.name, "bytes": model.stat().st_size, "args": list(args), "prompt": prompt}
    path = out_dir / f"{name}.json"
    if prompt is not None and (kept := kept_reference(path, key)) is not None:
        return kept, prompt, 0.0
    started = time.monotonic()
    spec = ServerSpec(model=model, args=tuple(args), log_dir=out_dir, name=name, server_bin=server_bin,
                      request_timeout_s=REFERENCE_TIMEOUT_S)
    with ServerSession(spec) as session:
        prompt = prompt if prompt is not None else probe_prompt(session)
        answer = ask(session, prompt)
    keep_reference(path, {**key, "prompt": prompt}, answer)
    return answer, prompt, round(time.monotonic() - started, 1)


def write_result(result: ProbeResult, out_dir: Path) -> ProbeResult:
    """`result`, also written to `out_dir/probe.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(result.as_json(), indent=1) + "\n")
    return result
