"""The YaRN A/B probe's separation: how far a launch with YaRN flags moves the top-k log-probabilities
of the probe prompt's first answer tokens from a reference without rope scaling, against the noise
between launches that should agree.

Per model (SmolLM2-135M, native 8,192; the qwen35 test bed, native 4,096, IM-RoPE sections):
  identical   the reference launched twice with the same flags;
  threads     the reference with -t 1 against the default threads;
  kernels     the reference with flash attention off, and with 16-token batches (other kernels and
              summation orders: a stand-in for a reference computed on another device);
  big -c      the launch's own -c without any rope flag against the reference's small -c;
  no effect   the YaRN flags with --rope-scaling none after them (llama.cpp keeps freq_scale 1);
  YaRN ×S     each stretch, launched as niah's profiles launch it;
  other device  a server with YaRN ×1.5 (and one without) against two references with flash attention
              off, one without rope scaling and one with the server's flags: the nearer one decides.
Distances are the probe's: |Δ log-probability| of the first answer token over the shared top 10.
With --long, SmolLM2 also answers a prompt longer than its native context (about 9,000 tokens) on
tiny-yarn-16k against the same launch without YaRN (served unscaled through --override-kv).

Nothing is asserted; every distance (nats) and the seconds each answer and each launch took are
printed and written as JSON (--json FILE). About 3 minutes on 2 cores, 10 more with --long.

    python benchmarks/yarn_probe_bench.py [--json FILE] [--long] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from niah.launch.server import find_tiny_model
from niah.launch.session import ServerSession, ServerSpec
from niah.launch.yarn_probe import (
    PROBE_TEXT,
    ProbeAnswer,
    ask,
    distance,
    probe_prompt,
    reference_args,
)
from niah.testbed.model import build_testbed

MODELS = {
    # name: (native context, YaRN stretches to try as (scale, -c))
    "smollm2": (8192, (("1.1", 9216), ("1.5", 12288), ("2", 16384), ("3.8501", 31540))),
    "qwen35": (4096, (("1.1", 4608), ("1.5", 6144), ("2", 8192))),
}


def answer(model: Path, args: list[str], work: Path, name: str, prompt: list[int] | None = None) -> tuple[ProbeAnswer, list[int], float]:
    """Start llama-server with `args`, ask the probe (or `prompt`), stop it; the answer, the prompt ids
    and the launch's wall seconds (start, answer, stop)."""
    started = time.monotonic()
    spec = ServerSpec(model=model, args=tuple(args), log_dir=work, name=name, start_timeout_s=300, request_timeout_s=3600)
    with ServerSession(spec) as session:
        ids = prompt if prompt is not None else probe_prompt(session)
        got = ask(session, ids)
    return got, ids, round(time.monotonic() - started, 1)


def rounded(value: float) -> float | None:
    return None if math.isinf(value) else float(f"{value:.4g}")


def separation(name: str, model: Path, work: Path) -> dict[str, Any]:
    native, stretches = MODELS[name]
    base = ["--cache-type-k", "f16", "--cache-type-v", "f16"]
    ref, prompt, ref_s = answer(model, reference_args(base, 0), work, f"{name}-ref")
    figures: dict[str, Any] = {"prompt_tokens": len(prompt), "reference_launch_s": ref_s, "answer_s": ref.seconds}
    again, _, _ = answer(model, reference_args(base, 0), work, f"{name}-ref-again", prompt)
    figures["identical"] = rounded(distance(again, ref))
    threads, _, _ = answer(model, [*reference_args(base, 0), "-t", "1"], work, f"{name}-t1", prompt)
    figures["threads"] = rounded(distance(threads, ref))
    answers = {}
    for label, extra in (("flash_attn_off", ["-fa", "off"]), ("ubatch_16", ["-ub", "16", "-b", "16"])):
        answers[label], _, _ = answer(model, [*reference_args(base, 0), *extra], work, f"{name}-{label}", prompt)
        figures[label] = rounded(distance(answers[label], ref))
    arch = "llama" if name == "smollm2" else "qwen35"
    for scale, ctx in stretches:
        yarn = ["-c", str(ctx), "--parallel", "1", *base, "--override-kv", f"{arch}.context_length=int:{ctx}",
                "--rope-scaling", "yarn", "--rope-scale", scale, "--yarn-orig-ctx", str(native)]
        big, _, _ = answer(model, [*yarn[:4], *base], work, f"{name}-bigc-{ctx}", prompt)
        figures[f"big_c_{ctx}"] = rounded(distance(big, ref))
        got, _, launch_s = answer(model, yarn, work, f"{name}-yarn-{scale}", prompt)
        figures[f"yarn_x{scale}"] = rounded(distance(got, ref))
        figures[f"yarn_x{scale}_launch_s"] = launch_s
        off, _, _ = answer(model, [*yarn, "--rope-scaling", "none"], work, f"{name}-off-{scale}", prompt)
        figures[f"no_effect_x{scale}"] = rounded(distance(off, ref))
        if scale == "1.5":  # two references on "another device" (flash attention off): which is nearer?
            other, _, _ = answer(model, [*reference_args(yarn, 0, stretched=True), "-fa", "off"], work,
                                 f"{name}-yarn-fa-off", prompt)
            for server, got_by in (("stretched", got), ("plain", ref)):
                figures[f"other_device_{server}_server"] = {
                    "to_plain_reference": rounded(distance(got_by, answers["flash_attn_off"])),
                    "to_stretched_reference": rounded(distance(got_by, other)),
                }
    return figures


def long_prompt(model: Path, work: Path) -> dict[str, Any]:
    """A prompt past SmolLM2's native 8,192 on tiny-yarn-16k's flags against the same launch without YaRN."""
    text = PROBE_TEXT
    spec = ServerSpec(model=model, args=("-c", "1024"), log_dir=work, name="tokens", start_timeout_s=300)
    with ServerSession(spec) as session:
        one = session.tokenize(text + "\n")
        prompt = session.tokenize(PROBE_TEXT[:0], add_special=True) + one * (9000 // len(one) + 1)
    prompt = prompt[:9000]
    flags = ["-c", "16384", "--parallel", "1", "--override-kv", "llama.context_length=int:16384"]
    yarn, _, yarn_s = answer(model, [*flags, "--rope-scaling", "yarn", "--rope-scale", "2", "--yarn-orig-ctx", "8192"],
                             work, "long-yarn", prompt)
    plain, _, plain_s = answer(model, [*flags, "--rope-scaling", "none"], work, "long-plain", prompt)
    again, _, _ = answer(model, [*flags, "--rope-scaling", "none"], work, "long-plain-again", prompt)
    return {"prompt_tokens": len(prompt), "yarn_vs_plain": rounded(distance(yarn, plain)),
            "plain_vs_plain": rounded(distance(again, plain)), "yarn_launch_s": yarn_s, "plain_launch_s": plain_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--long", action="store_true", help="also the prompt past native on tiny-yarn-16k")
    parser.add_argument("--work", type=Path, help="folder for logs and the test bed (default: a temporary one)")
    parser.add_argument("--only", default="smollm2,qwen35", help="models to measure (default smollm2,qwen35)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        testbed, _ = build_testbed("qwen35", work / "qwen35-testbed.gguf", mtp=True)
        figures: dict[str, Any] = {}
        for name, model in (("smollm2", find_tiny_model()), ("qwen35", testbed)):
            if name not in args.only.split(","):
                continue
            figures[name] = separation(name, model, work)
            print(name, json.dumps(figures[name]), flush=True)
        if args.long:
            figures["smollm2_long"] = long_prompt(find_tiny_model(), work)
            print("smollm2_long", json.dumps(figures["smollm2_long"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
