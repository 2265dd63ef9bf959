"""`niah compare RUN_A RUN_B`: paired comparison of two runs; exit 1 on a regression (a CI gate)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """examples:
  niah compare runs/llama-old runs/llama-new            # tables; exit 1 if anything regressed
  niah compare runs/f16-kv runs/q8-kv --json            # the same as JSON
  niah compare runs/native runs/yarn --out runs/diff    # also compare.md/.json/.png in runs/diff
pairing: trial t of a cell in A and in B saw the same prompt (same needle seed), so each trial is a
pair; pairs are pooled per cell, per length and per task.
gate rule: a length or task is a regression when the exact one-sided sign test (exact McNemar) on
its discordant pairs (lost: A PASS, B FAIL/WRONG_KEY/TRUNCATED; gained: the reverse) gives
p <= 0.05; a cell, the same test at 0.05 / the number of cells compared (Bonferroni). Only lost and
gained pairs count, so more trials never make the gate more lenient. broke: a CLAMPED,
CONTEXT_ERROR, CRASH, TOKEN_MISMATCH, TIMEOUT or HTTP_ERROR in B where A answered (niah run
--retry on B reruns the TIMEOUT/HTTP_ERROR cells). A shared screen's confirmations pair with B's.
exit codes: 0 no regression, 1 regression or B missing trials A has (unless --allow-missing),
            2 bad input (missing run, malformed results, nothing in common, or runs that measured
            different things: needle seed, corpus, needle/task file, answer budget, thinking, a
            shared screen's grid, ...; unless --force)"""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "compare",
        help="compare two runs trial by trial; exit 1 on a regression",
        description="Pair the trials of RUN_A (before) and RUN_B (after) on task, length, depth and trial, "
        "and judge each cell, length and task.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_a", type=Path, help="the baseline run folder (or its results.jsonl)")
    parser.add_argument("run_b", type=Path, help="the run to judge against it")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--out", type=Path, help="also write compare.md, compare.json and compare.png here")
    parser.add_argument("--allow-missing", action="store_true", help="judge the common trials of a B that lacks some of A's")
    parser.add_argument("--force", action="store_true", help="compare runs that measured different things")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from niah.publish.compare import compare_runs
    from niah.publish.compare_outputs import to_json, to_markdown, write_outputs

    comparison = compare_runs(args.run_a, args.run_b, force=args.force, allow_missing=args.allow_missing)
    if args.json:
        print(json.dumps(to_json(comparison), indent=2, default=str))
    else:
        print(to_markdown(comparison), end="")
    if args.out:
        write_outputs(comparison, args.out)
    return comparison.exit_code
