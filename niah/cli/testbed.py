"""`niah testbed qwen35 -o FILE.gguf`: a tiny random-weight model of the target architecture."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = "niah testbed qwen35 -o qwen35-testbed.gguf --mtp"
REHEARSAL = "niah testbed qwen35 -o rehearsal.gguf --layers 4 --context 262144 --heads 1 --kv-heads 1 --head-dim 64"


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
    knobs = parser.add_argument_group(
        "native context and attention (defaults: Qwen3.6's heads; small ones make a long prefill cheap on a CPU)",
        f"A 1M rehearsal model, served at 1,010,000 per slot by the yarn-1m profile like the target: {REHEARSAL}",
    )
    knobs.add_argument("--context", type=int, default=4096, help="native context (qwen35.context_length; default 4096)")
    knobs.add_argument("--heads", type=int, default=8, help="query heads of each attention layer (default 8)")
    knobs.add_argument("--kv-heads", type=int, default=4, help="KV heads of each attention layer (default 4)")
    knobs.add_argument("--head-dim", type=int, default=256, help="size of each attention head, a multiple of 32 (default 256)")
    parser.set_defaults(func=testbed_command)


def testbed_command(args: argparse.Namespace) -> int:
    from niah.testbed.model import (
        build_testbed,  # numpy and the vocabulary only when a file is built
    )

    path, seconds = build_testbed(
        args.arch, args.output, layers=args.layers, mtp=args.mtp,
        context=args.context, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
    )
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, built in {seconds:.1f} s")
    return 0
