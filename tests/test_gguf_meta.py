"""GGUF header facts: the tiny model against the gguf library's reader, and headers written with gguf."""

from __future__ import annotations

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
