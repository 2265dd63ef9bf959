"""Facts about a model read from its GGUF header only: architecture, native context, attention shape.

The reader walks the key/value section and stops before the tensor data, skipping the large
tokenizer arrays, so it is fast on a 31 GB file. The facts size the KV cache and decide the
launch flags (profiles) without loading the model.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from niah.errors import NiahError

GGUF_MAGIC = b"GGUF"
# GGUF value types: id -> struct format of one scalar (strings and arrays handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Hybrid architectures whose loader assumes a full-attention interval when the key is absent.
HYBRID_DEFAULT_INTERVAL = {"qwen35": 4, "qwen35moe": 4, "qwen3next": 4}
# Sliding-window architectures whose loader assumes a layer pattern when the header has none: every
# N-th layer is global, the others use the window (llama.cpp's load_swa_pattern defaults).
SWA_DEFAULT_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2}
MAX_LAYERS = 512
"""llama.cpp's LLAMA_MAX_LAYERS (src/llama-hparams.h): it loads no model with more."""
# Arrays longer than this (vocabularies, merges) are skipped: no fact needs them.
_KEEP_ARRAY_MAX = 4096


@dataclass(frozen=True)
class FileRope:
    """Rope scaling a GGUF applies by itself, from its `ARCH.rope.scaling.*` keys."""

    kind: str
    """`yarn` or `linear` (llama.cpp reads a missing type as linear)."""
    factor: float
    """`rope.scaling.factor`: the stretch over the original context."""
    original_context: int | None
    """`rope.scaling.original_context_length`, when the file states it."""

    def describe(self) -> str:
        """`YaRN ×4 over 262,144`."""
        name = "YaRN" if self.kind == "yarn" else self.kind
        over = f" over {self.original_context:,}" if self.original_context else ""
        return f"{name} ×{self.factor:g}{over}"


@dataclass(frozen=True)
class GGUFFacts:
    """What the header says about a model, enough to plan a launch and estimate its memory."""

    path: str
    """The model file (the first part of a split model)."""
    file_size: int
    """Bytes on disk, all parts of a split model together (≈ the weights' memory)."""
    arch: str
    """`general.architecture`, the prefix of every model key (e.g. `llama`, `qwen35`)."""
    name: str | None
    """`general.name`, when present."""
    context_length: int | None
    """Native training context, `ARCH.context_length`."""
    block_count: int
    """`ARCH.block_count`: layers, MTP layers included where the model has them."""
    head_count: int | None
    """Query heads per layer (the first layer's, when the header gives one per layer)."""
    head_count_kv: tuple[int, ...]
    """KV heads of each layer; 0 for a layer without attention (recurrent)."""
    key_length: int | None
    """Per-head key size (`attention.key_length`, else embedding ÷ heads)."""
    value_length: int | None
    """Per-head value size (`attention.value_length`, else the key size)."""
    attention_layers: tuple[int, ...]
    """Indices of the layers that keep a KV cache (full attention), MTP layers excluded."""
    full_attention_interval: int | None
    """Hybrid models (qwen35, qwen3next): every N-th layer is full attention, the rest recurrent
    (llama.cpp's default when the key is absent; `attention.recurrent_layers` overrides)."""
    sliding_window: int | None
    """Window of sliding-window layers, when the model has any."""
    rope_scaling: tuple[tuple[str, object], ...]
    """`ARCH.rope.scaling.*` keys as (short name, value) pairs, empty when the file has none."""
    nextn_predict_layers: int
    """MTP layers (`ARCH.nextn_predict_layers`), usable with `--spec-type draft-mtp`."""
    swa_layers: tuple[int, ...] = ()
    """Attention layers that use the sliding window (empty when the model has none or the
    pattern is unknown)."""
    recurrent_layers: tuple[int, ...] = ()
    """Recurrent layers (Gated DeltaNet / Mamba-style `ssm.*` keys), MTP layers excluded."""
    recurrent_state_values: int = 0
    """f32 values of one recurrent layer's state per sequence: the conv window
    (conv_kernel − 1) × (inner + 2 × groups × state) plus the state itself, state × inner."""

    @property
    def file_rope(self) -> FileRope | None:
        """The rope scaling the file applies by itself (its `rope.scaling.*` keys), None when it
        applies none (no keys, type `none`, or a factor of 0 or 1)."""
        keys = dict(self.rope_scaling)
        kind = str(keys.get("type") or "linear")
        factor = keys.get("factor")
        if kind == "none" or not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor in (0, 1):
            return None
        original = keys.get("original_context_length")
        return FileRope(kind, float(factor), int(original) if isinstance(original, int) and original > 0 else None)

    @property
    def native_context(self) -> int | None:
        """The context the model was trained at: the file's own YaRN original context when it
        carries one (a "-1M" file states 1,048,576 as its context but stretches 262,144), else
        `context_length`."""
        rope = self.file_rope
        return rope.original_context if rope and rope.original_context else self.context_length

    @property
    def kv_values_per_token(self) -> tuple[int, int]:
        """K and V elements cached per token, summed over the attention layers."""
        k = v = 0
        for layer in self.attention_layers:
            heads = self.head_count_kv[layer]
            k += heads * (self.key_length or 0)
            v += heads * (self.value_length or 0)
        return k, v


class _Reader:
    """Little-endian (or big-endian) reads from a buffered binary file."""

    def __init__(self, handle: BinaryIO, endian: str) -> None:
        self.handle = handle
        self.endian = endian
        self.size = os.fstat(handle.fileno()).st_size

    def _ahead(self, size: int) -> int:
        """`size`, when that many bytes are left in the file (a corrupt length is not allocated)."""
        if size > self.size - self.handle.tell():
            raise EOFError("header ends early")
        return size

    def unpack(self, fmt: str) -> object:
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) != size:
            raise EOFError("header ends early")
        return struct.unpack(self.endian + fmt, data)[0]

    def string(self) -> str:
        length = int(self.unpack("Q"))  # type: ignore[call-overload]
        return self.handle.read(self._ahead(length)).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = int(self.unpack("Q"))  # type: ignore[call-overload]
        self.handle.seek(self._ahead(length), 1)

    def value(self, kind: int, keep_long: bool = False) -> object:
        """One value of GGUF type `kind`; long arrays come back as None (skipped) unless `keep_long`."""
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item_kind = int(self.unpack("I"))  # type: ignore[call-overload]
        count = int(self.unpack("Q"))  # type: ignore[call-overload]
        if keep_long and item_kind in _SCALARS:
            fmt = _SCALARS[item_kind]
            data = self.handle.read(self._ahead(struct.calcsize(fmt) * count))
            return list(struct.unpack(f"{self.endian}{count}{fmt}", data))
        if count > _KEEP_ARRAY_MAX and not keep_long:
            self._skip_array(item_kind, count)
            return None
        return [self.value(item_kind) for _ in range(count)]

    def _skip_array(self, item_kind: int, count: int) -> None:
        if item_kind in _SCALARS:
            self.handle.seek(self._ahead(struct.calcsize(_SCALARS[item_kind]) * count), 1)
        elif item_kind == _STRING:
            for _ in range(count):
                self.skip_string()
        else:
            for _ in range(count):
                self.value(item_kind)


def read_header(path: Path, keep: frozenset[str] = frozenset()) -> dict[str, object]:
    """The key/value pairs of a GGUF header; long arrays (such as the vocabulary) are omitted
    unless their key is in `keep`."""
    try:
        with open(path, "rb", buffering=1 << 20) as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise NiahError(f"{path} is not a GGUF file (no GGUF magic)")
            raw_version = handle.read(4)
            endian = "<" if struct.unpack("<I", raw_version)[0] < 65536 else ">"
            reader = _Reader(handle, endian)
            version = struct.unpack(endian + "I", raw_version)[0]
            count_fmt = "I" if version == 1 else "Q"
            reader.unpack(count_fmt)  # tensor count
            kv_count = int(reader.unpack(count_fmt))  # type: ignore[call-overload]
            fields: dict[str, object] = {}
            for _ in range(kv_count):
                key = reader.string()
                kind = int(reader.unpack("I"))  # type: ignore[call-overload]
                value = reader.value(kind, keep_long=key in keep)
                if value is not None:
                    fields[key] = value
            return fields
    except OSError as exc:
        raise NiahError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (EOFError, ValueError, struct.error, RecursionError) as exc:  # RecursionError: arrays nested without end
        raise NiahError(f"{path}: malformed GGUF header ({exc})") from None


def _what(value: object) -> str:
    """A header value for a message: its GGUF kind and a short repr."""
    kind = {bool: "a bool", str: "a string", list: "an array", float: "a float"}.get(type(value), "an integer")
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def _count(path: Path, key: str, value: object) -> int | None:
    """An unsigned integer key (any GGUF integer type), None when absent; another type is bad input,
    as llama.cpp refuses to load it too."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NiahError(f"{path}: {key} is {_what(value)}, expected an unsigned integer")
    return value


def _per_layer(path: Path, key: str, value: object, n_layer: int, default: int = 0) -> tuple[int, ...]:
    """A per-layer count that the header stores either once or as an array."""
    if isinstance(value, list):
        items = [_count(path, f"{key}[{i}]", v) or 0 for i, v in enumerate(value[:n_layer])]
        return tuple(items + [items[-1] if items else default] * (n_layer - len(items)))
    count = _count(path, key, value)
    return (count if count is not None else default,) * n_layer


def _flags(path: Path, key: str, value: object) -> list[bool] | None:
    """A per-layer array of booleans (or 0/1 integers), None when absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise NiahError(f"{path}: {key} is {_what(value)}, expected an array of booleans, one per layer")
    return [bool(v) for v in value]


def _split_size(path: Path, fields: dict[str, object]) -> int:
    """Size of the model on disk: the sibling parts too when the file is `-0000k-of-0000n`."""
    match = re.match(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", path.name)
    if not match or (_count(path, "split.count", fields.get("split.count")) or 1) <= 1:
        return path.stat().st_size
    stem, total = match.group(1), int(match.group(3))
    parts = [path.with_name(f"{stem}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]
    return sum(part.stat().st_size for part in parts if part.exists())


def facts_from_header(path: Path, fields: dict[str, object], file_size: int) -> GGUFFacts:
    """Interpret header fields as GGUFFacts."""
    arch = fields.get("general.architecture") or ""
    if not isinstance(arch, str):
        raise NiahError(f"{path}: general.architecture is {_what(arch)}, expected a string")
    if not arch:
        raise NiahError(f"{path}: GGUF header has no general.architecture")

    def key(name: str) -> object:
        return fields.get(f"{arch}.{name}")

    def count(name: str) -> int | None:
        return _count(path, f"{arch}.{name}", key(name))

    def per_layer(name: str, value: object) -> tuple[int, ...]:
        return _per_layer(path, f"{arch}.{name}", value, n_layer)

    n_layer = count("block_count") or 0
    if n_layer > MAX_LAYERS:
        raise NiahError(f"{path}: {arch}.block_count is {n_layer:,}, more layers than llama.cpp loads ({MAX_LAYERS})")
    heads = per_layer("attention.head_count", key("attention.head_count"))
    kv_raw = key("attention.head_count_kv")
    kv_heads = per_layer("attention.head_count_kv", kv_raw if kv_raw is not None else key("attention.head_count"))
    embd = count("embedding_length")
    key_length = count("attention.key_length")
    if key_length is None and embd and heads and heads[0]:
        key_length = embd // heads[0]
    value_length = count("attention.value_length") or key_length
    nextn = count("nextn_predict_layers") or 0
    interval = count("full_attention_interval") or HYBRID_DEFAULT_INTERVAL.get(arch)
    recurrent = _flags(path, f"{arch}.attention.recurrent_layers", key("attention.recurrent_layers"))
    main_layers = range(max(n_layer - nextn, 0))
    if recurrent is not None and len(recurrent) >= len(main_layers):
        attention = tuple(i for i in main_layers if not recurrent[i])
    elif interval:
        attention = tuple(i for i in main_layers if (i + 1) % interval == 0)
    else:
        attention = tuple(i for i in main_layers if kv_heads[i] > 0)
    prefix = f"{arch}.rope.scaling."
    scaling = tuple(sorted((k[len(prefix):], v) for k, v in fields.items() if k.startswith(prefix)))
    window = count("attention.sliding_window")
    context = count("context_length")
    pattern = key("attention.sliding_window_pattern")
    pattern = _flags(path, f"{arch}.attention.sliding_window_pattern", pattern) if isinstance(pattern, list) \
        else count("attention.sliding_window_pattern")
    swa_layers = _swa_layers(arch, pattern, attention) if window else ()
    conv, inner, state, groups = (count(f"ssm.{k}") or 0 for k in ("conv_kernel", "inner_size", "state_size", "group_count"))
    recurrent_layers = tuple(i for i in main_layers if i not in attention) if inner else ()
    return GGUFFacts(
        path=str(path),
        file_size=file_size,
        arch=arch,
        name=str(fields["general.name"]) if "general.name" in fields else None,
        context_length=context,
        block_count=n_layer,
        head_count=heads[0] if heads else None,
        head_count_kv=kv_heads,
        key_length=key_length,
        value_length=value_length,
        attention_layers=attention,
        full_attention_interval=interval or None,
        sliding_window=window or None,
        rope_scaling=scaling,
        nextn_predict_layers=nextn,
        swa_layers=swa_layers,
        recurrent_layers=recurrent_layers,
        recurrent_state_values=max(conv - 1, 0) * (inner + 2 * groups * state) + state * inner,
    )


def _swa_layers(arch: str, pattern: object, attention: tuple[int, ...]) -> tuple[int, ...]:
    """Attention layers with a sliding window: a per-layer array, a period N (the last of every N
    layers is global), or the architecture's default period."""
    if isinstance(pattern, list):
        return tuple(i for i in attention if i < len(pattern) and pattern[i])
    period = pattern if pattern is not None else SWA_DEFAULT_PATTERN.get(arch)
    if not period:
        return ()
    return tuple(i for i in attention if i % period < period - 1)


def read_gguf_facts(path: str | Path) -> GGUFFacts:
    """Read the header of the GGUF file at `path` (only the header) and return its facts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NiahError(f"model file {path} does not exist")
    fields = read_header(path)
    return facts_from_header(path, fields, _split_size(path, fields))
