"""`niah card RUN_DIR`: write RUN_DIR/card.md, the matrix and methodology to paste into a model card."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "card",
        help="write card.md: the matrix and how it was measured, for a model card",
        description=(
            "Write RUN_DIR/card.md from RUN_DIR/results.jsonl and print it: the grid per task, the model "
            "file, llama-server build, launch commands, served per-slot context, tokenizer, template, "
            "needle wording, trials with Wilson bounds, prefill/decode rates and wall time.  "
            "Example: niah card reports/demo"
        ),
    )
    parser.add_argument("dir", type=Path, help="a run directory holding results.jsonl (or the results file itself)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from niah.publish.card import write_card

    path = write_card(args.dir)
    print(path.read_text(encoding="utf-8"), end="")
    return 0
