"""`gguf:PATH`: a model file's own byte-level BPE tokenizer, read from its header only.

Works the way llama.cpp tokenizes with special tokens not parsed: the pre-tokenizer's split
expressions are applied one after the other (unmatched gaps stay fragments), each fragment is
mapped byte-to-unicode GPT-2 style and merged by merge rank alone (no whole-word vocabulary
lookup first). User-defined tokens are still matched as whole strings, as llama.cpp does. Its
control and user-defined tokens (`special_tokens`) and whether the model asks for a BOS
(`bos_tokens`) let a rendered chat prompt be counted as llama-server counts it.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import regex

from niah.errors import NiahError
from niah.launch.gguf_meta import read_header

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
QWEN2_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+"
    r"|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the split expressions llama.cpp applies in order
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt-2": (GPT2_SPLIT,),
    "default": (GPT2_SPLIT,),
    "smollm": (r"\p{N}", GPT2_SPLIT),
    "starcoder": (r"\p{N}", GPT2_SPLIT),
    "qwen2": (QWEN2_SPLIT,),
    "qwen35": (QWEN35_SPLIT,),
}
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
KEYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"})


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def split_fragments(text: str, expressions: tuple[regex.Pattern[str], ...]) -> list[str]:
    """Apply each expression to every fragment so far; matches and the gaps between them stay fragments."""
    fragments = [text]
    for pattern in expressions:
        refined: list[str] = []
        for fragment in fragments:
            position = 0
            for match in pattern.finditer(fragment):
                if match.start() > position:
                    refined.append(fragment[position : match.start()])
                if match.end() > match.start():
                    refined.append(match.group())
                position = match.end()
            if position < len(fragment):
                refined.append(fragment[position:])
        fragments = refined
    return fragments


def _array(path: Path, header: dict[str, object], key: str, kind: type, kinds: str) -> list[Any]:
    """The header's array at `key` (empty when absent), each item of `kind`; else one line naming it."""
    value = header.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise NiahError(f"gguf:{path}: {key} is not an array of {kinds}, as llama.cpp expects")
    return value


class GGUFTokenizer:
    """Byte-level BPE from a GGUF header (the Qwen and SmolLM2 families and plain GPT-2)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise NiahError(f"gguf:{path}: no such file")
        header = read_header(path, keep=KEYS)
        model = header.get("tokenizer.ggml.model")
        pre = header.get("tokenizer.ggml.pre", "default")
        if model != "gpt2":
            raise NiahError(f"gguf:{path}: unsupported tokenizer type {model!r} (only byte-level BPE 'gpt2')")
        if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
            raise NiahError(
                f"gguf:{path}: unsupported tokenizer type: pre-tokenizer {pre!r} "
                f"(supported: {', '.join(sorted(PRE_TOKENIZERS))}); use server:URL instead"
            )
        tokens = _array(path, header, "tokenizer.ggml.tokens", str, "strings")
        merges = _array(path, header, "tokenizer.ggml.merges", str, "strings")
        if not tokens or not merges:
            raise NiahError(f"gguf:{path}: the header holds no BPE vocabulary and merges")
        types = _array(path, header, "tokenizer.ggml.token_type", int, "integers")
        add_bos = header.get("tokenizer.ggml.add_bos_token", False)
        if not isinstance(add_bos, bool):
            raise NiahError(f"gguf:{path}: tokenizer.ggml.add_bos_token is {add_bos!r}, expected true or false")
        self.name = f"gguf:{path}"
        self._ids = {token: index for index, token in enumerate(tokens)}
        self._tokens = tokens
        self._ranks = {tuple(m.split(" ", 1)): rank for rank, m in enumerate(merges)}
        self._splits = tuple(regex.compile(expr) for expr in PRE_TOKENIZERS[pre])
        self._byte_map = bytes_to_unicode()
        self._unbyte = {char: byte for byte, char in self._byte_map.items()}
        user = sorted(
            (t for t, kind in zip(tokens, types) if kind == TOKEN_TYPE_USER_DEFINED and t), key=len, reverse=True
        )
        self._user = regex.compile("|".join(map(regex.escape, user))) if user else None
        self._cache: dict[str, tuple[int, ...]] = {}
        self.special_tokens = {
            t: i for i, (t, kind) in enumerate(zip(tokens, types))
            if t and kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
        }
        self.bos_tokens = 1 if add_bos else 0
        """Tokens llama-server puts in front of a prompt: its BOS when the file asks for one."""

    def _merge(self, word: str) -> tuple[int, ...]:
        """Merge one byte-mapped fragment by rank, then look the pieces up (bytes when missing)."""
        parts = list(word)
        ranks = self._ranks
        while len(parts) > 1:
            pairs = [ranks.get(pair) for pair in pairwise(parts)]
            best = min((r for r in pairs if r is not None), default=None)
            if best is None:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and pairs[i] == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids: list[int] = []
        for part in parts:
            if part in self._ids:
                ids.append(self._ids[part])
            else:
                ids.extend(self._ids[char] for char in part if char in self._ids)
        return tuple(ids)

    def _encode_text(self, text: str, out: list[int]) -> None:
        for fragment in split_fragments(text, self._splits):
            cached = self._cache.get(fragment)
            if cached is None:
                mapped = "".join(self._byte_map[b] for b in fragment.encode("utf-8"))
                cached = self._cache[fragment] = self._merge(mapped)
            out.extend(cached)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        position = 0
        if self._user is not None:
            for match in self._user.finditer(text):
                self._encode_text(text[position : match.start()], ids)
                ids.append(self._ids[match.group()])
                position = match.end()
        self._encode_text(text[position:], ids)
        return ids

    def decode(self, ids: list[int]) -> str:
        data = bytearray()
        for index in ids:
            token = self._tokens[index]
            if all(char in self._unbyte for char in token):
                data.extend(self._unbyte[char] for char in token)
            else:
                data.extend(token.encode("utf-8"))
        return data.decode("utf-8", errors="replace")

    def count(self, text: str) -> int:
        return len(self.encode(text))
