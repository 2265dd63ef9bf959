"""`niah compare RUN_A RUN_B`: cell-by-cell comparison of two runs; exit 1 on a regression (a CI gate)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """examples:
  niah compare runs/llama-old runs/llama-new            # table; exit 1 if a cell regressed
  niah compare runs/f16-kv runs/q8-kv --json            # the same as JSON
  niah compare runs/native runs/yarn --out runs/diff    # also compare.md/.json/.png in runs/diff
regression: PASS -> FAIL (single trials), a pass-rate drop beyond the 95% Wilson bounds
(several trials), or more non-retrieval outcomes in B (CLAMPED, CRASH, ...: the launch got worse).
exit codes: 0 no regression, 1 regression, 2 bad input (missing run, malformed results, nothing in common)"""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "compare",
        help="compare two runs cell by cell; exit 1 on a regression",
        description="Match the cells of RUN_A (before) and RUN_B (after) on task, length and depth, "
        "and judge each change.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_a", type=Path, help="the baseline run folder (or its results.jsonl)")
    parser.add_argument("run_b", type=Path, help="the run to judge against it")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument("--out", type=Path, help="also write compare.md, compare.json and compare.png here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from niah.compare import compare_runs, to_json, to_markdown, write_outputs

    comparison = compare_runs(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(to_json(comparison), indent=2, default=str))
    else:
        print(to_markdown(comparison), end="")
    if args.out:
        write_outputs(comparison, args.out)
    return comparison.exit_code
