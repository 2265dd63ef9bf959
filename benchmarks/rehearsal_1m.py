"""The seed's 1M workflow rehearsed on this CPU, with the shipped `yarn-1m` profile (q8_0 K, q4_0 V,
the flags a GPU user runs) on a qwen35 test bed whose native context is 262,144 like Qwen3.6's:

  1. the launch comes up and `niah check` preflights it OK for 1,010,000 + the answer;
  2. niah's memory estimate (llama-fit-params' projection, and niah's own formula) against what the
     server's log says it allocated (KV, recurrent state, compute buffers);
  3. a full 1,010,000-token cell: built, counted by the server (/apply-template + /tokenize, timed),
     accepted into prefill; niah is stopped once prefill has started, then resumed (prefill starts
     again; nothing is recorded for the unfinished cell);
  4. the 131,072 row at depths 0, 50, 100 on the same 1M launch, with niah SIGKILLed after the
     first finished cell and rerun: finished cells kept, none sent twice;
  5. depth 100 alone on a fresh launch: its primer computes the whole 131K prefix in one request;
  6. `niah plan --probe --probe-up-to N` on that launch (N = 1/8 and 1/2 of the row's length) against
     the measured wall time of step 4's cells, with the plan's interval and extrapolation factor.

Prints each figure as it is measured and writes them as JSON (--json FILE). Nothing is asserted.
About an hour on 2 cores; run it on a quiet machine.

    python benchmarks/rehearsal_1m.py [--work DIR] [--json FILE] [--steps 1,2,3,4,5,6]

`--haystack shared` runs step 4's row as one shared haystack (one 131K prefill for the three cells)
and plans step 6 the same way. Each step stands alone on the launch (step 6 measures against step 4's cells, or skips when step 4
did not run), so a session short of time can run the long ones (4 and 5) on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from niah.cells import ANSWER_BUDGET, Cell
from niah.launch.gguf_meta import read_gguf_facts
from niah.launch.memory import parse_fit_params, project
from niah.launch.profiles import load_profile, plan_launch
from niah.launch.server import find_server_binary
from niah.launch.session import ServerSession, ServerSpec
from niah.prompts.corpus import get_corpus
from niah.prompts.haystack import build
from niah.prompts.tasks import SINGLE, Task
from niah.prompts.tokenizers import get_tokenizer
from niah.run.endpoints import Endpoint
from niah.testbed.model import build_testbed

TARGET = 1_010_000
ROW = 131_072
PROGRESS = re.compile(r"prompt processing, n_tokens =\s*(\d+), progress =")
figures: dict[str, Any] = {}


def say(key: str, value: Any, text: str) -> None:
    figures[key] = value
    print(f"{key}: {text}", flush=True)


def niah(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "niah", *args], check=False, capture_output=True, text=True, timeout=timeout
    )


def start(model: Path, args: list[str], logs: Path) -> ServerSession:
    spec = ServerSpec(model=model, args=tuple(args), name="yarn-1m", log_dir=logs, start_timeout_s=1800)
    started = time.monotonic()
    session = ServerSession(spec).open()
    say(f"launch_s_{len(list(logs.glob('*.log')))}", round(time.monotonic() - started, 1),
        f"llama-server up in {time.monotonic() - started:.1f} s ({session.log_path})")
    return session


def memory(session: ServerSession, model: Path, args: list[str]) -> None:
    """Step 2: the estimate against the allocation the log reports (same line formats)."""
    facts = read_gguf_facts(model)
    formula = plan_launch(load_profile("yarn-1m"), facts).memory
    projected = project(formula, model, find_server_binary(None), args)
    logged = parse_fit_params(session.log_path.read_text(errors="replace") + "\nprojected to use 0 MiB\n")
    for name, estimate in (("fit_params", projected), ("formula", formula)):
        assert estimate is not None
        for part in ("kv_bytes", "recurrent_bytes", "compute_bytes"):
            mine, theirs = getattr(estimate, part), getattr(logged, part)
            if mine is None:
                continue
            error = (mine - theirs) / theirs if theirs else 0.0
            say(f"memory_{name}_{part}", {"estimate": mine, "log": theirs, "error": round(error, 5)},
                f"{name} {part}: estimate {mine / 2**20:,.2f} MiB, server log {theirs / 2**20:,.2f} MiB ({error:+.2%})")


def count_1m(session: ServerSession) -> None:
    """Step 3a: build the 1M prompt and have the server count it, timed."""
    endpoint = Endpoint(session, TARGET + ANSWER_BUDGET)
    cell = Cell(TARGET, 50.0, 0)
    needle = Task(SINGLE, SINGLE).needle(0, cell.length, cell.depth, cell.trial, None)
    started = time.monotonic()
    prompt = build(TARGET, 50.0, get_tokenizer("qwen3.6"), get_corpus("builtin"), needle, endpoint.template)
    built = time.monotonic()
    counted = endpoint.server_count(prompt)
    done = time.monotonic()
    say("count_1m", {"build_s": round(built - started, 1), "server_count_s": round(done - built, 1),
                     "tokens": counted, "chars": len(prompt.text)},
        f"1M prompt built in {built - started:.1f} s, counted by the server in {done - built:.1f} s: "
        f"{counted:,} tokens ({len(prompt.text) / 1e6:.1f} MB)")


def wait_for_prefill(log: Path, since: int, proc: subprocess.Popen[str], limit_s: float) -> float | None:
    """Seconds until the server logs prefill progress past `since` bytes of its log (None: never)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s and proc.poll() is None:
        with open(log, errors="replace") as handle:
            handle.seek(since)
            for line in handle:
                match = PROGRESS.search(line)
                if match and int(match.group(1)) > 0:
                    return time.monotonic() - started
        time.sleep(1.0)
    return None


def run_1m(session: ServerSession, work: Path) -> None:
    """Step 3b: `niah run` of the 1M cell until prefill starts, stopped, then resumed."""
    out = work / "run-1m"
    for attempt in ("first", "resumed"):
        since = session.log_path.stat().st_size
        proc = subprocess.Popen(
            [sys.executable, "-m", "niah", "run", "--url", session.url, "--lengths", str(TARGET), "--depths", "50",
             "--out", str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        seconds = wait_for_prefill(session.log_path, since, proc, 3600)
        proc.send_signal(signal.SIGTERM)  # a background job ignores SIGINT
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        cells = [line for line in (out / "results.jsonl").read_text().splitlines() if '"record": "cell"' in line]
        say(f"run_1m_{attempt}", {"to_prefill_s": seconds, "cells_recorded": len(cells), "rc": proc.returncode},
            f"{attempt} run: prefill of the 1M cell started after {seconds} s; stopped (exit {proc.returncode}); "
            f"{len(cells)} cell(s) recorded")
        print("\n".join(output.splitlines()[-6:]), flush=True)
        time.sleep(5)  # let the server notice the dropped request


def cells_of(out: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("record") == "cell"]


def row_131k(session: ServerSession, work: Path, haystack: str) -> float:
    """Step 4: the 131,072 row at 0/50/100 (one needle per prompt, or one shared haystack); SIGKILL
    after the first finished cell, then rerun."""
    out = work / "run-131k"
    argv = [sys.executable, "-m", "niah", "run", "--url", session.url, "--lengths", str(ROW),
            "--depths", "0,50,100", "--haystack", haystack, "--out", str(out), "--no-progress"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not ((out / "results.jsonl").is_file() and cells_of(out)):
        time.sleep(2)
    first = cells_of(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = niah(*argv[3:])
    wall = time.monotonic() - started
    cells = cells_of(out)
    keys = [(c["length"], c["depth"], c["trial"]) for c in cells]
    kept = all(c in cells for c in first)
    say(f"row_131k_{haystack}", {
        "killed_after": len(first), "cells": len(cells), "distinct": len(set(keys)), "first_kept": kept,
        "rerun_rc": done.returncode, "wall_s": round(wall, 1),
        "per_cell": [{k: c.get(k) for k in ("depth", "outcome", "wall_s", "prime_n", "prime_cache_n", "prime_ms",
                                            "prompt_n", "cache_n", "prompt_ms", "cache_expected")} for c in cells],
    }, f"131,072 row: SIGKILL after {len(first)} finished cell(s); rerun exit {done.returncode}; {len(cells)} cells, "
       f"{len(set(keys))} distinct, finished ones kept: {kept}; {wall:.0f} s in all")
    for c in cells:
        print(f"  D={c['depth']:g}%: {c['outcome']}, wall {c['wall_s']} s, primer {c.get('prime_n')} tokens in "
              f"{(c.get('prime_ms') or 0) / 1000:.1f} s ({c.get('prime_cache_n')} cached), chat {c.get('prompt_n')} "
              f"computed + {c.get('cache_n')} cached in {(c.get('prompt_ms') or 0) / 1000:.1f} s", flush=True)
    print(done.stdout[-600:], flush=True)
    return sum(c["wall_s"] for c in cells)


def fresh_100(session: ServerSession, work: Path) -> None:
    """Step 5: depth 100 alone on a fresh launch: one primer of the whole 131K prefix."""
    out = work / "run-131k-fresh"
    done = niah("run", "--url", session.url, "--lengths", str(ROW), "--depths", "100", "--out", str(out), "--no-progress")
    (cell,) = cells_of(out)
    say("fresh_131k_d100", {k: cell.get(k) for k in ("outcome", "wall_s", "prime_n", "prime_ms", "prompt_n", "cache_n", "prompt_ms")},
        f"fresh launch, D=100%: exit {done.returncode}, {cell['outcome']}, primer {cell.get('prime_n'):,} tokens in "
        f"{(cell.get('prime_ms') or 0) / 1000:.1f} s, cell wall {cell['wall_s']} s")


def plan_probe(session: ServerSession, measured_s: float, haystack: str, probe_up_to: str) -> None:
    """Step 6: the plan's seconds for the 131K row, with its interval and extrapolation factor, against
    the measured cells, for each longest probe asked (by default 1/8 and 1/2 of the row's length)."""
    for up_to in probe_up_to.split(","):
        done = niah("plan", "--url", session.url, "--lengths", str(ROW), "--depths", "0,50,100", "--haystack", haystack,
                    "--probe", "--probe-up-to", up_to, "--json")
        if done.returncode != 0:
            say(f"plan_probe_{up_to}", None, f"niah plan --probe failed: {done.stderr.strip()[-300:]}")
            continue
        totals = json.loads(done.stdout)["totals"]
        planned, low, high = totals["seconds"], totals["low_s"], totals["high_s"]
        say(f"plan_probe_{up_to}", {"planned_s": round(planned, 1), "low_s": round(low, 1), "high_s": round(high, 1),
                                    "extrapolation": totals["extrapolation"], "measured_s": round(measured_s, 1)},
            f"plan --probe --probe-up-to {up_to}: {planned:,.0f} s for the row ({totals['interval']} {low:,.0f}–"
            f"{high:,.0f} s, {totals['extrapolation']:.1f}x past the longest probe); measured {measured_s:,.0f} s "
            f"({planned / measured_s - 1:+.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the model, runs and logs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--steps", default="1,2,3,4,5,6", help="which steps to run (default: all)")
    parser.add_argument("--haystack", choices=("single", "shared"), default="single",
                        help="steps 4 and 6: one needle per prompt (default), or one shared haystack")
    parser.add_argument("--probe-up-to", default="16k,64k",
                        help="step 6: the longest probe of each `niah plan --probe` (default 1/8 and 1/2 of the row)")
    args = parser.parse_args()
    steps = {int(s) for s in args.steps.split(",")}
    work = args.work or Path(tempfile.mkdtemp(prefix="niah-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("run-*"):  # every rehearsal measures from scratch
        shutil.rmtree(old)
    model = work / "rehearsal.gguf"
    if not model.is_file():
        build_testbed("qwen35", model, layers=4, context=262144, heads=1, kv_heads=1, head_dim=64)
    facts = read_gguf_facts(model)
    launch = plan_launch(load_profile("yarn-1m"), facts)
    flags = list(launch.args)
    say("launch", {"args": flags, "predicted_slot_context": launch.predicted_slot_context},
        f"yarn-1m on the rehearsal model: {' '.join(flags)} (predicted per slot {launch.predicted_slot_context:,})")
    logs = work / "logs"
    verbose = ["-lv", "4"]  # the allocation lines (KV, recurrent, compute buffers) are logged at this level
    measured = None
    session = start(model, flags + verbose, logs)
    try:
        if 1 in steps:
            check = niah("check", "--url", session.url, "--context", str(TARGET))
            say("check", check.returncode, f"niah check --context {TARGET:,}: exit {check.returncode}: {check.stdout.strip()}")
        if 2 in steps:
            memory(session, model, flags)
        if 3 in steps:
            count_1m(session)
            run_1m(session, work)
        if 4 in steps:
            measured = row_131k(session, work, args.haystack)
    finally:
        session.close()
    if steps & {5, 6}:
        session = start(model, flags + verbose, logs)
        try:
            if 5 in steps:
                fresh_100(session, work)
            if 6 in steps and measured is not None:
                plan_probe(session, measured, args.haystack, args.probe_up_to)
        finally:
            session.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
