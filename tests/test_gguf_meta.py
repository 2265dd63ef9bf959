"""GGUF header facts: the tiny model against the gguf library's reader, and headers written with gguf."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from niah.errors import NiahError
from niah.launch.gguf_meta import read_gguf_facts


def write_gguf(path: Path, arch: str, values: dict[str, object], vocab: int = 0) -> Path:
    """A GGUF header (no tensors) written by the gguf library itself."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("synthetic")
    if vocab:
        writer.add_token_list([f"tok{i}" for i in range(vocab)])
    for key, value in values.items():
        full = f"{arch}.{key}"
        if isinstance(value, list):
            writer.add_array(full, value)
        elif isinstance(value, str):
            writer.add_string(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_uint32(full, int(value))  # type: ignore[call-overload]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_tiny_model_facts_match_the_gguf_library(tiny_model: Path) -> None:
    facts = read_gguf_facts(tiny_model)
    reader = gguf.GGUFReader(str(tiny_model))

    def field(key: str) -> object:
        return reader.fields[key].contents()

    assert facts.arch == field("general.architecture") == "llama"
    assert facts.context_length == field("llama.context_length")
    assert facts.block_count == field("llama.block_count")
    assert facts.head_count == field("llama.attention.head_count")
    assert set(facts.head_count_kv) == {field("llama.attention.head_count_kv")}
    assert facts.key_length == facts.value_length == field("llama.embedding_length") // facts.head_count  # type: ignore[operator]
    assert facts.attention_layers == tuple(range(facts.block_count))
    assert facts.file_size == tiny_model.stat().st_size
    assert facts.rope_scaling == () and facts.nextn_predict_layers == 0


def test_hybrid_header_with_mtp_and_a_skipped_vocabulary(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "hybrid.gguf",
        "qwen35",
        {
            "context_length": 262144,
            "block_count": 9,
            "embedding_length": 2048,
            "attention.head_count": 16,
            "attention.head_count_kv": 4,
            "attention.key_length": 256,
            "attention.value_length": 256,
            "full_attention_interval": 4,
            "nextn_predict_layers": 1,
            "rope.scaling.type": "yarn",
            "rope.scaling.factor": 4.0,
        },
        vocab=6000,  # longer than the arrays the reader keeps
    )
    facts = read_gguf_facts(path)
    assert facts.arch == "qwen35" and facts.name == "synthetic"
    assert facts.context_length == 262144
    assert facts.attention_layers == (3, 7)  # every 4th layer; layer 8 is the MTP layer
    assert facts.full_attention_interval == 4 and facts.nextn_predict_layers == 1
    assert facts.kv_values_per_token == (2 * 4 * 256, 2 * 4 * 256)
    assert dict(facts.rope_scaling) == {"type": "yarn", "factor": 4.0}


def test_per_layer_kv_heads_mark_recurrent_layers(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "lfm.gguf",
        "lfm2",
        {
            "context_length": 32768,
            "block_count": 5,
            "embedding_length": 1024,
            "attention.head_count": 16,
            "attention.head_count_kv": [0, 0, 8, 0, 8],
        },
    )
    facts = read_gguf_facts(path)
    assert facts.attention_layers == (2, 4)
    assert facts.key_length == 64  # embedding ÷ heads when the header has no key_length
    assert facts.kv_values_per_token == (2 * 8 * 64, 2 * 8 * 64)


def test_split_model_size_counts_every_part(tmp_path: Path) -> None:
    first = tmp_path / "big-00001-of-00002.gguf"
    writer = gguf.GGUFWriter(str(first), "llama")
    writer.add_uint16("split.count", 2)
    writer.add_uint32("llama.context_length", 4096)
    writer.add_uint32("llama.block_count", 1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    second = tmp_path / "big-00002-of-00002.gguf"
    second.write_bytes(b"\0" * 1000)
    assert read_gguf_facts(first).file_size == first.stat().st_size + 1000


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a gguf file at all", "not a GGUF file"), (b"GGUF\x03\x00\x00\x00\x00", "malformed GGUF header")],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(NiahError, match=message) as info:
        read_gguf_facts(path)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NiahError, match="does not exist"):
        read_gguf_facts(tmp_path / "nope.gguf")


def test_hybrid_defaults_and_recurrent_layer_override(tmp_path: Path) -> None:
    base = {"context_length": 262144, "block_count": 8, "embedding_length": 2048,
            "attention.head_count": 16, "attention.head_count_kv": 2, "attention.key_length": 256}
    # qwen35 without full_attention_interval: llama.cpp assumes every 4th layer.
    assert read_gguf_facts(write_gguf(tmp_path / "a.gguf", "qwen35", base)).attention_layers == (3, 7)
    explicit = {**base, "attention.recurrent_layers": [True, False, True, True, True, True, False, True]}
    assert read_gguf_facts(write_gguf(tmp_path / "b.gguf", "qwen35", explicit)).attention_layers == (1, 6)


def test_sliding_window_layers_and_recurrent_state(tmp_path: Path) -> None:
    base = {"context_length": 32768, "block_count": 12, "embedding_length": 640,
            "attention.head_count": 4, "attention.head_count_kv": 1, "attention.key_length": 256,
            "attention.sliding_window": 512}
    # gemma3 without a pattern key: llama.cpp makes every 6th layer global
    facts = read_gguf_facts(write_gguf(tmp_path / "g.gguf", "gemma3", base))
    assert facts.swa_layers == (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)
    explicit = {**base, "attention.sliding_window_pattern": 3}
    assert read_gguf_facts(write_gguf(tmp_path / "p.gguf", "gemma3", explicit)).swa_layers == (0, 1, 3, 4, 6, 7, 9, 10)
    no_window = {k: v for k, v in base.items() if k != "attention.sliding_window"}
    assert read_gguf_facts(write_gguf(tmp_path / "n.gguf", "gemma3", no_window)).swa_layers == ()
    hybrid = {"context_length": 4096, "block_count": 8, "embedding_length": 64, "attention.head_count": 8,
              "attention.head_count_kv": 4, "attention.key_length": 256, "full_attention_interval": 4,
              "ssm.conv_kernel": 4, "ssm.inner_size": 512, "ssm.state_size": 128, "ssm.group_count": 2}
    facts = read_gguf_facts(write_gguf(tmp_path / "h.gguf", "qwen35", hybrid))
    assert facts.recurrent_layers == (0, 1, 2, 4, 5, 6)
    assert facts.recurrent_state_values == 3 * (512 + 2 * 2 * 128) + 128 * 512


def niah(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "niah", *args], check=False, capture_output=True, text=True, timeout=120)


SHAPE = {"context_length": 8192, "block_count": 4, "embedding_length": 256, "attention.head_count": 4,
         "attention.head_count_kv": 2}
WRONG_TYPES = [
    ("llama", {"context_length": "8192"}, "llama.context_length is a string ('8192'), expected an unsigned integer"),
    ("llama", {"context_length": 8192.0}, "llama.context_length is a float (8192.0), expected an unsigned integer"),
    ("qwen35", {"full_attention_interval": [4, 4]},
     "qwen35.full_attention_interval is an array ([4, 4]), expected an unsigned integer"),
    ("llama", {"block_count": "four"}, "llama.block_count is a string ('four')"),
    ("llama", {"block_count": 100000}, "llama.block_count is 100,000, more layers than llama.cpp loads (512)"),
    ("llama", {"attention.head_count_kv": ["a", "b", "c", "d"]}, "llama.attention.head_count_kv[0] is a string ('a')"),
    ("llama", {"attention.key_length": [64, 64]}, "llama.attention.key_length is an array ([64, 64])"),
    ("llama", {"attention.recurrent_layers": "x"}, "expected an array of booleans, one per layer"),
    ("llama", {"attention.sliding_window": 512, "attention.sliding_window_pattern": "x"},
     "llama.attention.sliding_window_pattern is a string ('x')"),
    ("llama", {"ssm.inner_size": "x"}, "llama.ssm.inner_size is a string ('x')"),
]


@pytest.mark.parametrize(("arch", "values", "message"), WRONG_TYPES)
def test_header_values_of_the_wrong_type_are_one_line_exit_2(
    arch: str, values: dict[str, object], message: str, tmp_path: Path
) -> None:
    """Headers the gguf library writes, with a key of a type llama.cpp refuses too: each a traceback
    before (int() of a string or an array), now one line naming the key, the value and the type."""
    model = write_gguf(tmp_path / "typed.gguf", arch, {**SHAPE, **values})
    result = niah("profile", "show", "tiny-yarn-16k", "--model", str(model))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"niah: error: {model}: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_plan_and_run_refuse_a_mistyped_header_before_writing_anything(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "typed.gguf", "llama", {**SHAPE, "context_length": "8192"})
    grid = ["--lengths", "16k", "--profile", "tiny-yarn-16k", "--model", str(model)]
    out = tmp_path / "run"
    for result in (niah("plan", *grid, "--rates", "16k=1000"), niah("run", *grid, "--no-progress", "--out", str(out))):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip() == f"niah: error: {model}: {WRONG_TYPES[0][2]}"
    assert not out.exists()


@pytest.mark.parametrize("length", [2**62, 2**64 - 1])
def test_a_corrupt_length_is_not_allocated(length: int, tmp_path: Path) -> None:
    """A key, a string or an array whose length runs past the end of the file (was a MemoryError or
    an OverflowError from seek)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 2)
    key = b"general.architecture"
    for body in (
        struct.pack("<Q", length) + key,  # the key's length
        struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, length) + b"llama",  # a string value
        struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 4, length),  # a uint32 array, skipped
    ):
        path = tmp_path / "corrupt.gguf"
        path.write_bytes(head + body + b"\0" * 64)
        with pytest.raises(NiahError, match="malformed GGUF header .header ends early."):
            read_gguf_facts(path)
