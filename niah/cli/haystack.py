"""`niah haystack`: build one prompt of exactly N tokens with the needle at a depth, and print it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from niah.cells import parse_length
from niah.errors import NiahError
from niah.launch.api_key import api_key
from niah.prompts.tokenizers import DEFAULT_TOKENIZER

if TYPE_CHECKING:
    from niah.prompts.haystack import Prompt


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "haystack",
        help="build one token-exact needle prompt",
        description="Build a prompt of exactly --length tokens (template included) with the needle at "
        "--depth percent, and print it.  Example: niah haystack --length 4096 --depth 50 --json",
    )
    parser.add_argument("--length", required=True, help="prompt tokens, exactly: 4096, 4k, 131k, 1m")
    parser.add_argument("--depth", type=float, required=True, help="needle depth in percent, 0-100")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="qwen3.6, gguf:PATH, hf:DIR_OR_ID or server:URL")
    parser.add_argument("--corpus", default="builtin", help="builtin, noise or files:GLOB")
    parser.add_argument("--seed", type=int, default=0, help="needle value seed (integer)")
    parser.add_argument("--trial", type=int, default=0, help="trial index: each trial plants a different value")
    parser.add_argument(
        "--template", default="auto",
        help="auto (the model's own when --tokenizer names one, else builtin), builtin, server:URL, gguf:PATH or hf:DIR_OR_ID",
    )
    parser.add_argument("--thinking", choices=("off", "on"), default="off", help="enable_thinking for the template, as in niah run")
    parser.add_argument("--needle", type=Path, help="TOML/JSON file with custom needle/question/answer")
    parser.add_argument(
        "--task", default="single", help="single, multikey:K, multivalue:V, multiquery:Q, chain:H, or a task .toml file"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the prompt text")
    parser.add_argument("-o", "--output", type=Path, help="write to FILE instead of standard output")
    parser.set_defaults(func=run)


def prompt_json(prompt: Prompt) -> dict[str, object]:
    """The fields `--json` prints."""
    return {
        "text": prompt.text,
        "messages": list(prompt.messages),
        "prompt_tokens": prompt.prompt_tokens,
        "length": prompt.length,
        "needle": {
            "text": prompt.needle.text,
            "value": prompt.needle.value,
            "question": prompt.needle.question,
            "token_offset": prompt.needle_token_offset,
            "tokens": prompt.needle_tokens,
        },
        "expected": list(prompt.needle.expected),
        "planted": [p.to_dict() for p in prompt.planted],
        "depth_nominal": prompt.depth_nominal,
        "depth_actual": prompt.depth_actual,
        "haystack_tokens": prompt.haystack_tokens,
        "haystack_token_start": prompt.haystack_token_start,
        "tokenizer": prompt.tokenizer,
        "template": prompt.template,
        "corpus": prompt.corpus,
        "corpus_sha256": prompt.corpus_sha256,
        "corpus_repeats": prompt.corpus_repeats,
    }


def run(args: argparse.Namespace) -> int:
    from niah.prompts.corpus import get_corpus
    from niah.prompts.haystack import build, get_template
    from niah.prompts.needles import load_needle_spec
    from niah.prompts.tasks import parse_task
    from niah.prompts.templates import auto_template
    from niah.prompts.tokenizers import get_tokenizer

    length = parse_length(args.length)
    task = parse_task(args.task)
    if not 0 <= args.depth <= 100:
        raise NiahError(f"--depth {args.depth:g} is outside 0-100")
    if args.trial < 0:
        raise NiahError("--trial must be 0 or more")
    key = api_key()
    corpus = get_corpus(args.corpus)
    spec = load_needle_spec(args.needle) if args.needle else None
    template_spec = auto_template(args.tokenizer) if args.template == "auto" else args.template
    template = get_template(template_spec, api_key=key, chat_template_kwargs={"enable_thinking": args.thinking == "on"})
    tokenizer = get_tokenizer(args.tokenizer, api_key=key)
    needle = task.needle(args.seed, length, args.depth, args.trial, spec)
    prompt = build(length, args.depth, tokenizer, corpus, needle, template, verify=True)
    output = json.dumps(prompt_json(prompt), ensure_ascii=False) + "\n" if args.json else prompt.text
    if args.output:
        try:
            args.output.write_text(output, encoding="utf-8")
        except OSError as exc:
            raise NiahError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(output)
    summary = (
        f"niah: {prompt.prompt_tokens} tokens ({prompt.tokenizer}, template {prompt.template}); "
        f"needle {prompt.needle.value} at haystack token {prompt.needle_token_offset} "
        f"(depth {prompt.depth_actual:g}% for {prompt.depth_nominal:g}%)"
    )
    if len(prompt.planted) > 1:
        summary += f"; task {task.name}: {len(prompt.planted)} sentences planted at tokens " + ", ".join(
            str(p.token_offset) for p in prompt.planted
        )
    if prompt.corpus_repeats > 1:
        summary += f"; corpus {prompt.corpus} repeated {prompt.corpus_repeats} times"
    print(summary, file=sys.stderr)
    return 0
