"""`niah testbed qwen35 -o FILE.gguf`: a tiny random-weight model of the target architecture."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = "niah testbed qwen35 -o qwen35-testbed.gguf --mtp"


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "testbed",
        help="write a tiny random-weight GGUF of the target architecture (qwen35)",
        description="Write a few-MB qwen35 GGUF with llama.cpp's real tensor layout, seeded random "
        f"weights, the Qwen3.6 vocabulary and chat template; same arguments, same bytes. Example: {EXAMPLE}",
    )
    parser.add_argument("arch", help="architecture (qwen35)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the .gguf file to write")
    parser.add_argument("--layers", type=int, default=8, help="trunk layers, a multiple of 4 (default 8)")
    parser.add_argument("--mtp", action="store_true", help="add one MTP (nextn) block for --spec-type draft-mtp")
    parser.set_defaults(func=testbed_command)


def testbed_command(args: argparse.Namespace) -> int:
    from niah.testbed import build_testbed  # numpy and the vocabulary only when a file is built

    path, seconds = build_testbed(args.arch, args.output, layers=args.layers, mtp=args.mtp)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, built in {seconds:.1f} s")
    return 0
