"""A tiny random-weight `qwen35` GGUF: the target architecture's layout at test-bed size.

The tensor names, shapes and metadata keys are the ones llama.cpp 11434 loads for `qwen35`
(`src/models/qwen35.cpp`, `src/llama-model.cpp`): Gated DeltaNet layers with one full-attention
layer (gated Q, 4 KV heads of 256, IM-RoPE sections) every `full_attention_interval`, an optional
MTP (nextn) block after the trunk, and the Qwen3.6 vocabulary and chat template. The weights are
seeded random numbers, so the same arguments give the same bytes; the model talks nonsense.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from niah.errors import NiahError, replacing

ARCHITECTURES = ("qwen35",)


@dataclass(frozen=True)
class Qwen35Shape:
    """Dimensions of the test bed (attention heads as in Qwen3.6, everything else small)."""

    layers: int = 8
    """Trunk layers (`block_count` without the MTP block)."""
    mtp: bool = False
    """Append one MTP (nextn) block, as the released Qwen3.6 files carry."""
    context_length: int = 4096
    embd: int = 64
    ff: int = 128
    heads: int = 8
    kv_heads: int = 4
    head_dim: int = 256
    rope_dims: int = 64
    """Rotated dimensions per head (a quarter of 256, as in Qwen3.6)."""
    rope_sections: tuple[int, int, int, int] = (11, 11, 10, 0)
    """IM-RoPE sections (text, height, width, extra): they sum to rope_dims / 2."""
    rope_base: float = 10_000_000.0
    full_attention_interval: int = 4
    conv_kernel: int = 4
    linear_head_dim: int = 128
    """Gated DeltaNet key and value head size (`ssm.state_size`)."""
    linear_k_heads: int = 2
    """`ssm.group_count`."""
    linear_v_heads: int = 4
    """`ssm.time_step_rank`."""
    rms_eps: float = 1e-6
    seed: int = 0

    @property
    def block_count(self) -> int:
        return self.layers + (1 if self.mtp else 0)

    @property
    def linear_inner(self) -> int:
        """`ssm.inner_size`: value heads × head size."""
        return self.linear_v_heads * self.linear_head_dim

    def is_recurrent(self, layer: int) -> bool:
        return layer < self.layers and (layer + 1) % self.full_attention_interval != 0


def check_shape(shape: Qwen35Shape) -> None:
    """Refuse shapes llama.cpp would not load (or that are not the target's)."""
    if shape.layers < 1 or shape.layers % shape.full_attention_interval:
        raise NiahError(
            f"--layers must be a positive multiple of the full-attention interval "
            f"({shape.full_attention_interval}), not {shape.layers}"
        )
    if shape.layers > 64:
        raise NiahError(f"--layers {shape.layers} is not a test bed (64 at most)")
    if shape.context_length < 256:
        raise NiahError(f"--context must be at least 256 tokens, not {shape.context_length}")
    if shape.heads < 1 or shape.kv_heads < 1 or shape.heads % shape.kv_heads:
        raise NiahError(f"--heads ({shape.heads}) must be a positive multiple of --kv-heads ({shape.kv_heads})")
    if shape.head_dim < 32 or shape.head_dim % 32:
        raise NiahError(f"--head-dim must be a multiple of 32 (at least 32), not {shape.head_dim}")


def attention_shape(context: int = 4096, heads: int = 8, kv_heads: int = 4, head_dim: int = 256, **rest: object) -> Qwen35Shape:
    """A test-bed shape with the given native context and attention heads; a quarter of each head is
    rotated, in IM-RoPE sections in Qwen3.6's proportions (11, 11, 10 of 32 pairs)."""
    half = head_dim // 8  # rotated pairs: rope_dims / 2
    text = round(half * 11 / 32)
    sections = (text, text, half - 2 * text, 0)
    return Qwen35Shape(
        context_length=context, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        rope_dims=head_dim // 4, rope_sections=sections, **rest,  # type: ignore[arg-type]
    )


def _metadata(shape: Qwen35Shape) -> dict[str, object]:
    """`qwen35.*` keys (llama-arch.cpp names) as read by the loader."""
    meta: dict[str, object] = {
        "context_length": shape.context_length,
        "embedding_length": shape.embd,
        "block_count": shape.block_count,
        "feed_forward_length": shape.ff,
        "attention.head_count": shape.heads,
        "attention.head_count_kv": shape.kv_heads,
        "attention.key_length": shape.head_dim,
        "attention.value_length": shape.head_dim,
        "attention.layer_norm_rms_epsilon": shape.rms_eps,
        "rope.dimension_count": shape.rope_dims,
        "rope.dimension_sections": list(shape.rope_sections),
        "rope.freq_base": shape.rope_base,
        "full_attention_interval": shape.full_attention_interval,
        "ssm.conv_kernel": shape.conv_kernel,
        "ssm.state_size": shape.linear_head_dim,
        "ssm.group_count": shape.linear_k_heads,
        "ssm.time_step_rank": shape.linear_v_heads,
        "ssm.inner_size": shape.linear_inner,
    }
    if shape.mtp:
        meta["nextn_predict_layers"] = 1
    return meta


def _tensor_shapes(shape: Qwen35Shape, vocab: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, ggml ne) of every tensor, in the loader's order; ne[0] is the innermost axis."""
    e, ff, hd = shape.embd, shape.ff, shape.head_dim
    q_gated = shape.heads * hd * 2  # the query projection carries the output gate beside Q
    kv = shape.kv_heads * hd
    key_dim = shape.linear_head_dim * shape.linear_k_heads
    conv_dim = key_dim * 2 + shape.linear_inner
    yield "token_embd.weight", (e, vocab)
    yield "output_norm.weight", (e,)

    def attention(i: int) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield f"blk.{i}.attn_q.weight", (e, q_gated)
        yield f"blk.{i}.attn_k.weight", (e, kv)
        yield f"blk.{i}.attn_v.weight", (e, kv)
        yield f"blk.{i}.attn_output.weight", (shape.heads * hd, e)
        yield f"blk.{i}.attn_q_norm.weight", (hd,)
        yield f"blk.{i}.attn_k_norm.weight", (hd,)

    for i in range(shape.block_count):
        yield f"blk.{i}.attn_norm.weight", (e,)
        yield f"blk.{i}.post_attention_norm.weight", (e,)
        if shape.is_recurrent(i):
            yield f"blk.{i}.attn_qkv.weight", (e, conv_dim)
            yield f"blk.{i}.attn_gate.weight", (e, shape.linear_inner)
            yield f"blk.{i}.ssm_conv1d.weight", (shape.conv_kernel, conv_dim)
            yield f"blk.{i}.ssm_dt.bias", (shape.linear_v_heads,)
            yield f"blk.{i}.ssm_a", (shape.linear_v_heads,)
            yield f"blk.{i}.ssm_beta.weight", (e, shape.linear_v_heads)
            yield f"blk.{i}.ssm_alpha.weight", (e, shape.linear_v_heads)
            yield f"blk.{i}.ssm_norm.weight", (shape.linear_head_dim,)
            yield f"blk.{i}.ssm_out.weight", (shape.linear_inner, e)
        else:
            yield from attention(i)
        yield f"blk.{i}.ffn_gate.weight", (e, ff)
        yield f"blk.{i}.ffn_down.weight", (ff, e)
        yield f"blk.{i}.ffn_up.weight", (e, ff)
        if i >= shape.layers:  # the MTP block: combines the embedding and the trunk's hidden state
            yield f"blk.{i}.nextn.eh_proj.weight", (2 * e, e)
            yield f"blk.{i}.nextn.enorm.weight", (e,)
            yield f"blk.{i}.nextn.hnorm.weight", (e,)
            yield f"blk.{i}.nextn.shared_head_norm.weight", (e,)


def _values(name: str, ne: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Seeded values that keep a random model finite: unit norms, negative decay, small matrices."""
    shape = tuple(reversed(ne))
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    if name.endswith("ssm_a"):
        return -rng.uniform(0.5, 4.0, size=shape).astype(np.float32)
    if name.endswith("ssm_dt.bias"):
        return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    if name.endswith("ssm_conv1d.weight"):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)
    scale = 1.0 if name == "token_embd.weight" else 1.0 / np.sqrt(ne[0])
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16)


def build_qwen35(path: Path, shape: Qwen35Shape | None = None) -> Path:
    """Write the test bed to `path` (through a temporary file, so a failed build leaves nothing)."""
    import gguf

    from niah.testbed.vocab import QWEN36_CHAT_TEMPLATE, qwen36_vocabulary

    shape = shape or Qwen35Shape()
    check_shape(shape)
    path = Path(path).expanduser()
    if path.is_dir():
        raise NiahError(f"-o {path} is a folder; give a .gguf file name")
    if not path.parent.is_dir():
        raise NiahError(f"cannot write {path}: folder {path.parent} does not exist")
    vocab = qwen36_vocabulary()
    arch = "qwen35"
    with replacing(path) as partial:
        writer = gguf.GGUFWriter(str(partial), arch)
        writer.add_string("general.name", f"niah qwen35 test bed ({shape.layers} layers{', MTP' if shape.mtp else ''})")
        writer.add_uint32("general.file_type", 1)  # mostly F16
        for key, value in _metadata(shape).items():
            full = f"{arch}.{key}"
            if isinstance(value, list):
                writer.add_array(full, value)
            elif isinstance(value, float):
                writer.add_float32(full, value)
            else:
                writer.add_uint32(full, int(value))  # type: ignore[call-overload]
        writer.add_string("tokenizer.ggml.model", "gpt2")
        writer.add_string("tokenizer.ggml.pre", "qwen35")
        writer.add_array("tokenizer.ggml.tokens", vocab.tokens)
        writer.add_array("tokenizer.ggml.token_type", vocab.token_types)
        writer.add_array("tokenizer.ggml.merges", vocab.merges)
        writer.add_uint32("tokenizer.ggml.bos_token_id", vocab.bos_id)
        writer.add_uint32("tokenizer.ggml.eos_token_id", vocab.eos_id)
        writer.add_uint32("tokenizer.ggml.padding_token_id", vocab.bos_id)
        writer.add_bool("tokenizer.ggml.add_bos_token", False)
        writer.add_string("tokenizer.chat_template", QWEN36_CHAT_TEMPLATE)
        rng = np.random.default_rng(shape.seed)
        for name, ne in _tensor_shapes(shape, len(vocab.tokens)):
            writer.add_tensor(name, _values(name, ne, rng))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def build_testbed(arch: str, path: Path, layers: int = 8, mtp: bool = False, **attention: int) -> tuple[Path, float]:
    """Build the test bed for `arch` (`attention`: context, heads, kv_heads, head_dim as in
    `attention_shape`); returns the file and the seconds it took."""
    if arch not in ARCHITECTURES:
        raise NiahError(f"unknown test-bed architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    started = time.monotonic()
    out = build_qwen35(path, attention_shape(layers=layers, mtp=mtp, **attention))
    return out, time.monotonic() - started
