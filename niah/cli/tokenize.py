"""`niah tokenize`: count the tokens of a text file with any tokenizer backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from niah.errors import NiahError
from niah.launch.api_key import api_key
from niah.prompts.tokenizers import DEFAULT_TOKENIZER, get_tokenizer


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "tokenize",
        help="count the tokens of a text file",
        description="Print the token count of FILE.  Example: niah tokenize --tokenizer qwen3.6 essay.txt",
    )
    parser.add_argument("file", help="a UTF-8 text file ('-' for standard input)")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="qwen3.6, gguf:PATH, hf:DIR_OR_ID or server:URL")
    parser.add_argument("--ids", action="store_true", help="print the token ids too, one line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = read_text(args.file)
    tokenizer = get_tokenizer(args.tokenizer, api_key=api_key())
    ids = tokenizer.encode(text)
    print(len(ids))
    if args.ids:
        print(" ".join(map(str, ids)))
    return 0


def read_text(name: str) -> str:
    """Read a UTF-8 text file (or stdin for '-'), as a NiahError when that fails."""
    import sys

    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NiahError(f"cannot read {name}: {exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc}") from None
